"""A stand-in for qemu-system-x86_64: takes QEMU's command line, daemonizes, speaks QMP.

Run as a program (`python tests/fakes/qemu.py <QEMU's arguments>`; `install` puts it on a
PATH under QEMU's name). Only the standard library is used: it runs outside the test process.

What it does as QEMU does (tests/contracts/qemu.py holds it to qemu-system-x86_64):
`-daemonize` (the launcher returns once the pidfile and the QMP socket exist), `-pidfile` (also
a lock: a second QEMU for the same VM fails), the QMP server of `-chardev socket,id=qmp,...`,
the serial console log of the `serial0` chardev (the test guest's READY line once the guest
boots), `-S` (status "prelaunch": the guest boots at the first `cont`), `-incoming defer`
(status "inmigrate"), `-m`. Over QMP: the greeting and qmp_capabilities, query-status,
stop/cont (STOP/RESUME events), system_powerdown (POWERDOWN; a booted guest that runs then
powers itself off: SHUTDOWN and exit; a paused one once it runs again), quit, system_reset,
query-memory-size-summary, query-vnc, the migration commands with `query-migrate` following a
script, query-block-jobs; any other command is answered as QEMU answers one it does not have.

What it is told to do wrong comes from the JSON file named by $HERON_FAKE_QEMU_SCRIPT, read at
start and again before each command (so a test may change it while the fake runs):

    start_error: str         exit 1 at start with this message (QEMU refusing its arguments)
    errors: {command: str}   answer the command with a GenericError carrying this text
    hang: [command]          never answer the command
    crash: [command]         die at once on receiving the command (as if SIGKILLed)
    ignore_powerdown: bool   the guest does not react to the ACPI power button
    migration: [object]      what query-migrate answers once `migrate` was sent, one entry
                             per query, the last one repeated ("completed" pauses the guest)
    migrating: bool          a migration (the script above) is already under way at start

Every command received is appended, as one JSON line, to `fake-qemu.journal` next to the
pidfile: tests read which commands a controller sent. SIGUSR1 makes the guest power itself off
(SHUTDOWN with guest=true, then exit), as an `poweroff` typed in the guest would.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

SCRIPT_VARIABLE = "HERON_FAKE_QEMU_SCRIPT"
JOURNAL = "fake-qemu.journal"
READY_LINE = "HERON-GUEST-READY uuid={uuid}"  # what heron.testguest's guest prints
LINGER = 0.2


def install(directory: Path) -> Path:
    """Put an executable named qemu-system-x86_64 into `directory` that runs this fake with
    this Python; prepend `directory` to PATH and the VM controller launches it."""
    directory.mkdir(parents=True, exist_ok=True)
    program = directory / "qemu-system-x86_64"
    # -S: no site-packages to scan, it needs the standard library only (and starts sooner).
    here = Path(__file__).resolve()
    program.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{here}" "$@"\n')
    program.chmod(0o755)
    return program


class Script:
    """The fake's instructions, as a test writes them (see the module's docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self.settings: dict[str, Any] = {}
        self.save()

    def set(self, **settings: Any) -> None:
        self.settings.update(settings)
        self.save()

    def save(self) -> None:
        # Written whole and renamed, so a fake reading it meanwhile sees old or new, not half.
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.settings))
        partial.replace(self.path)


def read_journal(root: Path) -> list[dict[str, Any]]:
    """The QMP commands the fake in runtime directory `root` received, in order."""
    try:
        lines = (root / JOURNAL).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines]


