"""iSCSI exports of the ARDFS volumes this node serves, kept in line with the ConfigDB.

The target is Debian's tgt (userspace: this kernel has no LIO), one `tgtd` per node with a
target per exported volume. tgt reads and writes files or block devices, and heron-io
serves volumes over NBD: between the two, one `qemu-storage-daemon` per export opens the
volume's NBD export (with `reconnect-delay`, so a heron-io restart is ridden out as QEMU's
guests ride it out) and exports it as a FUSE file, which is the LUN's backing store. tgt
opens it O_SYNC (`--bsoflags sync`): every SCSI write it acknowledges has been flushed by
heron-io (an FUSE fsync is an NBD FLUSH), whether or not the initiator ever sends SYNCHRONIZE
CACHE (ESXi does not). See docs/architecture.md, "iSCSI export".

tgtd and the storage daemons are started detached like heron-io: an agent restart finds them
by their pidfiles and touches nothing that is as it should be. Targets are compared with what
was configured through a fingerprint file per target (tgtd forgets everything when it
restarts, and then every target is made again).
"""

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
from pathlib import Path

from heron.configdb import UNREACHABLE, ConfigDB, keys
from heron.configdb.cache import Cache
from heron.models.iscsi import IscsiExport, IscsiSecret
from heron.models.storage import Pool, Volume
from heron.storage.ardfspool import ArdfsPool, socket_path
from heron.util.ports import free_port_in
from heron.util.proc import alive, read_pidfile, spawn_detached, terminate
from heron.util.wait import any_set, until_sync

log = logging.getLogger(__name__)

CHECK = 5.0
PORTAL_PORT = 3260  # the standard port, unless another node of a test cluster on this host has it
SPARE_PORTS = (33260, 34260)
START_TIMEOUT = 30.0
LUN = 1


def _mounted(path: Path) -> bool:
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        return False
    return any(line.split()[1] == str(path) for line in mounts.splitlines() if line.strip())


