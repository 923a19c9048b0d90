"""The records heron-io is configured with: its node, the cluster's disks, the volumes.

For now heron-io reads them from a JSON file (and again on SIGHUP); the node agent will write
that file from the ConfigDB. The same records are meant to live in the ConfigDB as they are.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from heron.ardfs.checksum import SECTOR
from heron.ardfs.placement import Disk

DISK_ID = re.compile(r"^[A-Za-z0-9_.-]{1,16}$")


class DiskSpec(BaseModel):
    id: str  # unique in the cluster, at most 16 characters (it travels in every peer request)
    path: Path | None = None  # only meaningful on the disk's own node
    weight: float = Field(default=1.0, gt=0)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not DISK_ID.match(value):
            raise ValueError("1-16 letters, digits, '_', '.', '-'")
        return value


class NodeSpec(BaseModel):
    name: str
    site: str = "default"
    address: str  # host:port of its heron-io's peer (chunk server) listener
    disks: list[DiskSpec]

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address.rpartition(":")
        return host.strip("[]"), int(port)


class Scheme(BaseModel):
    """Replicated with `copies` copies, or erasure coded with `data` data shards + 1 parity."""

    kind: Literal["replicated", "ec"] = "replicated"
    copies: int = Field(default=2, ge=1, le=5)
    data: int = Field(default=2, ge=2, le=8)

    @property
    def width(self) -> int:
        """Disks a block group spans."""
        return self.copies if self.kind == "replicated" else self.data + 1

    def label(self) -> str:
        return f"rf{self.copies}" if self.kind == "replicated" else f"ec{self.data}+1"


class PlacedDisk(BaseModel):
    """A disk a volume's blocks are placed over, with what placement needs to know of it."""

    id: str
    node: str
    site: str = "default"
    weight: float = 1.0

    def disk(self) -> Disk:
        return Disk(self.id, self.node, self.site, self.weight)


class VolumeSpec(BaseModel):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    name: str
    size: int = Field(gt=0)
    scheme: Scheme = Scheme()
    # Bumped by whoever takes ownership (HA failover): chunk stores refuse older epochs.
    epoch: int = Field(default=1, ge=1)
    # The node whose heron-io writes the volume (where its VM runs). It keeps the degraded
    # log and repairs; other nodes' scrubbers report corrupt copies to it. None: unattached,
    # any node may repair.
    owner: str | None = None
    # A node about to become the owner (the target of a live migration): its heron-io may
    # export the volume already, for the incoming QEMU to connect; it writes nothing before
    # the handover, when the owner becomes this node with the next epoch.
    standby: str | None = None
    # The disks the volume's blocks are placed over, fixed when it is created, so that a disk
    # joining the cluster later does not move (or hide) existing blocks before a rebalance
    # copies them. None: heron-io pins the cluster's disks when it first serves the volume.
    placement: list[PlacedDisk] | None = None
    # Where the volume is being moved (a rebalance, e.g. off a disk that died): its owner
    # gives each block group copies or shards there too, written with the others and copied
    # from them; once all are, `placement` becomes this list.
    moving_to: list[PlacedDisk] | None = None
    # Snapshots (layered.py): the ids of the layers the volume reads, oldest first; the last
    # is the one written. Empty: the volume is one layer, `id`. Every layer is stored like a
    # volume of its own (its chunks named by its id), placed and protected like this one.
    layers: list[str] = []
    # Frozen layers of this volume's snapshots that it does not read now (after a revert to
    # an older one): kept redundant, rebuilt and moved, never exported.
    kept: list[str] = []
    # Layers (of a deleted snapshot) to copy into the layers above them where those lack a
    # block; the owner's status lists them under `merged` when done, and then they go.
    merges: dict[str, list[str]] = {}

    @property
    def chain(self) -> list[str]:
        """The layers read, oldest first; the last is written."""
        return self.layers or [self.id]

    @field_validator("layers", "kept")
    @classmethod
    def _layer_ids(cls, value: list[str]) -> list[str]:
        found = [uuid.UUID(hex=v).hex for v in value]
        if len(set(found)) != len(found):
            raise ValueError("a layer is named twice")
        return found

    @model_validator(mode="after")
    def _merges_known(self) -> VolumeSpec:
        known = set(self.chain) | set(self.kept)
        for layer, into in self.merges.items():
            if layer not in known or not set(into) <= known or layer in into:
                raise ValueError(f"merges: {layer} into {into}: not layers of this volume")
            if layer == self.chain[-1]:
                raise ValueError("merges: the top layer is written, it cannot be merged")
        return self

    @model_validator(mode="after")
    def _wide_enough(self) -> VolumeSpec:
        for field in ("placement", "moving_to"):
            disks = getattr(self, field)
            if disks is not None and len({d.id for d in disks}) < self.scheme.width:
                raise ValueError(f"{field}: {self.scheme.label()} needs {self.scheme.width} disks")
        return self

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return uuid.UUID(hex=value).hex

    @field_validator("size")
    @classmethod
    def _size(cls, value: int) -> int:
        if value % SECTOR:
            raise ValueError(f"must be a multiple of {SECTOR}")
        return value


