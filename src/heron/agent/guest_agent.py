"""Whether a running VM's guest agent answers, and its version, for the VM's status.

A probe per VM with the agent channel, apart from the VM's monitor: a ping has a short
deadline, yet a hung guest must never slow the loop that reports run state. It probes often
until the agent first answers (the guest is booting: users want to see it appear) and seldom
after; the version is asked only when the agent (re)appears. A probe is skipped while another
caller (a freeze, a hook install) holds the agent: its silence then means "busy", not "gone".
"""

import asyncio
import contextlib
from collections.abc import Callable

from heron.hypervisor.qga import GuestAgent, GuestAgentError
from heron.models.vm import GuestAgentStatus

PROBE_TIMEOUT = 2.0
WHILE_ABSENT = 10.0  # seconds between probes until it answers
WHILE_PRESENT = 30.0  # and once it does


async def probe(agent: GuestAgent, last: GuestAgentStatus | None) -> GuestAgentStatus | None:
    """The agent's status now, from `last`; None when it is busy with another caller."""
    if agent.busy:
        return None
    connected = await agent.ping(timeout=PROBE_TIMEOUT)
    version = last.version if last else None
    if connected and not (last and last.connected):
        # Unanswered: the next probe that finds the agent anew asks again.
        with contextlib.suppress(GuestAgentError):
            version = (await agent.info(timeout=PROBE_TIMEOUT)).version
    return GuestAgentStatus(connected=connected, version=version)


async def follow(agent: GuestAgent, publish: Callable[[GuestAgentStatus], None]) -> None:
    """Probe until cancelled; `publish` gets each status that differs from the last."""
    last: GuestAgentStatus | None = None
    while True:
        status = await probe(agent, last)
        if status is not None and status != last:
            publish(status)
            last = status
        await asyncio.sleep(WHILE_PRESENT if last and last.connected else WHILE_ABSENT)