class Tgt:
    """One tgtd of this node, reached through its control socket."""

    def __init__(self, root: Path, address: str):
        self.root = root
        self.address = address
        self.pidfile = root / "tgtd.pid"
        self.portfile = root / "portal"

    @property
    def port(self) -> int:
        if not self.portfile.exists():
            try:
                port = free_port_in((PORTAL_PORT, PORTAL_PORT + 1), self.address)
            except OSError:
                port = free_port_in(SPARE_PORTS, self.address)
            self.root.mkdir(parents=True, exist_ok=True)
            self.portfile.write_text(f"{port}\n")
        return int(self.portfile.read_text())

    @property
    def portal(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def control(self) -> int:
        # tgtd's control socket number (at most 32767): one tgtd per portal
        return self.port if self.port < 32768 else self.port - 20000

    @property
    def marker(self) -> str:
        """In tgtd's command line: its own pidfile, in this node's state directory."""
        return str(self.root / "tgtd.own.pid")

    def running(self) -> int | None:
        return read_pidfile(self.pidfile, self.marker)

    def adm(self, *args: str) -> str:
        done = subprocess.run(
            ["tgtadm", "-C", str(self.control), "--lld", "iscsi", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"tgtadm {' '.join(args[:4])}: {done.stderr.strip()}")
        return done.stdout

    def answers(self) -> bool:
        try:
            self.adm("--op", "show", "--mode", "sys")
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
        return True

    def ensure(self) -> None:
        if self.running() is not None:
            return
        pid = spawn_detached(
            [
                "tgtd",
                "-f",
                "-C",
                str(self.control),
                "-p",
                self.marker,
                "--iscsi",
                f"portal={self.portal}",
            ],
            self.root / "tgtd.log",
            self.pidfile,
        )
        if not until_sync(self.answers, START_TIMEOUT, 0.1):
            raise RuntimeError(f"tgtd {pid} does not answer on its control socket")
        for stale in self.root.glob("targets/*.json"):
            stale.unlink()  # a new tgtd has no target: every one is made again
        log.info("iscsi: tgtd %d on %s", pid, self.portal)

    def stop(self) -> None:
        """tgtd leaves on SIGINT (it ignores SIGTERM while it has targets)."""
        pid = self.running()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        if not until_sync(lambda: not alive(pid, self.marker), 30.0, 0.1):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def targets(self) -> dict[str, int]:
        """iqn -> tid of the targets tgtd has."""
        found = re.findall(
            r"^Target (\d+): (\S+)$", self.adm("--op", "show", "--mode", "target"), re.M
        )
        return {iqn: int(tid) for tid, iqn in found}


class IscsiSupervisor:
    def __init__(self, db: ConfigDB, node: str, address: str, state_dir: Path):
        self.db = db
        self.node = node
        self.root = state_dir / "iscsi"
        self.state_dir = state_dir
        self.tgt = Tgt(self.root, address)
        self.exports = Cache(db, IscsiExport, keys.ISCSI_EXPORTS)
        self.volumes = Cache(db, Volume, keys.VOLUMES)
        self.pools = Cache(db, Pool, keys.POOLS)

    async def run(self) -> None:
        caches = (self.exports, self.volumes, self.pools)
        for cache in caches:
            await cache.start()
        wakes = [c.listen() for c in caches]
        try:
            while True:
                try:
                    await self.step()
                except UNREACHABLE as exc:
                    log.warning("iscsi: ConfigDB unreachable: %r", exc)
                except Exception as exc:
                    log.warning("iscsi: %r", exc)
                await any_set(wakes, CHECK)
        finally:
            for cache in caches:
                await cache.stop()

    def _mine(self) -> list[IscsiExport]:
        return [e for e in self.exports.values() if e.node == self.node]

    async def step(self) -> None:
        mine = self._mine()
        if mine:
            await asyncio.to_thread(self.tgt.ensure)
        await self._remove_stale({e.iqn for e in mine}, self.tgt.running() is not None)
        for export in mine:
            try:
                await self._serve(export)
            except Exception as exc:
                log.warning("iscsi: export of %s/%s: %s", export.pool, export.volume_name, exc)
                await self._report(export, "failed", str(exc)[:500])
            else:
                await self._report(export, "serving", None)
        if not mine and self.tgt.running() is not None:
            await asyncio.to_thread(self.tgt.stop)
            log.info("iscsi: no export left on this node, tgtd stopped")

    # -- one export ------------------------------------------------------------------------

    def _lun(self, volume_id: str) -> Path:
        return self.root / "luns" / volume_id

    def _daemon_marker(self, volume_id: str) -> str:
        return f"mountpoint={self._lun(volume_id)}"

    async def _serve(self, export: IscsiExport) -> None:
        entry = self.volumes.get(export.volume)
        pool_entry = self.pools.get(export.pool)
        if entry is None or pool_entry is None:
            raise RuntimeError("the volume or its pool is gone")
        volume, pool = entry.value, pool_entry.value
        driver = ArdfsPool(pool, self.state_dir, self.db)
        if volume.owner != self.node:
            log.info("iscsi: claiming %s/%s to export it", pool.name, volume.name)
            await driver.attach(volume, self.node)
        else:
            await driver.wait_owned(volume)
        await asyncio.to_thread(self._ensure_daemon, pool.name, volume.id)
        secret = await self.db.get(IscsiSecret, keys.iscsi_secret(export.volume))
        if secret is None:
            raise RuntimeError("its CHAP secret is missing")
        await asyncio.to_thread(self._ensure_target, export, secret.value.chap_secret)

    def _ensure_daemon(self, pool: str, volume_id: str) -> None:
        """The volume's NBD export as a FUSE file (the LUN's backing store)."""
        lun, marker = self._lun(volume_id), self._daemon_marker(volume_id)
        pidfile = lun.with_suffix(".pid")
        if read_pidfile(pidfile, marker) is not None and _mounted(lun):
            return
        if (pid := read_pidfile(pidfile, marker)) is not None:
            terminate(pid, marker, 30.0)
        if _mounted(lun):  # left by a daemon that died
            subprocess.run(["fusermount3", "-u", "-z", str(lun)], check=False, capture_output=True)
        lun.parent.mkdir(parents=True, exist_ok=True)
        lun.touch()
        node = {
            "driver": "nbd",
            "node-name": "volume",
            "server": {"type": "unix", "path": str(socket_path(self.state_dir, pool))},
            "export": volume_id,
            "reconnect-delay": 30,
        }
        pid = spawn_detached(
            [
                "qemu-storage-daemon",
                "--blockdev",
                json.dumps(node),
                "--export",
                f"type=fuse,id=lun,node-name=volume,writable=on,{marker}",
            ],
            lun.with_suffix(".log"),
            pidfile,
        )
        if not until_sync(lambda: _mounted(lun), START_TIMEOUT, 0.1):
            terminate(pid, marker, 10.0)
            tail = lun.with_suffix(".log").read_text(errors="replace")[-400:]
            raise RuntimeError(f"qemu-storage-daemon did not export the volume: {tail}")

    def _ensure_target(self, export: IscsiExport, secret: str) -> None:
        lun = self._lun(export.volume)
        wanted = {
            "iqn": export.iqn,
            "user": export.chap_user,
            "secret": hashlib.sha256(secret.encode()).hexdigest(),
            "initiators": sorted(export.initiators),
            "backing": str(lun),
            "daemon": (lun.with_suffix(".pid")).read_text().strip(),
        }
        state = self.root / "targets" / f"{export.volume}.json"
        targets = self.tgt.targets()
        if export.iqn in targets:
            try:
                if json.loads(state.read_text()) == wanted:
                    return
            except (OSError, ValueError):
                pass
            self._delete_target(targets[export.iqn], export.iqn)
            targets.pop(export.iqn)
        tid = min(set(range(1, len(targets) + 2)) - set(targets.values()))
        adm = self.tgt.adm
        adm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", export.iqn)
        try:
            adm("--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", str(LUN),
                "-b", str(lun), "--bsoflags", "sync")  # fmt: skip
            # The SCSI device id and serial from the volume: the same from any portal.
            serial = export.volume.replace("-", "")[:16]
            adm("--op", "update", "--mode", "logicalunit", "--tid", str(tid), "--lun", str(LUN),
                "--params", f"scsi_id=heron-{export.volume},scsi_sn={serial}")  # fmt: skip
            self._drop_account(export.chap_user)
            adm("--op", "new", "--mode", "account", "--user", export.chap_user,
                "--password", secret)  # fmt: skip
            adm("--op", "bind", "--mode", "account", "--tid", str(tid), "--user",
                export.chap_user)  # fmt: skip
            for initiator in export.initiators:
                adm("--op", "bind", "--mode", "target", "--tid", str(tid),
                    "--initiator-name", initiator)  # fmt: skip
        except Exception:
            self._delete_target(tid, export.iqn)
            raise
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(wanted))
        log.info("iscsi: target %s (tid %d) on %s", export.iqn, tid, self.tgt.portal)

    def _drop_account(self, user: str) -> None:
        accounts = self.tgt.adm("--op", "show", "--mode", "account")
        if user in (line.strip() for line in accounts.splitlines()):
            self.tgt.adm("--op", "delete", "--mode", "account", "--user", user)

    def _delete_target(self, tid: int, iqn: str) -> None:
        """Sessions are dropped (--force): an unexported LUN is no longer served."""
        self.tgt.adm("--op", "delete", "--mode", "target", "--tid", str(tid), "--force")
        log.info("iscsi: target %s (tid %d) removed", iqn, tid)

    async def _remove_stale(self, wanted: set[str], tgtd: bool) -> None:
        """Targets no export wants (when tgtd runs), then the storage daemons under them."""
        for iqn, tid in (await asyncio.to_thread(self.tgt.targets)).items() if tgtd else []:
            if iqn not in wanted:
                await asyncio.to_thread(self._delete_target, tid, iqn)
        keep = {e.volume for e in self._mine()}
        luns = self.root / "luns"
        for pidfile in luns.glob("*.pid") if luns.is_dir() else []:
            volume_id = pidfile.stem
            if volume_id in keep:
                continue
            marker = self._daemon_marker(volume_id)
            if (pid := read_pidfile(pidfile, marker)) is not None:
                await asyncio.to_thread(terminate, pid, marker, 30.0)
            for leftover in (
                pidfile,
                self._lun(volume_id),
                self.root / "targets" / f"{volume_id}.json",
            ):
                if leftover.exists() and not _mounted(leftover):
                    leftover.unlink()
            log.info("iscsi: volume %s no longer exported: its storage daemon stopped", volume_id)

    async def _report(self, export: IscsiExport, state: str, error: str | None) -> None:
        portal = self.tgt.portal if state == "serving" else None
        if (export.state, export.portal, export.error) == (state, portal, error):
            return

        def change(current: IscsiExport) -> IscsiExport:
            return current.model_copy(update={"state": state, "portal": portal, "error": error})

        with contextlib.suppress(LookupError):  # unexported meanwhile
            await self.db.update(IscsiExport, keys.iscsi_export(export.volume), change)
