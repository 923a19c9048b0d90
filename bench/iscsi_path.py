"""iSCSI export path: what each hop between an initiator and heron-io costs.

One heron-io (one copy on one chunk store, on loopback), one 256 MiB volume, and the path of
agent/iscsi.py built by hand: qemu-storage-daemon's FUSE file of the volume's NBD export, tgtd
with that file as LUN 1. `qemu-img bench` (sequential 1 MiB requests, queue depth 8) writes
then reads through, in one round:

* nbd: heron-io's NBD socket directly (what a local QEMU gets);
* fuse: the FUSE file (O_DIRECT is not offered by the export; the page cache is dropped
  between write and read by reopening: `qemu-img bench` opens the file anew);
* iscsi: libiscsi to tgtd, the backing store opened O_SYNC as the agent opens it (every
  write acknowledged only after an NBD FLUSH);
* iscsi-wb: the same without O_SYNC (tgt's write cache: durable only at SYNCHRONIZE CACHE):
  what O_SYNC costs.

Run from the repository root: `.venv/bin/python -m bench.iscsi_path [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from heron.ardfs.client import io_cluster
from heron.ardfs.config import Scheme, VolumeSpec
from heron.util.ports import free_ports

MiB = 1024 * 1024
SIZE = 256 * MiB
IQN = "iqn.2026-12.org.heron:bench"


def bench(args: list[str], write: bool) -> float:
    """MB/s of 256 sequential 1 MiB requests at depth 8."""
    command = ["qemu-img", "bench", "-c", "256", "-s", "1M", "-d", "8", "-S", "1M"]
    command += (["-w"] if write else []) + args
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return SIZE / MiB / (time.monotonic() - started)


def adm(control: int, *args: str) -> None:
    subprocess.run(["tgtadm", "-C", str(control), "--lld", "iscsi", *args], check=True,
                   capture_output=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-iscsi-"))
    volume = VolumeSpec(name="lun", size=SIZE, scheme=Scheme(copies=1))
    results: dict[str, list[float]] = {}
    with io_cluster(base, 1, [volume]) as (io,):
        lun = base / "lun"
        lun.touch()
        node = {"driver": "nbd", "node-name": "v", "export": "lun",
                "server": {"type": "unix", "path": str(io.config.nbd_socket)}}  # fmt: skip
        daemon = subprocess.Popen(
            ["qemu-storage-daemon", "--blockdev", json.dumps(node), "--export",
             f"type=fuse,id=e,node-name=v,writable=on,mountpoint={lun}"],
        )  # fmt: skip
        [port] = free_ports(1)
        control = 1000 + port % 30000
        tgtd = subprocess.Popen(
            ["tgtd", "-f", "-C", str(control), "--iscsi", f"portal=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            show = ["tgtadm", "-C", str(control), "--op", "show", "--mode", "sys"]
            for _ in range(100):  # a benchmark's start-up, not a test's synchronisation
                mounted = str(lun) in Path("/proc/self/mounts").read_text()
                if mounted and subprocess.run(show, capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            for tid, flags in ((1, ["--bsoflags", "sync"]), (2, [])):
                adm(control, "--op", "new", "--mode", "target", "--tid", str(tid), "-T",
                    f"{IQN}{tid}")  # fmt: skip
                adm(control, "--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun",
                    "1", "-b", str(lun), *flags)  # fmt: skip
                adm(control, "--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL")

            def iscsi(tid: int) -> list[str]:
                return ["--image-opts", f"driver=iscsi,transport=tcp,portal=127.0.0.1:{port},"
                        f"target={IQN}{tid},lun=1"]  # fmt: skip

            targets = {
                "nbd": ["-f", "raw", io.uri("lun")],
                "fuse": ["-f", "raw", str(lun)],
                "iscsi": iscsi(1),
                "iscsi-wb": iscsi(2),
            }
            for _ in range(options.rounds):
                for name, args in targets.items():
                    results.setdefault(f"{name} write", []).append(bench(args, True))
                    results.setdefault(f"{name} read", []).append(bench(args, False))
        finally:
            tgtd.send_signal(2)
            tgtd.wait(30)
            daemon.terminate()
            daemon.wait(30)
    for name, values in results.items():
        print(f"{name:16} {statistics.median(values):8.1f} MB/s  (rounds: "
              f"{', '.join(f'{v:.0f}' for v in values)})")  # fmt: skip


if __name__ == "__main__":
    main()