def _script() -> dict[str, Any]:
    path = os.environ.get(SCRIPT_VARIABLE)
    if not path:
        return {}
    try:
        return dict(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        return {}


def _options(value: str) -> dict[str, str]:
    """QEMU's `a,b=c,...` option syntax (the leading bare word is the backend)."""
    found = {}
    for index, part in enumerate(value.split(",")):
        name, sep, setting = part.partition("=")
        found[name if sep else ("backend" if index == 0 else name)] = setting if sep else "on"
    return found


class Arguments:
    def __init__(self, argv: list[str]):
        self.uuid = ""
        self.pidfile: Path | None = None
        self.qmp: Path | None = None
        self.console_log: Path | None = None
        self.paused = "-S" in argv
        self.daemonize = "-daemonize" in argv
        self.incoming = False
        self.memory = 128 * 1024 * 1024
        for flag, value in zip(argv, [*argv[1:], ""], strict=True):
            if flag == "-uuid":
                self.uuid = value
            elif flag == "-pidfile":
                self.pidfile = Path(value)
            elif flag == "-incoming":
                self.incoming = True
            elif flag == "-m":
                self.memory = _memory(value)
            elif flag == "-chardev":
                options = _options(value)
                if options.get("id") == "qmp":
                    self.qmp = Path(options["path"])
                elif options.get("id") == "serial0" and "logfile" in options:
                    self.console_log = Path(options["logfile"])
        if self.pidfile is None or self.qmp is None:
            raise SystemExit("fake qemu: -pidfile and a qmp -chardev are required")


def _memory(value: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    if value[-1:].upper() in units:
        return int(value[:-1]) * units[value[-1].upper()]
    return int(value) * 1024**2  # QEMU's default unit is MiB


class FakeQemu:
    def __init__(self, args: Arguments, listener: socket.socket):
        self.args = args
        self.listener = listener
        # With -S QEMU is "prelaunch" (not "paused"): the machine has never run.
        self.status = "inmigrate" if args.incoming else ("prelaunch" if args.paused else "running")
        self.button_pressed = False  # ACPI power button, seen by the guest once it runs
        self.booted = self.status != "prelaunch"  # an incoming guest booted on its source
        script = _script()
        self.migration_step: int | None = 0 if script.get("migrating") else None
        self.clients: set[asyncio.StreamWriter] = set()
        self.done = asyncio.Event()
        self.guest_shutdown = False
        self.journal = args.pidfile.parent / JOURNAL if args.pidfile else None

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self._guest_poweroff)
        loop.add_signal_handler(signal.SIGTERM, lambda: self._shutdown(False, "host-signal"))
        if self.status == "running":
            self._console(READY_LINE.format(uuid=self.args.uuid))
        server = await asyncio.start_unix_server(self._client, sock=self.listener)
        async with server:
            await self.done.wait()
            if self.guest_shutdown:
                # A guest's shutdown takes QEMU a moment to act on; a client between two
                # reads still hears the SHUTDOWN event before the socket closes.
                await asyncio.sleep(LINGER)
            for writer in list(self.clients):
                with contextlib.suppress(Exception):
                    await writer.drain()
                    writer.close()

    # -- the QMP session ----------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        greeting = {
            "QMP": {
                "version": {
                    "qemu": {"major": 7, "minor": 2, "micro": 0},
                    "package": "heron fake qemu",
                },
                "capabilities": [],
            }
        }
        self._send(writer, greeting)
        negotiated = False
        try:
            async for request in _requests(reader):
                if self.done.is_set():
                    return
                name = request.get("execute", "")
                reply: dict[str, Any]
                if name == "qmp_capabilities":
                    negotiated = True
                    reply = {"return": {}}
                elif not negotiated:
                    reply = _error("CommandNotFound", "Expecting capabilities negotiation")
                else:
                    self._record(request)
                    answer = self._execute(name, request.get("arguments") or {})
                    if answer is None:
                        continue  # hangs: no answer, ever
                    reply = answer
                if "id" in request:
                    reply["id"] = request["id"]
                self._send(writer, reply)
                if negotiated and name == "qmp_capabilities":
                    self.clients.add(writer)  # events go to negotiated sessions only
                await writer.drain()
                self._after(name)
        except (ConnectionError, json.JSONDecodeError):
            return
        finally:
            self.clients.discard(writer)

    def _execute(self, name: str, arguments: dict[str, Any]) -> dict[str, Any] | None:
        script = _script()
        if name in script.get("crash", []):
            os._exit(137)  # no clean-up, no reply: the process is simply gone
        if name in script.get("hang", []):
            return None
        if name in script.get("errors", {}):
            return _error("GenericError", str(script["errors"][name]))
        handler = getattr(self, "qmp_" + name.replace("-", "_"), None)
        if handler is None:
            return _error("CommandNotFound", f"The command {name} has not been found")
        answer = handler(arguments, script)
        if isinstance(answer, dict) and "error" in answer:
            return answer
        return {"return": answer}

    def _after(self, name: str) -> None:
        """What a command sets off once it was answered: QEMU answers before it exits."""
        if name == "quit":
            self._shutdown(False, "host-qmp-quit")
        elif self.button_pressed and self.status == "running":
            # The guest (it runs now) handles the power button: it powers itself off. One
            # that never booted (prelaunch) has no OS to do so.
            self.button_pressed = False
            if self.booted and not _script().get("ignore_powerdown"):
                self._guest_poweroff()

    # -- commands ------------------------------------------------------------------------

    def qmp_query_status(self, _: dict[str, Any], __: dict[str, Any]) -> dict[str, Any]:
        return {"status": self.status, "running": self.status == "running", "singlestep": False}

    def qmp_stop(self, _: dict[str, Any], __: dict[str, Any]) -> dict[str, Any]:
        if self.status == "running":  # QEMU keeps "prelaunch" and "inmigrate" as they are
            self.status = "paused"
            self._event("STOP")
        return {}

    def qmp_cont(self, _: dict[str, Any], __: dict[str, Any]) -> dict[str, Any]:
        if self.status == "inmigrate":
            return _error("GenericError", "Guest is waiting for an incoming migration")
        if self.status != "running":
            if self.status == "prelaunch":
                self.booted = True
                self._console(READY_LINE.format(uuid=self.args.uuid))
            self.status = "running"
            self._event("RESUME")
        return {}

    def qmp_system_powerdown(self, _: dict[str, Any], __: dict[str, Any]) -> dict[str, Any]:
        self._event("POWERDOWN")
        self.button_pressed = True
        return {}

    def qmp_system_reset(self, _: dict[str, Any], __: dict[str, Any]) -> dict[str, Any]:
        self._event("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        return {}

    def qmp_quit(self, _: dict[str, Any], __: dict[str, Any]) -> dict[str, Any]:
        return {}

    def qmp_query_memory_size_summary(
        self, _: dict[str, Any], __: dict[str, Any]
    ) -> dict[str, Any]:
        return {"base-memory": self.args.memory, "plugged-memory": 0}

    def qmp_query_vnc(self, _: dict[str, Any], __: dict[str, Any]) -> dict[str, Any]:
        return {
            "enabled": True,
            "host": "127.0.0.1",
            "service": "5900",
            "family": "ipv4",
            "auth": "none",
            "clients": [],
        }

    def qmp_query_block_jobs(self, _: dict[str, Any], __: dict[str, Any]) -> list[Any]:
        return []

    def qmp_migrate(self, _: dict[str, Any], __: dict[str, Any]) -> dict[str, Any]:
        self.migration_step = 0
        return {}

    def qmp_migrate_cancel(self, _: dict[str, Any], __: dict[str, Any]) -> dict[str, Any]:
        if self.migration_step is not None:
            self.migration_step = -1
        return {}

    def qmp_query_migrate(self, _: dict[str, Any], script: dict[str, Any]) -> dict[str, Any]:
        if self.migration_step is None:
            return {}  # no migration yet: QEMU says nothing at all
        if self.migration_step < 0:
            return {"status": "cancelled"}
        steps = script.get("migration") or [{"status": "completed", "downtime": 1, "ram": {}}]
        info = dict(steps[min(self.migration_step, len(steps) - 1)])
        self.migration_step += 1
        if info.get("status") == "completed" and self.status == "running":
            self.status = "postmigrate"
            self._event("STOP")
        return info

    def _accepted(self, _: dict[str, Any], __: dict[str, Any]) -> dict[str, Any]:
        return {}

    # Commands whose effect lies outside this fake (NBD, block jobs, the migration stream):
    # accepted, so a controller's sequence of calls can be followed through the journal.
    qmp_migrate_set_capabilities = _accepted
    qmp_migrate_set_parameters = _accepted
    qmp_migrate_incoming = _accepted
    qmp_migrate_continue = _accepted
    qmp_nbd_server_start = _accepted
    qmp_nbd_server_stop = _accepted
    qmp_block_export_add = _accepted
    qmp_blockdev_add = _accepted
    qmp_blockdev_mirror = _accepted
    qmp_blockdev_reopen = _accepted
    qmp_block_job_cancel = _accepted
    qmp_block_resize = _accepted

    # -- helpers -------------------------------------------------------------------------

    def _guest_poweroff(self) -> None:
        self._shutdown(True, "guest-shutdown")

    def _shutdown(self, guest: bool, reason: str) -> None:
        self.guest_shutdown = guest
        self._event("SHUTDOWN", {"guest": guest, "reason": reason})
        self.done.set()

    def _event(self, name: str, data: dict[str, Any] | None = None) -> None:
        now = time.time()
        message: dict[str, Any] = {
            "event": name,
            "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)},
        }
        if data is not None:
            message["data"] = data
        for writer in list(self.clients):
            self._send(writer, message)

    @staticmethod
    def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(json.dumps(message).encode() + b"\r\n")

    def _record(self, request: dict[str, Any]) -> None:
        if self.journal is not None:
            entry = {"execute": request["execute"], "arguments": request.get("arguments")}
            with open(self.journal, "a") as journal:
                journal.write(json.dumps(entry) + "\n")

    def _console(self, line: str) -> None:
        if self.args.console_log is not None:
            with open(self.args.console_log, "a") as log:
                log.write(line + "\n")


async def _requests(reader: asyncio.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects a client sends: a stream of them, not necessarily one per line."""
    decoder = json.JSONDecoder()
    buffer = ""
    while chunk := await reader.read(65536):
        buffer += chunk.decode()
        while buffer.strip():
            try:
                request, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                break  # the rest of this object is still on its way
            buffer = buffer.lstrip()[end:]
            yield request


def _error(kind: str, desc: str) -> dict[str, Any]:
    return {"error": {"class": kind, "desc": desc}}


def main(argv: list[str]) -> int:
    args = Arguments(argv)
    start_error = _script().get("start_error")
    if start_error:
        print(f"qemu-system-x86_64: {start_error}", file=sys.stderr)
        return 1
    assert args.qmp is not None and args.pidfile is not None
    ready = None
    if args.daemonize:
        ready, told = os.pipe()
        if os.fork() > 0:
            os.close(told)
            # The launcher sees QEMU's parent exit only once the child is ready, as with QEMU.
            return 0 if os.read(ready, 1) == b"1" else 1
        os.close(ready)
        os.setsid()
        ready = told
    # The pidfile is QEMU's lock: a second QEMU for the same VM stops here, before it touches
    # the first one's sockets. The descriptor stays open (and locked) while this one lives.
    pidfile = os.open(args.pidfile, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(pidfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(
            "qemu-system-x86_64: cannot create PID file: Cannot lock pid file: "
            "Resource temporarily unavailable",
            file=sys.stderr,
        )
        return 1
    with contextlib.suppress(FileNotFoundError):
        args.qmp.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(args.qmp))
    listener.listen()
    os.ftruncate(pidfile, 0)
    os.write(pidfile, f"{os.getpid()}\n".encode())
    if ready is not None:
        os.write(ready, b"1")
        os.close(ready)
    try:
        asyncio.run(FakeQemu(args, listener).serve())
    finally:
        # QEMU removes its pidfile and socket when it exits (not when it is killed).
        with contextlib.suppress(FileNotFoundError):
            args.pidfile.unlink()
        with contextlib.suppress(FileNotFoundError):
            args.qmp.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
