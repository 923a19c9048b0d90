"""NICs over QMP: plug one into a running guest, pull it out, and its cable.

A NIC's netdev and device are named by `command.nic_ids` (the same names its command line
uses), and a plugged NIC goes where the command line would put it, so a VM started afterwards
or on the target of a migration has the very same devices.
"""

import abc
import asyncio
from typing import Any

from heron.hypervisor.qmp_base import QemuError, QMPCommands


class NetCommands(QMPCommands):
    @abc.abstractmethod
    async def pass_fd(self, name: str, fd: int) -> None:
        """Hand QEMU the open file `fd` under `name` (QMP `getfd`, the fd over SCM_RIGHTS).

        Raises QMPCommandError, QMPSessionError.
        """

    async def add_nic(
        self, netdev_id: str, device: dict[str, Any], tap_fd: int | None = None
    ) -> None:
        """Plug a NIC in: its netdev `netdev_id` (the tap `tap_fd`, which QEMU keeps, or
        user-mode NAT without one) and the device (`command.nic_device`'s properties). A NIC
        half plugged (the device refused) is taken out again.

        Raises QMPCommandError (no free slot, a name in use), QMPSessionError.
        """
        netdev: dict[str, Any] = {"type": "user", "id": netdev_id}
        if tap_fd is not None:
            name = f"fd-{netdev_id}"
            await self.pass_fd(name, tap_fd)
            netdev = {"type": "tap", "id": netdev_id, "fd": name, "vhost": False}
        await self.execute("netdev_add", netdev)
        try:
            await self.execute("device_add", device)
        except QemuError:
            await self.execute("netdev_del", {"id": netdev_id})
            raise

    async def remove_nic(self, netdev_id: str, device_id: str, timeout: float = 30.0) -> None:
        """Take a NIC out: ask the guest to release the device (PCI hot-unplug: the guest's
        OS must agree), wait until it is gone, then drop its netdev (closing the tap).

        Raises QemuError when the guest keeps the device past `timeout` (the NIC stays as it
        was, its netdev too); QMPCommandError, QMPSessionError.
        """
        if device_id in await self.peripherals():
            await self.execute("device_del", {"id": device_id})
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while device_id in await self.peripherals():
                if loop.time() > deadline:
                    raise QemuError(
                        f"the guest did not release NIC {device_id} within {timeout:.0f} s"
                    )
                await asyncio.sleep(0.2)
        await self.execute("netdev_del", {"id": netdev_id})

    async def set_link(self, netdev_id: str, up: bool) -> None:
        """Plug the NIC's cable in or pull it out (the guest sees its carrier change).

        Raises QMPCommandError (no such NIC), QMPSessionError.
        """
        await self.execute("set_link", {"name": netdev_id, "up": up})

    async def peripherals(self) -> set[str]:
        """The ids of the devices given on the command line or plugged in since.

        Raises QMPSessionError.
        """
        reply = await self.execute("qom-list", {"path": "/machine/peripheral"})
        return {str(p["name"]) for p in reply if str(p.get("type", "")).startswith("child<")}