class IoConfig(BaseModel):
    node: str  # this heron-io's node, one of `nodes`
    nbd_socket: Path
    nbd_tcp: str | None = None  # host:port to serve NBD on TCP as well
    state_dir: Path  # degraded-block logs
    # The cluster's secret key, in hex (peerauth.py): every peer connection proves both ends
    # hold it. Mode 0600 or stricter, or heron-io refuses to start.
    peer_key_file: Path
    # TLS on peer connections after the key (peertls.py): this node's private key, its
    # certificate chain and the cluster CA, PEM files, re-read when they change. None: plain.
    peer_tls_key: Path | None = None
    peer_tls_cert: Path | None = None
    peer_tls_ca: Path | None = None
    # "prefer": TLS with every peer that can, the clear with one that cannot (an older
    # release); "require": no peer without TLS. Applied by SIGHUP to new connections.
    peer_tls: Literal["prefer", "require"] = "prefer"
    nodes: list[NodeSpec]
    volumes: list[VolumeSpec] = []
    # A peer with requests in flight and no reply for this long is treated as down.
    peer_timeout_s: float = Field(default=30, gt=0)
    rebuild_mb_s: float = Field(default=400, gt=0)  # rate limit of rebuilding stale copies
    rebuild_parallel: int = Field(default=4, ge=1)  # chunks rebuilt at once
    scrub_mb_s: float = Field(default=50, ge=0)  # 0: no scrubbing
    scrub_pause_s: float = Field(default=3600, ge=0)  # between two passes over the disks
    # After a move, how long reads begun on the old placement get before its leftovers go.
    leftover_delay_s: float = Field(default=10, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> IoConfig:
        names = [n.name for n in self.nodes]
        if self.node not in names:
            raise ValueError(f"node {self.node!r} is not among the nodes")
        disks = [d.id for n in self.nodes for d in n.disks]
        if len(set(disks)) != len(disks):
            raise ValueError("disk ids must be unique in the cluster")
        if len({v.name for v in self.volumes}) != len(self.volumes):
            raise ValueError("volume names must be unique")
        for volume in self.volumes:
            if volume.scheme.width > len(disks):
                raise ValueError(f"volume {volume.name}: {volume.scheme.label()} needs more disks")
        return self

    @property
    def tls_files(self) -> tuple[Path, Path, Path] | None:
        """(key, certificate chain, CA) for peer TLS, when all three are given."""
        if self.peer_tls_key and self.peer_tls_cert and self.peer_tls_ca:
            return self.peer_tls_key, self.peer_tls_cert, self.peer_tls_ca
        return None

    @property
    def me(self) -> NodeSpec:
        return next(n for n in self.nodes if n.name == self.node)

    def placement_disks(self) -> list[Disk]:
        return [Disk(d.id, n.name, n.site, d.weight) for n in self.nodes for d in n.disks]

    @classmethod
    def load(cls, path: Path) -> IoConfig:
        return cls.model_validate_json(path.read_text())

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)
