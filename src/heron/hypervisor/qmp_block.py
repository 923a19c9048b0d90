"""Block devices over QMP: block nodes, mirror jobs, resizing, and QEMU's own NBD server.

Nodes are named by the caller (the command line names a VM's disks `disk0`, `disk1`, ...);
a block job's id is the caller's too, and QMP calls it "device" in its replies.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from heron.hypervisor.qmp_base import QMPCommands


@dataclass(frozen=True)
class BlockJob:
    """One entry of `query-block-jobs`."""

    id: str
    kind: str  # "mirror", "stream", "commit", "backup"
    length: int  # the work to do, in QEMU's unit (bytes for a mirror); may grow
    offset: int  # the work done, same unit
    # For a mirror: the target has caught up, and writes now go to both until the job ends.
    ready: bool
    status: str  # QMP's JobStatus: "running", "ready", "concluded", ...
    error: str = ""

    @classmethod
    def from_qmp(cls, reply: Mapping[str, Any]) -> "BlockJob":
        return cls(
            id=str(reply["device"]),
            kind=str(reply["type"]),
            length=int(reply["len"]),
            offset=int(reply["offset"]),
            ready=bool(reply.get("ready", False)),
            status=str(reply.get("status", "")),
            error=str(reply.get("error", "")),
        )


class BlockCommands(QMPCommands):
    async def blockdev_add(self, node_name: str, options: Mapping[str, Any]) -> None:
        """Add a block node named `node_name`, opened with `options` (QMP's BlockdevOptions
        without the name, e.g. what a pool driver's `protocol()` gives).

        Raises QMPCommandError when the name is taken ("Duplicate nodes with node-name=...")
        or the image cannot be opened; QMPSessionError.
        """
        await self.execute("blockdev-add", {"node-name": node_name, **options})

    async def blockdev_add_nbd(
        self,
        node_name: str,
        host: str,
        port: int | str,
        *,
        export: str,
        tls_creds: str | None = None,
        tls_hostname: str | None = None,
    ) -> None:
        """Add a block node that is the NBD export `export` of the server at host:port; over
        TLS with the `tls-creds-x509` object `tls_creds` (client endpoint), the server's
        certificate checked for `tls_hostname` (default: `host`).

        Raises QMPCommandError when the name is taken or the server cannot be reached or
        has no such export; QMPSessionError.
        """
        options: dict[str, Any] = {
            "driver": "nbd",
            "node-name": node_name,
            "export": export,
            "server": {"type": "inet", "host": host, "port": str(port)},
        }
        if tls_creds is not None:
            options["tls-creds"] = tls_creds
            if tls_hostname is not None:
                options["tls-hostname"] = tls_hostname
        await self.execute("blockdev-add", options)

    async def blockdev_reopen(self, options: list[Mapping[str, Any]]) -> None:
        """Reopen existing nodes with new options, all at once (e.g. give a format node a
        new file node); `options` are complete BlockdevOptions, each with its node-name.

        Raises QMPCommandError when a node does not exist or an option cannot change on a
        reopen; nothing changes then. QMPSessionError.
        """
        await self.execute("blockdev-reopen", {"options": [dict(o) for o in options]})

    async def blockdev_mirror(
        self,
        job_id: str,
        *,
        device: str,
        target: str,
        sync: str,
        copy_mode: str,
    ) -> None:
        """Start the job `job_id` copying node `device` into node `target`: `sync` "full"
        copies every block, "top" and "none" less. With `copy_mode` "write-blocking" a guest
        write completes only once the target has it too, so the copy converges however fast
        the guest writes; "background" (QEMU's default) copies dirty blocks later. Follow
        it with `query_block_jobs`; it never ends by itself once ready.

        Raises QMPCommandError when a node does not exist, the job id is taken, or the
        device is busy with another job; QMPSessionError.
        """
        await self.execute(
            "blockdev-mirror",
            {
                "job-id": job_id,
                "device": device,
                "target": target,
                "sync": sync,
                "copy-mode": copy_mode,
            },
        )

    async def query_block_jobs(self) -> list[BlockJob]:
        """The block jobs that exist; a job that failed or was cancelled is gone from it.

        Raises QMPSessionError; QEMU refuses no `query-block-jobs`.
        """
        return [BlockJob.from_qmp(job) for job in await self.execute("query-block-jobs")]

    async def block_job_cancel(self, job_id: str) -> None:
        """End the block job `job_id`. A mirror that is ready ends cleanly, its target
        holding every block (the guest goes on with its source); one not ready is abandoned
        halfway. Returns before the job is gone.

        Raises QMPCommandError when no such job exists ("Block job 'ID' not found", e.g. it
        has already ended); QMPSessionError.
        """
        await self.execute("block-job-cancel", {"device": job_id})

    async def block_resize(self, node_name: str, size: int) -> None:
        """Make the node `node_name` `size` bytes long; the guest sees its disk change.

        Raises QMPCommandError when there is no such node or its image cannot grow (NBD:
        "Cannot grow NBD nodes", unless reconnected to a grown export); QMPSessionError.
        """
        await self.execute("block_resize", {"node-name": node_name, "size": size})

    async def nbd_server_start(
        self, host: str, port: int | str, tls_creds: str | None = None
    ) -> None:
        """Start QEMU's NBD server on host:port; it serves the exports added later, only
        over TLS if `tls_creds` names a `tls-creds-x509` object (server endpoint).

        Raises QMPCommandError when one already runs ("NBD server already running") or the
        address cannot be bound; QMPSessionError.
        """
        arguments: dict[str, Any] = {
            "addr": {"type": "inet", "data": {"host": host, "port": str(port)}}
        }
        if tls_creds is not None:
            arguments["tls-creds"] = tls_creds
        await self.execute("nbd-server-start", arguments)

    async def nbd_server_stop(self) -> None:
        """Stop QEMU's NBD server and drop its exports.

        Raises QMPCommandError when none runs ("NBD server not running"); QMPSessionError.
        """
        await self.execute("nbd-server-stop")

    async def block_export_add_nbd(
        self, export_id: str, *, node_name: str, name: str, writable: bool
    ) -> None:
        """Export the node `node_name` on QEMU's NBD server as `name`.

        Raises QMPCommandError when no NBD server runs, the node does not exist, or the id
        or name is taken; QMPSessionError.
        """
        await self.execute(
            "block-export-add",
            {
                "type": "nbd",
                "id": export_id,
                "node-name": node_name,
                "name": name,
                "writable": writable,
            },
        )
