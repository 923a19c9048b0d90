"""What every group of QMP commands stands on: the error tree and the one hook that sends.

The groups (run control in `qemu`, migration in `qmp_migration`, block devices in
`qmp_block`) only build arguments and read replies; sending is `QMPCommands.execute`, which
`QemuVM` implements over its QMP socket. So the QMP knowledge is testable against any
`execute`, and callers catch one error tree, as with the qemu.qmp library underneath:

    QemuError            anything that went wrong driving QEMU (also: it did not start)
    ├── QMPSessionError  QEMU did not answer: no socket, connection lost, no reply in time
    └── QMPCommandError  QEMU answered, and refused the command
"""

import abc
from typing import Any

from heron.errors import HypervisorError


class QemuError(HypervisorError):
    """Driving QEMU failed: it did not start, could not be reached, or refused a command."""


class QMPSessionError(QemuError):
    """QEMU did not answer: its QMP socket is absent or refuses connections, the connection
    broke, or no reply came in time. The command may or may not have taken effect."""


class QMPCommandError(QemuError):
    """QEMU received the command and refused it; nothing of it took effect.

    `error_class` is QMP's class: nearly always "GenericError", sometimes "DeviceNotFound",
    "DeviceNotActive" or "CommandNotFound" (an older QEMU). `desc` is QEMU's own sentence,
    which is all that tells most refusals apart.
    """

    def __init__(self, command: str, error_class: str, desc: str):
        super().__init__(f"{command}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class QMPCommands(abc.ABC):
    """Base of the command groups: each method sends through `execute`."""

    @abc.abstractmethod
    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Send one QMP command; returns the "return" member of QEMU's reply.

        Raises QMPCommandError when QEMU refuses the command, QMPSessionError when it does
        not answer.
        """
