"""Hardware plugged into a running guest over QMP: vCPUs, memory (DIMMs), disks, and the
I/O limits of a disk.

Names follow `command`: a disk's format node is `disk{i}` and its device `disk{i}-dev`, a
DIMM `dimm{i}` over the memory backend `dimm{i}-mem`; so a QEMU started afterwards from the
running spec (the target of a live migration) has the very same devices.
"""

import asyncio
from collections.abc import Mapping
from typing import Any

from heron.hypervisor.qmp_base import QemuError, QMPCommandError, QMPCommands
from heron.models.vm import DiskQoS

MIB = 1024 * 1024


class HotplugCommands(QMPCommands):
    async def vcpus(self) -> int:
        """How many vCPUs the guest has now.

        Raises QMPSessionError.
        """
        return sum(1 for cpu in await self.execute("query-hotpluggable-cpus") if "qom-path" in cpu)

    async def add_vcpus(self, count: int) -> list[dict[str, int]]:
        """Plug vCPUs in until the guest has `count` (the guest's OS still has to bring them
        online); returns where each added one sits (its socket-id, core-id, thread-id: the
        device id is `command.vcpu_id` of it). Safe to repeat.

        Raises QemuError when `count` is more than QEMU was started to allow (maxcpus);
        QMPCommandError, QMPSessionError.
        """
        cpus = await self.execute("query-hotpluggable-cpus")
        present = sum(1 for cpu in cpus if "qom-path" in cpu)
        free = [cpu for cpu in cpus if "qom-path" not in cpu]
        # QEMU lists them highest first; plug in the order the guest numbers them.
        free.sort(key=lambda cpu: tuple(sorted(cpu["props"].items())))
        if count - present > len(free):
            raise QemuError(f"QEMU can take {present + len(free)} vCPUs, not {count}")
        added = []
        for cpu in free[: max(0, count - present)]:
            props = {k: int(v) for k, v in cpu["props"].items() if k != "node-id"}
            ident = "cpu" + "-".join(f"{props[k]}" for k in sorted(props))
            await self.execute("device_add", {"driver": cpu["type"], "id": ident, **props})
            added.append(props)
        return added

    async def add_dimm(self, dimm_id: str, size_mib: int) -> None:
        """Plug a DIMM of `size_mib` in (named `dimm_id`, over the backend `dimm_id`-mem).
        A backend left from an earlier attempt is used again; a DIMM that exists already is
        left as it is.

        Raises QMPCommandError (no free slot, more than maxmem), QMPSessionError.
        """
        if dimm_id in await self._peripherals():
            return
        objects = {str(o["name"]) for o in await self.execute("qom-list", {"path": "/objects"})}
        backend = f"{dimm_id}-mem"
        if backend not in objects:
            await self.execute(
                "object-add",
                {"qom-type": "memory-backend-ram", "id": backend, "size": size_mib * MIB},
            )
        try:
            await self.execute(
                "device_add", {"driver": "pc-dimm", "id": dimm_id, "memdev": backend}
            )
        except QemuError:
            await self.execute("object-del", {"id": backend})
            raise

    async def add_disk(self, node: dict[str, Any], device: Mapping[str, str]) -> None:
        """Plug a disk in: its block node (`command.format_node`'s options) and its device.
        A node or device already there (a repeat) is kept; a half plugged disk (the device
        refused) loses its node again.

        Raises QMPCommandError (no such slot, the image cannot be opened), QMPSessionError.
        """
        if device["id"] in await self._peripherals():
            return
        names = {str(n.get("node-name")) for n in await self.execute("query-named-block-nodes")}
        if node["node-name"] not in names:
            await self.execute("blockdev-add", node)
        try:
            await self.execute("device_add", dict(device))
        except QemuError:
            await self.execute("blockdev-del", {"node-name": node["node-name"]})
            raise

    async def remove_disk(self, node_name: str, device_id: str, timeout: float = 30.0) -> None:
        """Take a disk out: ask the guest to release its device (it must agree), wait until
        it is gone, then close its block node (the image). Safe to repeat.

        Raises QemuError when the guest keeps the device past `timeout` (the disk stays);
        QMPCommandError, QMPSessionError.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if device_id in await self._peripherals():
            await self.execute("device_del", {"id": device_id})
            while device_id in await self._peripherals():
                if loop.time() > deadline:
                    raise QemuError(
                        f"the guest did not release disk {device_id} within {timeout:.0f} s"
                    )
                await asyncio.sleep(0.2)
        while True:
            names = {str(n.get("node-name")) for n in await self.execute("query-named-block-nodes")}
            if node_name not in names:
                return
            try:
                await self.execute("blockdev-del", {"node-name": node_name})
                return
            except QMPCommandError as exc:
                # The device leaves the tree before QEMU lets go of its block backend (it
                # finishes with DEVICE_DELETED): "Node disk1 is in use" for a moment.
                if "in use" not in exc.desc or loop.time() > deadline:
                    raise
            await asyncio.sleep(0.2)

    async def set_disk_qos(self, device_id: str, group: str, qos: DiskQoS) -> None:
        """Give the device `device_id` (the qdev id or path holding the disk's block backend:
        `command.disk_backend`) the limits `qos` (none: unthrottled), in the throttle group
        `group` of its own; takes effect at once.

        Raises QMPCommandError (no such device), QMPSessionError.
        """
        limits = {
            "id": device_id,
            "iops": qos.iops or 0,
            "iops_rd": 0,
            "iops_wr": 0,
            "bps": (qos.mbps or 0) * MIB,
            "bps_rd": 0,
            "bps_wr": 0,
        }
        if qos.iops_burst:
            limits["iops_max"] = qos.iops_burst
        if qos.mbps_burst:
            limits["bps_max"] = qos.mbps_burst * MIB
        if qos.iops or qos.mbps:
            limits["group"] = group
        await self.execute("block_set_io_throttle", limits)

    async def _peripherals(self) -> set[str]:
        reply = await self.execute("qom-list", {"path": "/machine/peripheral"})
        return {str(p["name"]) for p in reply if str(p.get("type", "")).startswith("child<")}
