"""The guest agent client (heron.hypervisor.qga): its framing and handshake (pure), and the
client and the bounded freeze against a fake agent on a unix socket, which can answer, refuse,
leave stale replies or go silent like a real one; then what stands on it: the VM status's
probe, and freeze hooks through the agent (hypervisor.guest_hooks, services.guest)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fakes.configdb import FakeConfigDB

from heron.agent import guest_agent
from heron.configdb import keys
from heron.errors import HypervisorError
from heron.hypervisor import guest_hooks, qga
from heron.hypervisor.qga import (
    AgentCommandError,
    AgentUnavailable,
    Frame,
    Framer,
    FreezeError,
    FreezeWindowExceeded,
    GuestAgent,
    frozen,
)
from heron.hypervisor.qmp_base import QemuError
from heron.models.vm import VM, GuestAgentStatus, RunState, VMSpec, VMStatus
from heron.services import guest as guest_service
from heron.services.errors import Conflict, Invalid, NotFound

# -- pure -----------------------------------------------------------------------------------


def test_a_request_is_one_json_line() -> None:
    assert qga.encode("guest-ping") == b'{"execute":"guest-ping"}\n'
    line = qga.encode("guest-exec-status", {"pid": 7})
    assert json.loads(line) == {"execute": "guest-exec-status", "arguments": {"pid": 7}}


def test_the_handshake_resets_the_agents_parser_first() -> None:
    request = qga.sync_request(42)
    assert request.startswith(b"\xff")
    assert json.loads(request[1:]) == {
        "execute": "guest-sync-delimited",
        "arguments": {"id": 42},
    }


def test_the_framer_splits_lines_and_marks_the_delimited_reply() -> None:
    framer = Framer()
    assert framer.feed(b'{"return": 1}\n{"ret') == [Frame(False, {"return": 1})]
    # A fragment before the delimiter is what an earlier client left: dropped.
    frames = framer.feed(b'urn\xff{"return": 9}\n{"return": {}}\n')
    assert frames == [Frame(True, {"return": 9}), Frame(False, {"return": {}})]


def test_the_framer_keeps_unparsable_lines_apart() -> None:
    assert Framer().feed(b"garbage\n\n") == [Frame(False, None)]


def test_only_a_delimited_echo_of_our_id_ends_the_handshake() -> None:
    assert qga.is_sync_reply(Frame(True, {"return": 5}), 5)
    assert not qga.is_sync_reply(Frame(False, {"return": 5}), 5)  # guest-sync, someone else's
    assert not qga.is_sync_reply(Frame(True, {"return": 4}), 5)  # an earlier client's


def test_an_error_reply_is_the_agents_refusal() -> None:
    with pytest.raises(AgentCommandError) as caught:
        qga.result("guest-exec", {"error": {"class": "GenericError", "desc": "no such file"}})
    assert caught.value.desc == "no such file" and caught.value.command == "guest-exec"
    assert qga.result("guest-ping", {"return": {}}) == {}


def test_errors_are_hypervisor_errors_but_not_qemu_ones() -> None:
    # The VM controller treats QemuError as "QEMU is broken"; a missing agent is not that.
    for error in (AgentUnavailable, AgentCommandError, FreezeError, FreezeWindowExceeded):
        assert issubclass(error, HypervisorError) and not issubclass(error, QemuError)


def test_info_and_interfaces_are_read_from_the_agents_replies() -> None:
    info = qga.parse_info(
        {
            "version": "7.2.0",
            "supported_commands": [
                {"name": "guest-ping", "enabled": True},
                {"name": "guest-exec", "enabled": False},
            ],
        }
    )
    assert info == qga.AgentInfo("7.2.0", ("guest-ping",))
    interfaces = qga.parse_interfaces(
        [
            {
                "name": "eth0",
                "hardware-address": "52:54:00:12:34:56",
                "ip-addresses": [
                    {"ip-address-type": "ipv4", "ip-address": "10.0.0.5", "prefix": 24},
                    {"ip-address-type": "ipv6", "ip-address": "fe80::1", "prefix": 64},
                ],
            },
            {"name": "lo"},
        ]
    )
    assert interfaces[0].addresses == ("10.0.0.5/24", "fe80::1/64")
    assert interfaces[1] == qga.GuestInterface("lo", None, ())


# -- against a fake agent -------------------------------------------------------------------


class FakeAgent:
    """An agent behind a unix socket, as QEMU serves it: one client at a time. It answers the
    handshake and a few commands; `silent` makes it read and never answer (no qemu-ga in the
    guest), `stale` is written before the next handshake's reply (an earlier client's)."""

    def __init__(self, path: Path):
        self.path = path
        self.state = "thawed"
        self.freezes = self.thaws = 0
        self.silent = False
        self.freeze_error: str | None = None
        self.thaw_failures = 0
        self.stale = b""
        self.received: list[str] = []
        self.files: dict[int, bytearray] = {}
        self.exec_output, self.exec_status = b"hello\n", 3
        self._server: asyncio.Server | None = None
        self._busy = asyncio.Lock()
        self.thawed = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._busy:
            try:
                while line := await reader.readline():
                    line = line.split(b"\xff")[-1].strip()
                    if not line or self.silent:
                        continue
                    request = json.loads(line)
                    command = request["execute"]
                    self.received.append(command)
                    if command == "guest-sync-delimited":
                        writer.write(self.stale + b"\xff")
                        self.stale = b""
                        reply: dict[str, Any] = {"return": request["arguments"]["id"]}
                    else:
                        reply = self._answer(command, request.get("arguments", {}))
                    writer.write(json.dumps(reply).encode() + b"\n")
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

    def _answer(self, command: str, arguments: dict[str, Any]) -> dict[str, Any]:
        if command == "guest-ping":
            return {"return": {}}
        if command == "guest-info":
            return {"return": {"version": "7.2.0", "supported_commands": []}}
        if command == "guest-fsfreeze-freeze":
            if self.freeze_error:
                return {"error": {"class": "GenericError", "desc": self.freeze_error}}
            self.state, self.freezes = "frozen", self.freezes + 1
            return {"return": 2}
        if command == "guest-fsfreeze-thaw":
            if self.thaw_failures:
                self.thaw_failures -= 1
                return {"error": {"class": "GenericError", "desc": "thaw failed"}}
            count = 2 if self.state == "frozen" else 0
            self.state, self.thaws = "thawed", self.thaws + 1
            self.thawed.set()
            return {"return": count}
        if command == "guest-fsfreeze-status":
            return {"return": self.state}
        if command == "guest-file-open":
            handle = len(self.files) + 1
            self.files[handle] = bytearray()
            return {"return": handle}
        if command == "guest-file-write":
            self.files[arguments["handle"]] += base64.b64decode(arguments["buf-b64"])
            return {"return": {"count": 1, "eof": False}}
        if command == "guest-file-close":
            return {"return": {}}
        if command == "guest-exec":
            return {"return": {"pid": 99}}
        if command == "guest-exec-status":
            out = base64.b64encode(self.exec_output).decode()
            return {"return": {"exited": True, "exitcode": self.exec_status, "out-data": out}}
        return {"error": {"class": "CommandNotFound", "desc": f"{command} not found"}}


@pytest.fixture
async def fake() -> AsyncIterator[FakeAgent]:
    directory = Path(tempfile.mkdtemp(prefix="qga-", dir="/tmp"))  # short: sun_path limit
    agent = FakeAgent(directory / "qga.sock")
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def test_ping_answers_and_stale_replies_are_dropped(fake: FakeAgent) -> None:
    fake.stale = b'{"return": 12345}\n{"ret'
    agent = GuestAgent(fake.path)
    assert await agent.ping()
    assert fake.received == ["guest-sync-delimited", "guest-ping"]


async def test_a_silent_agent_is_unavailable_within_the_timeout(fake: FakeAgent) -> None:
    fake.silent = True
    agent = GuestAgent(fake.path)
    assert not await agent.ping(timeout=0.2)
    with pytest.raises(AgentUnavailable):
        await agent.freeze_status(timeout=0.2)


async def test_no_socket_is_unavailable(tmp_path: Path) -> None:
    agent = GuestAgent(tmp_path / "none.sock")
    assert not await agent.ping()
    with pytest.raises(AgentUnavailable, match=r"none\.sock"):
        await agent.thaw(timeout=1)


async def test_a_refused_freeze_carries_the_agents_message(fake: FakeAgent) -> None:
    fake.freeze_error = "fsfreeze hook has failed with status 1"
    with pytest.raises(FreezeError, match="hook has failed"):
        await GuestAgent(fake.path).freeze(timeout=5)


async def test_files_and_programs_in_the_guest(fake: FakeAgent) -> None:
    agent = GuestAgent(fake.path)
    await agent.write_file("/etc/x", b"#!/bin/sh\n")
    assert bytes(fake.files[1]) == b"#!/bin/sh\n"
    assert fake.received.count("guest-sync-delimited") == 1  # one connection for the file
    result = await agent.exec("/bin/true", [])
    assert result == qga.ExecResult(3, b"hello\n", b"")


async def test_frozen_thaws_when_the_body_ends(fake: FakeAgent) -> None:
    agent = GuestAgent(fake.path)
    async with frozen(agent, limit_s=30) as report:
        assert fake.state == "frozen" and report.filesystems == 2
    assert fake.state == "thawed" and report.window_s is not None
    assert report.frozen_s is not None and 0 <= report.frozen_s <= report.window_s
    assert not report.thawed_at_limit


async def test_frozen_thaws_at_the_limit_while_the_body_hangs(fake: FakeAgent) -> None:
    agent = GuestAgent(fake.path)
    with pytest.raises(FreezeWindowExceeded):
        async with frozen(agent, limit_s=0.3) as report:
            # The body "hangs" until the watchdog has thawed the guest under it.
            await fake.thawed.wait()
    assert report.thawed_at_limit and fake.thaws == 1


async def test_a_cancelled_caller_still_gets_its_guest_thawed(fake: FakeAgent) -> None:
    agent = GuestAgent(fake.path)
    entered = asyncio.Event()

    async def snapshot() -> None:
        async with frozen(agent, limit_s=30):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(snapshot())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake.state == "thawed"


async def test_a_failing_thaw_is_retried(fake: FakeAgent) -> None:
    fake.thaw_failures = 2
    agent = GuestAgent(fake.path)
    async with frozen(agent, limit_s=30):
        pass
    assert fake.state == "thawed" and fake.thaw_failures == 0


async def test_a_thaw_that_never_works_is_a_thaw_error(fake: FakeAgent) -> None:
    fake.thaw_failures = 10**6
    agent = GuestAgent(fake.path)
    with pytest.raises(qga.ThawError):
        async with frozen(agent, limit_s=0.5, thaw_grace_s=0.2):
            pass


async def test_a_refused_freeze_enters_no_body(fake: FakeAgent) -> None:
    fake.freeze_error = "fsfreeze hook has failed with status 1"
    with pytest.raises(FreezeError):
        async with frozen(GuestAgent(fake.path), limit_s=5):
            raise AssertionError("the body ran")
    # A thaw went anyway: the hooks before the failing one release what they took.
    assert fake.state == "thawed" and fake.thaws == 1


# -- the VM status's probe (agent/guest_agent.py) --------------------------------------------


async def test_the_probe_finds_the_agent_and_its_version_once(fake: FakeAgent) -> None:
    agent = GuestAgent(fake.path)
    first = await guest_agent.probe(agent, None)
    assert first == GuestAgentStatus(connected=True, version="7.2.0")
    again = await guest_agent.probe(agent, first)
    assert again == first and fake.received.count("guest-info") == 1


async def test_the_probe_keeps_the_version_of_an_agent_gone_silent(fake: FakeAgent) -> None:
    fake.silent = True
    last = GuestAgentStatus(connected=True, version="7.2.0")
    assert await guest_agent.probe(GuestAgent(fake.path), last) == GuestAgentStatus(
        connected=False, version="7.2.0"
    )


async def test_the_probe_leaves_a_busy_agent_alone(fake: FakeAgent) -> None:
    agent = GuestAgent(fake.path)
    async with agent.held():
        assert await guest_agent.probe(agent, None) is None
    assert fake.received == []


# -- hooks through the agent (hypervisor/guest_hooks.py, services/guest.py) -------------------


def test_a_hook_listing_is_read_in_run_order() -> None:
    listing = guest_hooks.parse_listing("runner\n120 1 ab12 mysql\n88 0 cd34 postgresql\n")
    assert listing.runner
    assert [(h.name, h.size, h.executable) for h in listing.hooks] == [
        ("mysql", 120, True),
        ("postgresql", 88, False),
    ]
    assert not guest_hooks.parse_listing("no-runner\n").runner


@pytest.mark.parametrize("name", ["", ".hidden", "a.bak", "x y", "-dash", "a" * 65, "a/b", "a\n"])
def test_hook_names_that_the_runner_would_skip_or_that_escape_are_refused(name: str) -> None:
    assert not guest_hooks.valid_name(name)


async def test_installing_a_hook_writes_aside_then_renames(fake: FakeAgent) -> None:
    fake.exec_status = 0
    await guest_hooks.install_hook(GuestAgent(fake.path), "mysql", b"#!/bin/sh\n")
    assert bytes(fake.files[1]) == b"#!/bin/sh\n"
    assert fake.received.count("guest-exec") == 2  # mkdir, then chmod and mv
    with pytest.raises(ValueError):
        await guest_hooks.install_hook(GuestAgent(fake.path), "big", b"x" * (256 * 1024 + 1))


async def test_removing_a_missing_hook_says_so(fake: FakeAgent) -> None:
    fake.exec_status = 3
    with pytest.raises(guest_hooks.NoSuchHook):
        await guest_hooks.remove_hook(GuestAgent(fake.path), "gone")


async def running(db: FakeConfigDB, agent: bool = True, state: RunState = RunState.running) -> VM:
    vm = VM(id="v1", spec=VMSpec(name="db", guest_agent=agent), node="n1", created_at=0)
    await db.put(keys.vm("v1"), vm)
    status = VMStatus(state=state, node="n1", updated_at=0, hardware=vm.spec)
    await db.put(keys.vm_status("v1"), status)
    return vm


async def test_the_service_says_why_no_agent_can_answer(fake: FakeAgent) -> None:
    db = FakeConfigDB()
    await running(db, state=RunState.shutoff)
    with pytest.raises(Conflict, match="shutoff"):
        await guest_service.list_hooks(db, "v1", lambda _: GuestAgent(fake.path))
    await running(db, agent=False)
    with pytest.raises(Conflict, match="without the guest agent channel"):
        await guest_service.list_hooks(db, "v1", lambda _: GuestAgent(fake.path))
    await running(db)
    fake.silent = True
    with pytest.raises(Conflict, match="no guest agent answers"):
        await guest_service.list_hooks(db, "v1", lambda _: GuestAgent(fake.path))
    with pytest.raises(Invalid):
        await guest_service.remove_hook(db, "v1", "../etc", lambda _: GuestAgent(fake.path))


async def test_the_service_lists_installs_and_removes(fake: FakeAgent) -> None:
    db = FakeConfigDB()
    await running(db)
    fake.exec_status, fake.exec_output = 0, b"runner\n10 1 " + b"0" * 64 + b" mysql\n"
    listing = await guest_service.install_hook(
        db, "v1", "mysql", "#!/bin/sh\n", lambda _: GuestAgent(fake.path)
    )
    assert listing.vm == "v1" and [h.name for h in listing.hooks] == ["mysql"]
    await guest_service.remove_hook(db, "v1", "mysql", lambda _: GuestAgent(fake.path))
    fake.exec_status = 3
    with pytest.raises(NotFound):
        await guest_service.remove_hook(db, "v1", "mysql", lambda _: GuestAgent(fake.path))
