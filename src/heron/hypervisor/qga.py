"""The QEMU guest agent (qemu-ga) of one VM, spoken to over its virtio-serial port.

QEMU serves the port's host end as a unix socket (`RuntimePaths.guest_agent`). Anything may sit
behind it: an agent that answers, none at all (the socket still accepts, and what we write
waits in a buffer nobody reads), an agent busy with an earlier client's command, or a reply
an earlier client never read. So every call has a deadline, one command runs at a time, and
each connection starts with the agent's own handshake: a 0xFF byte (invalid in JSON, it
resets the agent's parser from whatever a previous client left half-sent), then
`guest-sync-delimited` with a fresh id, whose reply the agent prefixes with 0xFF too; every
byte before the reply carrying our id is someone else's and is dropped.

QEMU's chardev takes one client at a time (the next waits in the listen backlog), and the
API, the VM controller and the snapshot service all talk to the same agent, so a connection
is held only for one call, or for a block of calls under `held()`.

Why not the qemu.qmp library that drives QMP: its sessions can skip the greeting, as QGA
wants, but its reader parses every line as JSON and so cannot read the 0xFF-delimited
handshake, nor send the reset byte; the protocol below is small.

    GuestAgentError        (a HypervisorError) anything that went wrong with the agent
    ├── AgentUnavailable   nothing answered in time: no socket, no agent, a hung agent
    ├── AgentCommandError  the agent answered and refused the command
    │   └── FreezeError    it refused to freeze: a hook failed, or a filesystem did
    ├── FreezeWindowExceeded  the limit of a freeze passed before its body ended
    └── ThawError          a frozen guest could not be thawed (said loudly: its writes hang)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heron.errors import HypervisorError
from heron.util.wait import until

log = logging.getLogger(__name__)

DELIMITER = b"\xff"
# A reply larger than this is not one we asked for (guest-exec output is capped below it).
MAX_REPLY = 16 * 1024 * 1024
# What guest-file-write and guest-exec-status carry per message: well under MAX_REPLY.
CHUNK = 1024 * 1024
DEFAULT_TIMEOUT = 10.0


class GuestAgentError(HypervisorError):
    """The guest agent could not be used: see the subclasses."""


class AgentUnavailable(GuestAgentError):
    """Nothing answered in time: the socket is absent or refuses connections (the VM is off,
    or its QEMU has no agent channel), no agent runs in the guest, or it did not finish in
    time. A command that timed out may still take effect in the guest."""


class AgentCommandError(GuestAgentError):
    """The agent answered and refused the command; `desc` is the agent's own sentence."""

    def __init__(self, command: str, error_class: str, desc: str):
        super().__init__(f"{command}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class FreezeError(AgentCommandError):
    """The guest refused to freeze: a fsfreeze hook exited non-zero (the agent's message says
    which status) or a filesystem could not be frozen. The agent thaws what it froze."""


class FreezeWindowExceeded(GuestAgentError):
    """The freeze limit passed before the body of `frozen` ended: the guest was thawed at the
    limit, so whatever the body took after that is not consistent and must be deleted."""


class ThawError(GuestAgentError):
    """The guest stayed frozen: every thaw within the allowed time failed. Its writes hang
    until someone thaws it (`heron` retries are safe: a thaw of a thawed guest is a no-op)."""


# -- the wire (pure) ---------------------------------------------------------------------


def encode(command: str, arguments: dict[str, Any] | None = None) -> bytes:
    request: dict[str, Any] = {"execute": command}
    if arguments is not None:
        request["arguments"] = arguments
    return json.dumps(request, separators=(",", ":")).encode() + b"\n"


def sync_request(sync_id: int) -> bytes:
    """The handshake: reset the agent's parser, then ask for a delimited echo of `sync_id`."""
    return DELIMITER + encode("guest-sync-delimited", {"id": sync_id})


@dataclass
class Frame:
    """One message from the agent; `delimited`: a 0xFF came right before it (only the reply
    to guest-sync-delimited has one). `message` is None for a line that is not a JSON object."""

    delimited: bool
    message: dict[str, Any] | None


@dataclass
class Framer:
    """Splits the agent's byte stream into messages (one JSON object a line)."""

    buffer: bytearray = field(default_factory=bytearray)
    delimited: bool = False

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        frames: list[Frame] = []
        while True:
            newline = self.buffer.find(b"\n")
            mark = self.buffer.find(DELIMITER)
            if mark != -1 and (newline == -1 or mark < newline):
                # What came before a delimiter is a fragment nobody will complete.
                del self.buffer[: mark + 1]
                self.delimited = True
                continue
            if newline == -1:
                break
            line = bytes(self.buffer[:newline]).strip()
            del self.buffer[: newline + 1]
            if not line:
                continue
            frames.append(Frame(self.delimited, _parse(line)))
            self.delimited = False
        if len(self.buffer) > MAX_REPLY:
            raise AgentUnavailable(f"the agent sent more than {MAX_REPLY} bytes without a newline")
        return frames


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def is_sync_reply(frame: Frame, sync_id: int) -> bool:
    return frame.delimited and frame.message is not None and frame.message.get("return") == sync_id


def result(command: str, message: dict[str, Any]) -> Any:
    """The "return" member of a reply; raises AgentCommandError for an "error" one."""
    if "error" in message:
        error = message["error"] if isinstance(message["error"], dict) else {}
        raise AgentCommandError(
            command, str(error.get("class", "GenericError")), str(error.get("desc", error))
        )
    if "return" not in message:
        raise AgentUnavailable(f"{command}: a reply without return or error: {message}")
    return message["return"]


# -- what the agent reports ----------------------------------------------------------------


@dataclass(frozen=True)
class AgentInfo:
    version: str
    commands: tuple[str, ...]  # those enabled


@dataclass(frozen=True)
class GuestInterface:
    name: str
    mac: str | None
    addresses: tuple[str, ...]  # "address/prefix"


@dataclass(frozen=True)
class ExecResult:
    exitcode: int
    stdout: bytes
    stderr: bytes


def parse_info(reply: dict[str, Any]) -> AgentInfo:
    commands = tuple(
        str(c["name"]) for c in reply.get("supported_commands", []) if c.get("enabled", True)
    )
    return AgentInfo(version=str(reply.get("version", "")), commands=commands)


def parse_interfaces(reply: list[dict[str, Any]]) -> list[GuestInterface]:
    return [
        GuestInterface(
            name=str(entry.get("name", "")),
            mac=entry.get("hardware-address"),
            addresses=tuple(
                f"{a['ip-address']}/{a['prefix']}" for a in entry.get("ip-addresses", [])
            ),
        )
        for entry in reply
    ]


# -- the client ----------------------------------------------------------------------------


class GuestAgent:
    """The agent of one VM, reached through `path`; every method says what it raises."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._framer = Framer()
        self._pending: deque[Frame] = deque()
        self._holders = 0
        # Thaws that must finish even when their caller is cancelled (see `frozen`).
        self.background: set[asyncio.Task[Any]] = set()

    @property
    def busy(self) -> bool:
        """A call is under way (from any caller of this object)."""
        return self._lock.locked() or self._holders > 0

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[GuestAgent]:
        """Keep one connection across the calls inside (a handshake saved per call)."""
        self._holders += 1
        try:
            yield self
        finally:
            self._holders -= 1
            if self._holders == 0:
                async with self._lock:
                    self._disconnect()

    async def execute(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Any:
        """Send one command; returns the "return" member of the agent's reply. `timeout`
        covers waiting for other callers, connecting, the handshake and the reply.

        Raises AgentCommandError when the agent refuses the command, AgentUnavailable when
        nothing answers within `timeout`.
        """
        try:
            async with asyncio.timeout(timeout):
                async with self._lock:
                    try:
                        await self._connect()
                        assert self._writer is not None
                        self._writer.write(encode(command, arguments))
                        await self._writer.drain()
                        return result(command, await self._reply())
                    except AgentCommandError:
                        raise
                    except BaseException:
                        # A half-read reply or a command still running: start afresh.
                        self._disconnect()
                        raise
                    finally:
                        if self._holders == 0:
                            self._disconnect()
        except TimeoutError as exc:
            raise AgentUnavailable(
                f"{command}: no answer from the guest agent in {timeout:g}s"
            ) from exc
        except (OSError, EOFError) as exc:
            raise AgentUnavailable(f"{command}: guest agent socket {self.path}: {exc}") from exc

    async def _connect(self) -> None:
        if self._writer is not None:
            return
        self._reader, self._writer = await asyncio.open_unix_connection(str(self.path))
        self._framer = Framer()
        sync_id = secrets.randbelow(2**31 - 1) + 1
        self._writer.write(sync_request(sync_id))
        await self._writer.drain()
        while True:
            frame = await self._frame()
            if is_sync_reply(frame, sync_id):
                return

    async def _reply(self) -> dict[str, Any]:
        while True:
            frame = await self._frame()
            if frame.message is None or "event" in frame.message:
                continue
            return frame.message

    async def _frame(self) -> Frame:
        assert self._reader is not None
        while not self._pending:
            data = await self._reader.read(65536)
            if not data:
                raise EOFError("the guest agent's socket closed")
            self._pending.extend(self._framer.feed(data))
        return self._pending.popleft()

    def _disconnect(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        self._pending.clear()

    # -- commands --------------------------------------------------------------------------

    async def ping(self, timeout: float = 2.0) -> bool:
        """Whether an agent answers within `timeout`. Never raises."""
        try:
            await self.execute("guest-ping", timeout=timeout)
        except GuestAgentError:
            return False
        return True

    async def info(self, timeout: float = DEFAULT_TIMEOUT) -> AgentInfo:
        """The agent's version and the commands it has enabled.

        Raises AgentUnavailable.
        """
        return parse_info(await self.execute("guest-info", timeout=timeout))

    async def freeze(self, timeout: float) -> int:
        """Run the guest's fsfreeze hooks with "freeze", then freeze its filesystems; returns
        how many. Prefer `frozen`, which bounds how long the guest stays frozen.

        Raises FreezeError (with the agent's message) when a hook or a filesystem fails: the
        agent has then thawed what it froze. AgentUnavailable when no answer comes within
        `timeout`: the guest may then be frozen, or become so, and needs a thaw.
        """
        try:
            return int(await self.execute("guest-fsfreeze-freeze", timeout=timeout))
        except AgentCommandError as exc:
            raise FreezeError(exc.command, exc.error_class, exc.desc) from exc

    async def thaw(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Thaw the guest's filesystems, then run its hooks with "thaw"; returns how many
        were thawed (0 when none was frozen: a thaw is always safe to repeat).

        Raises AgentCommandError, AgentUnavailable.
        """
        return int(await self.execute("guest-fsfreeze-thaw", timeout=timeout))

    async def freeze_status(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        """ "thawed" or "frozen".

        Raises AgentCommandError, AgentUnavailable.
        """
        return str(await self.execute("guest-fsfreeze-status", timeout=timeout))

    async def network_interfaces(self, timeout: float = DEFAULT_TIMEOUT) -> list[GuestInterface]:
        """The guest's interfaces and the addresses it has on them.

        Raises AgentCommandError, AgentUnavailable.
        """
        return parse_interfaces(await self.execute("guest-network-get-interfaces", timeout=timeout))

    async def write_file(
        self, path: str, data: bytes, timeout: float = DEFAULT_TIMEOUT, mode: str = "w"
    ) -> None:
        """Write `data` to the guest file `path` (created or truncated; "a" appends).

        Raises AgentCommandError (no such directory, not allowed...), AgentUnavailable.
        """
        async with asyncio.timeout(timeout), self.held():
            handle = await self.execute("guest-file-open", {"path": path, "mode": mode}, timeout)
            try:
                for start in range(0, len(data), CHUNK) if data else ():
                    chunk = base64.b64encode(data[start : start + CHUNK]).decode()
                    await self.execute(
                        "guest-file-write", {"handle": handle, "buf-b64": chunk}, timeout
                    )
            finally:
                with contextlib.suppress(GuestAgentError):
                    await self.execute("guest-file-close", {"handle": handle}, timeout)

    async def exec(
        self,
        path: str,
        args: list[str],
        timeout: float = DEFAULT_TIMEOUT,
        stdin: bytes | None = None,
    ) -> ExecResult:
        """Run a program in the guest and wait for it; its output is captured.

        Raises AgentCommandError (no such program, guest-exec disabled), AgentUnavailable
        (also when it has not exited within `timeout`: it then runs on in the guest).
        """
        started = time.monotonic()
        arguments: dict[str, Any] = {"path": path, "arg": args, "capture-output": True}
        if stdin is not None:
            arguments["input-data"] = base64.b64encode(stdin).decode()
        async with self.held():
            pid = (await self.execute("guest-exec", arguments, timeout))["pid"]

            async def exited() -> dict[str, Any] | None:
                left = max(0.1, timeout - (time.monotonic() - started))
                status = await self.execute("guest-exec-status", {"pid": pid}, left)
                return status if status.get("exited") else None

            status = await until(exited, max(0.0, timeout - (time.monotonic() - started)), 0.1)
        if status is None:
            raise AgentUnavailable(f"{path} did not exit in the guest within {timeout:g}s")
        return ExecResult(
            exitcode=int(status.get("exitcode", -status.get("signal", 1))),
            stdout=base64.b64decode(status.get("out-data", "")),
            stderr=base64.b64decode(status.get("err-data", "")),
        )


# -- a bounded freeze ----------------------------------------------------------------------

# One thaw's wait for its reply: the guest runs its thaw hooks first (a database's unlock),
# which a busy guest may take seconds over; sent again sooner, it only runs them again.
THAW_ATTEMPT_S = 15.0
# The guest's freeze hooks' time before it freezes (beyond the freeze limit): more than the
# PostgreSQL hook's own bound (HERON_PG_TIMEOUT, 60 s), so a hung CHECKPOINT fails the hook, and
# so the freeze, with the hook's message rather than with silence.
HOOKS_S = 90.0
THAW_GRACE_S = 10.0  # how long past the limit thaws are retried before giving up loudly
THAW_RETRY_PAUSE_S = 0.5  # between failed thaws: pacing, the agent may be restarting


@dataclass
class FreezeReport:
    """What `frozen` did, filled at exit. `window_s`: from the freeze request to the thaw's
    reply (the hooks' work before the freeze included). `frozen_s`: from the freeze's reply
    to the thaw's, the span the limit bounds; about how long the guest's writes waited."""

    filesystems: int
    limit_s: float
    window_s: float | None = None
    frozen_s: float | None = None
    thawed_at_limit: bool = False


@contextlib.asynccontextmanager
async def frozen(
    agent: GuestAgent,
    limit_s: float,
    *,
    hooks_s: float = HOOKS_S,
    thaw_grace_s: float = THAW_GRACE_S,
) -> AsyncIterator[FreezeReport]:
    """Freeze the guest (its hooks first) for the body, frozen never longer than `limit_s`.

    The freeze request runs the guest's hooks before it freezes anything (PostgreSQL's
    CHECKPOINT under load takes seconds), while the guest's writes still flow: it gets
    `hooks_s` more than the limit for them. From the agent's reply (the filesystems frozen)
    the guest is thawed when the body ends or when `limit_s` has passed, whichever comes
    first: a watchdog thaws at the limit even while the body hangs, and a cancelled caller
    still gets its guest thawed (the thaw runs on, shielded). A failing thaw is retried until
    `thaw_grace_s` past the limit.

    Raises FreezeError (the agent's message: a hook or a filesystem failed; the guest is
    thawed, and a thaw was sent for the hooks that had run) or AgentUnavailable (no answer
    in time; thaws were sent anyway) before the body runs; at exit FreezeWindowExceeded when
    the limit passed before the body ended (the caller deletes what it took: it is not
    consistent), ThawError when the guest could not be thawed. An error of the body itself
    passes through unchanged.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + hooks_s + limit_s  # until the freeze's reply moves it closer
    thaw: asyncio.Task[float] | None = None

    def start_thaw() -> asyncio.Task[float]:
        nonlocal thaw
        if thaw is None:
            thaw = asyncio.create_task(_thaw(agent, max(deadline, loop.time()) + thaw_grace_s))
            agent.background.add(thaw)
            thaw.add_done_callback(agent.background.discard)
        return thaw

    try:
        count = await agent.freeze(timeout=hooks_s + limit_s)
    except FreezeError:
        # The agent froze nothing, but hooks that ran before the failing one did their
        # "freeze" (took a lock) and see no "thaw" unless one is sent: a thaw runs every hook.
        with contextlib.suppress(GuestAgentError):
            await asyncio.shield(start_thaw())
        raise
    except BaseException:
        # No reply (or we were cancelled): the freeze may still land in the guest.
        with contextlib.suppress(ThawError):
            await asyncio.shield(start_thaw())
        raise
    frozen_at = loop.time()
    deadline = frozen_at + limit_s
    report = FreezeReport(filesystems=count, limit_s=limit_s)

    async def watchdog() -> None:
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        report.thawed_at_limit = True
        log.warning("freeze of %s passed its limit of %gs: thawing", agent.path, limit_s)
        start_thaw()

    dog = asyncio.create_task(watchdog())
    body_failed = False
    try:
        yield report
    except BaseException:
        body_failed = True
        raise
    finally:
        dog.cancel()
        thawed_at = await asyncio.shield(start_thaw())
        report.window_s = thawed_at - started
        report.frozen_s = thawed_at - frozen_at
        if report.thawed_at_limit and not body_failed:
            raise FreezeWindowExceeded(
                f"the body took longer than the freeze limit of {limit_s:g}s: "
                f"the guest was thawed at the limit"
            )


async def _thaw(agent: GuestAgent, give_up_at: float) -> float:
    """Thaw until it works or `give_up_at` (loop time) passes; returns when it worked."""
    loop = asyncio.get_running_loop()
    while True:
        left = give_up_at - loop.time()
        try:
            await agent.thaw(timeout=max(0.1, min(THAW_ATTEMPT_S, left)))
            return loop.time()
        except GuestAgentError as exc:
            left = give_up_at - loop.time()
            if left <= 0:
                log.critical(
                    "the guest behind %s may stay FROZEN: thaw failed: %s", agent.path, exc
                )
                raise ThawError(f"the guest may stay frozen: thaw failed: {exc}") from exc
            log.error("thaw through %s failed (%s); retrying for %.0fs", agent.path, exc, left)
            await asyncio.sleep(min(THAW_RETRY_PAUSE_S, left))
