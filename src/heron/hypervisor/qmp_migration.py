"""Live migration over QMP: capabilities and parameters, sending, receiving, following.

Both sides are the same QEMU program: the target is started with `-incoming defer` and told
where to listen (`migrate_incoming`), the source is told where to send (`migrate`) and then
asked how far it got (`outgoing_migration`) until it says completed, failed or cancelled.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from heron.hypervisor.qmp_base import QMPCommands

# Some of QMP's MigrationStatus values (others: setup, active, device, failed, cancelled...).
NONE = "none"
PRE_SWITCHOVER = "pre-switchover"
COMPLETED = "completed"


@dataclass(frozen=True)
class MigrationInfo:
    """What `query-migrate` says about the migration this QEMU sends."""

    status: str = NONE
    # The guest's pause at the switch, known once completed.
    downtime_ms: int | None = None
    ram_total: int = 0  # bytes
    ram_transferred: int = 0  # bytes
    error: str = ""  # QEMU's reason, when failed

    @classmethod
    def from_qmp(cls, reply: Mapping[str, Any]) -> "MigrationInfo":
        """Read a `query-migrate` reply. A QEMU that was itself migrated in says "completed"
        about that incoming one, without transfer figures, until it sends one: that is no
        migration of its own, so its status is "none" here; so is QEMU's empty reply when it
        never migrated at all."""
        status = str(reply.get("status", NONE))
        if status == COMPLETED and "ram" not in reply:
            return cls()
        ram = reply.get("ram") or {}
        downtime = reply.get("downtime")
        return cls(
            status=status,
            downtime_ms=int(downtime) if downtime is not None else None,
            ram_total=int(ram.get("total") or 0),
            ram_transferred=int(ram.get("transferred") or 0),
            error=str(reply.get("error-desc", "")),
        )


class MigrationCommands(QMPCommands):
    async def migrate_set_capabilities(self, capabilities: Mapping[str, bool]) -> None:
        """Turn migration capabilities on or off, by QMP name ("events", "auto-converge",
        "pause-before-switchover", ...); the others keep their state.

        Raises QMPCommandError for a name this QEMU does not know, or while a migration is in
        progress ("There's a migration process in progress"); QMPSessionError.
        """
        await self.execute(
            "migrate-set-capabilities",
            {
                "capabilities": [
                    {"capability": name, "state": state} for name, state in capabilities.items()
                ]
            },
        )

    async def migrate_set_parameters(
        self,
        *,
        downtime_limit_ms: int | None = None,
        max_bandwidth: int | None = None,
        tls_creds: str | None = None,
        tls_hostname: str | None = None,
    ) -> None:
        """Set the longest pause QEMU may take for the switch, and the transfer's bandwidth
        cap in bytes per second; a parameter left out keeps its value. `tls_creds` names a
        `tls-creds-x509` object (`tls_creds_add`): the migration stream then goes over TLS
        ("" turns TLS off again); `tls_hostname` is the name the target's certificate must
        carry (by default the host of the migration URI).

        Raises QMPCommandError for a value out of QEMU's range (the downtime limit is at most
        2000 s); QMPSessionError.
        """
        parameters: dict[str, Any] = {}
        if downtime_limit_ms is not None:
            parameters["downtime-limit"] = downtime_limit_ms
        if max_bandwidth is not None:
            parameters["max-bandwidth"] = max_bandwidth
        if tls_creds is not None:
            parameters["tls-creds"] = tls_creds
        if tls_hostname is not None:
            parameters["tls-hostname"] = tls_hostname
        await self.execute("migrate-set-parameters", parameters)

    async def migration_parameters(self) -> dict[str, Any]:
        """QEMU's current migration parameters (`query-migrate-parameters`), by QMP name:
        "tls-creds" is "" while the stream is plain.

        Raises QMPSessionError.
        """
        return dict(await self.execute("query-migrate-parameters"))

    async def tls_creds_add(self, object_id: str, directory: str, *, server: bool) -> None:
        """Create a `tls-creds-x509` object from the files in `directory`: ca-cert.pem, and
        server-cert.pem/server-key.pem (`server`) or client-cert.pem/client-key.pem. QEMU reads
        them now, once: replacing the files later changes nothing for this object. A server
        asks its clients for a certificate of the same CA (verify-peer); a client checks the
        server's.

        Raises QMPCommandError when the id is taken or a file is missing or unreadable;
        QMPSessionError.
        """
        await self.execute(
            "object-add",
            {
                "qom-type": "tls-creds-x509",
                "id": object_id,
                "dir": directory,
                "endpoint": "server" if server else "client",
                "verify-peer": True,
            },
        )

    async def object_del(self, object_id: str) -> None:
        """Remove a QOM object made by `object-add`.

        Raises QMPCommandError when there is none by that id or it is still in use;
        QMPSessionError.
        """
        await self.execute("object-del", {"id": object_id})

    async def migrate(self, uri: str) -> None:
        """Start sending the guest to `uri` ("tcp:HOST:PORT") where a target listens; returns
        at once, follow it with `outgoing_migration`.

        Raises QMPCommandError when a migration already runs or a device blocks migration;
        QMPSessionError. A target that cannot be reached is no refusal: the migration fails
        later, and `outgoing_migration` says so.
        """
        await self.execute("migrate", {"uri": uri})

    async def outgoing_migration(self) -> MigrationInfo:
        """How far the migration this QEMU sends has got (see `MigrationInfo.from_qmp`).

        Raises QMPSessionError; QEMU refuses no `query-migrate`.
        """
        return MigrationInfo.from_qmp(await self.execute("query-migrate"))

    async def migrate_continue(self, state: str = PRE_SWITCHOVER) -> None:
        """Let a migration paused in `state` go on (with the "pause-before-switchover"
        capability QEMU waits in "pre-switchover", the guest stopped, for this).

        Raises QMPCommandError when the migration is not in `state` ("Migration not in
        expected state: ...", e.g. it already went on); QMPSessionError.
        """
        await self.execute("migrate-continue", {"state": state})

    async def migrate_cancel(self) -> None:
        """Cancel the outgoing migration; the guest keeps running here. A no-op when none
        runs: QEMU does not refuse it.

        Raises QMPSessionError.
        """
        await self.execute("migrate_cancel")

    async def migrate_incoming(self, uri: str) -> None:
        """Listen on `uri` ("tcp:HOST:PORT") for the guest's state; this QEMU must have been
        started with `-incoming defer`.

        Raises QMPCommandError when it was not, when it already listens ("The incoming
        migration has already been started"), or when the address cannot be bound;
        QMPSessionError.
        """
        await self.execute("migrate-incoming", {"uri": uri})
