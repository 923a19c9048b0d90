"""Freeze hooks inside a running guest, through its agent: list, install, remove.

Other applications register their own hooks this way (a backup tool, a database operator),
without logging into the guest. The guest agent's socket is on the VM's node, so the API
relays there and these run on that node. Every failure to reach the agent is a Conflict that
says why: the VM is off, it has no agent channel, or nothing answers in it.
"""

from collections.abc import Awaitable, Callable
from typing import TypeVar

from heron.configdb import ConfigDB, keys
from heron.hypervisor import guest_hooks
from heron.hypervisor.guest_hooks import HookError, NoSuchHook
from heron.hypervisor.qga import AgentCommandError, AgentUnavailable, GuestAgent
from heron.models.guest import MAX_HOOK_BYTES, GuestHook, GuestHookList
from heron.models.vm import VM, RunState, VMStatus
from heron.services.errors import Conflict, Invalid, NotFound
from heron.services.lookup import find_vm

AgentFor = Callable[[str], GuestAgent]  # a VM id to its agent (on this node)
T = TypeVar("T")
PING_TIMEOUT = 3.0  # a guest without an agent is told at once, not after a command's timeout


async def reachable(db: ConfigDB, ref: str) -> VM:
    """The VM, if its guest agent could answer: it runs, with the agent channel.

    Raises NotFound, Conflict.
    """
    vm = (await find_vm(db, ref)).value
    entry = await db.get(VMStatus, keys.vm_status(vm.id))
    status = entry.value if entry else None
    if status is None or status.state != RunState.running:
        state = status.state if status else "not started"
        raise Conflict(f"VM {vm.spec.name} is {state}: only a running guest's agent answers")
    if status.hardware is not None and not status.hardware.guest_agent:
        raise Conflict(
            f"VM {vm.spec.name} runs without the guest agent channel: "
            "set guest_agent and restart it"
        )
    return vm


async def _through(vm: VM, agent: GuestAgent, work: Callable[[], Awaitable[T]]) -> T:
    if not await agent.ping(timeout=PING_TIMEOUT):
        raise Conflict(
            f"no guest agent answers in VM {vm.spec.name}: is qemu-ga installed and running?"
        )
    try:
        return await work()
    except AgentUnavailable as exc:
        raise Conflict(f"the guest agent of VM {vm.spec.name} stopped answering: {exc}") from exc
    except NoSuchHook as exc:
        raise NotFound(str(exc)) from exc
    except (AgentCommandError, HookError) as exc:
        raise Conflict(f"the guest agent of VM {vm.spec.name} refused: {exc}") from exc


async def list_hooks(db: ConfigDB, ref: str, agent_for: AgentFor) -> GuestHookList:
    vm = await reachable(db, ref)
    agent = agent_for(vm.id)
    found = await _through(vm, agent, lambda: guest_hooks.list_hooks(agent))
    return GuestHookList(
        vm=vm.id,
        runner=found.runner,
        hooks=[GuestHook(name=h.name, size=h.size, executable=h.executable, sha256=h.sha256)
               for h in found.hooks],
    )  # fmt: skip


async def install_hook(
    db: ConfigDB, ref: str, name: str, script: str, agent_for: AgentFor
) -> GuestHookList:
    """Install or replace hook `name`; returns the guest's hooks after it."""
    if not guest_hooks.valid_name(name):
        raise Invalid(
            "path.name", "1-64 letters, digits, '-' or '_', starting with one of the first two"
        )
    data = script.encode()
    if len(data) > MAX_HOOK_BYTES:
        raise Invalid("body.script", f"at most {MAX_HOOK_BYTES} bytes")
    vm = await reachable(db, ref)
    agent = agent_for(vm.id)
    await _through(vm, agent, lambda: guest_hooks.install_hook(agent, name, data))
    return await list_hooks(db, vm.id, agent_for)


async def remove_hook(db: ConfigDB, ref: str, name: str, agent_for: AgentFor) -> None:
    if not guest_hooks.valid_name(name):
        raise Invalid(
            "path.name", "1-64 letters, digits, '-' or '_', starting with one of the first two"
        )
    vm = await reachable(db, ref)
    agent = agent_for(vm.id)
    await _through(vm, agent, lambda: guest_hooks.remove_hook(agent, name))
