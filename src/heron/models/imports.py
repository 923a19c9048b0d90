"""V2V imports: the sources VMs are imported from, their last scan, and the import requests.

A source is a place a node reads VMs from: a directory on one node (a copied datastore, an
export), an NFS export (a VMware or Hyper-V datastore) that the importing node mounts
read-only, or an ESXi host or vCenter read over its vSphere API (inventory over SOAP, disks
over the datastore's HTTPS file access), whose certificate is pinned by its SHA-256
fingerprint and whose password is write-only (the API says only whether one is set).
A scan (models/v2v.py) lists what it holds; an import makes a Heron VM of a scanned VM: its
disks converted into a pool, its NICs mapped to Heron networks, its guest fixed to boot on
virtio. Each import is a `v2v.import` task, queued on its node: at most
`ImportSettings.parallel` run at once there, the others wait in the order they were asked.
"""

import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from heron.models.common import Name, Record
from heron.models.v2v import ScanReport

SourceType = Literal["directory", "nfs", "vsphere"]
GuestFixMode = Literal["auto", "none"]
GuestFamily = Literal["linux", "windows", "other"]
# A path as a node's kernel takes it: absolute, no NUL (parent steps: `_fits_type`).
ABSOLUTE_PATH = r"^/[^\x00]*$"
# A SHA-256 fingerprint as Heron keeps it: 64 lower-case hex digits, no colons.
FINGERPRINT = r"^[0-9a-f]{64}$"
HOST = r"^[A-Za-z0-9.:\[\]-]+$"


class ImportSourceCreate(BaseModel):
    name: Name
    type: SourceType
    path: str | None = Field(
        default=None,
        pattern=ABSOLUTE_PATH,
        max_length=4096,
        description="directory: the folder on `node`; nfs: the exported path on `server`",
    )
    node: Name | None = Field(
        default=None,
        description="directory: the node that holds the folder; nfs: the node that imports "
        "(none: the one the VM is placed on)",
    )
    server: str | None = Field(default=None, pattern=HOST, description="nfs: the server")
    host: str | None = Field(
        default=None, pattern=HOST, max_length=253, description="vsphere: the ESXi host or vCenter"
    )
    port: int = Field(default=443, ge=1, le=65535, description="vsphere: its HTTPS port")
    user: str | None = Field(
        default=None, min_length=1, max_length=256, description="vsphere: the user to log in as"
    )
    password: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="vsphere: write-only; the API shows only whether one is set",
    )
    fingerprint: str | None = Field(
        default=None,
        description="vsphere: the SHA-256 fingerprint of the server's certificate (hex, colons "
        "or not); none: the certificate the server shows when the source is added is pinned "
        "(and returned, to be compared). A server whose certificate changes is refused",
    )

    @model_validator(mode="after")
    def _fits_type(self) -> "ImportSourceCreate":
        if self.type == "vsphere":
            return self._fits_vsphere()
        for name in ("host", "user", "password", "fingerprint"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name}: only a vsphere source has one")
        if self.path is None:
            raise ValueError(f"path: a {self.type} source needs its path")
        if ".." in self.path.split("/"):
            raise ValueError("path: give it without '..' steps")
        if self.type == "directory" and self.node is None:
            raise ValueError("a directory source needs the node that holds it (node)")
        if self.type == "directory" and self.server is not None:
            raise ValueError("a directory source has no server")
        if self.type == "nfs" and self.server is None:
            raise ValueError("an nfs source needs its server")
        return self

    def _fits_vsphere(self) -> "ImportSourceCreate":
        for name in ("path", "server", "node"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name}: a vsphere source has none (it is read over its API)")
        for name in ("host", "user", "password"):
            if getattr(self, name) is None:
                raise ValueError(f"{name}: a vsphere source needs it")
        return self

    @field_validator("fingerprint")
    @classmethod
    def _digits(cls, value: str | None) -> str | None:
        """A fingerprint as OpenSSL prints it (AB:CD:...) or as bare digits: kept as bare
        lower-case digits."""
        if value is None:
            return None
        digits = value.removeprefix("sha256:").replace(":", "").lower()
        if not re.fullmatch(FINGERPRINT, digits):
            raise ValueError("give 64 hex digits (in pairs with colons or not)")
        return digits


class ImportSource(ImportSourceCreate, Record):
    created_at: float
    created_by: str


class ImportSourceView(ImportSource):
    """A source as the API shows it: its password replaced by whether one is set."""

    password: Literal["set"] | None = Field(
        default=None, description="vsphere: 'set' when a password is stored (never shown)"
    )

    @classmethod
    def of(cls, source: ImportSource) -> "ImportSourceView":
        data = source.model_dump()
        data["password"] = "set" if source.password else None
        return cls.model_validate(data)


class ScanResult(Record):
    """A source's last scan: what was found, where and when (the scan task's result)."""

    source: Name
    node: Name = Field(description="the node that read it")
    scanned_at: float
    report: ScanReport


class ImportItem(BaseModel):
    vm: str = Field(min_length=1, description="the scanned VM's `path` (its .vmx, .ovf, ...)")
    source_name: str | None = Field(
        default=None, description="its name in the source, when one file describes several"
    )
    name: Name | None = Field(default=None, description="its name in Heron; from its own name")
    vcpus: int | None = Field(default=None, ge=1, le=256, description="none: as scanned")
    memory_mib: int | None = Field(
        default=None, ge=16, le=4 * 1024 * 1024, description="none: as scanned"
    )


class WarmOptions(BaseModel):
    """Warm migration (vsphere): the disks are copied while the source VM runs, then only the
    blocks changed since the round before, until a round is small; then the cutover stops the
    source VM and copies the last changes. The VM is off only for the cutover."""

    interval_seconds: int = Field(
        default=300, ge=1, le=86400, description="the wait between two rounds of changes"
    )
    small_enough_mib: int = Field(
        default=64,
        ge=0,
        le=1024 * 1024,
        description="cut over once a round copies at most this much",
    )
    max_rounds: int = Field(
        default=8, ge=1, le=100, description="cut over after this many rounds at the latest"
    )


class ImportRequest(BaseModel):
    source: Name
    vms: list[ImportItem] = Field(min_length=1, max_length=64)
    pool: Name = Field(description="the pool the disks are converted into")
    networks: dict[str, Name] = Field(
        default_factory=dict,
        description="source network → Heron network ('none': not connected); every network "
        "of the VMs' NICs must be mapped",
    )
    keep_macs: bool = Field(default=True, description="keep the NICs' MAC addresses")
    power_off: bool = Field(
        default=False,
        description="vsphere: power off a source VM that runs (otherwise its import is "
        "refused: a running VM's disks change under the copy)",
    )
    warm: WarmOptions | None = Field(
        default=None,
        description="vsphere: copy a running VM warm, stopping it only for the cutover "
        "(changed-block tracking is turned on for it); none: cold",
    )
    guest_fix: GuestFixMode = Field(
        default="auto",
        description="auto: fix a Linux guest to boot on virtio (drivers, device names, "
        "VMware tools); none: import as is on the buses the VM had",
    )
    start: bool = Field(default=False, description="start each VM once imported")
    node: Name | None = Field(
        default=None, description="where the VMs go (a directory source: its node)"
    )
    dry_run: bool = Field(default=False, description="check and plan only: nothing is made")


class ImportedVm(BaseModel):
    vm: str = Field(description="the new VM's id")
    name: Name
    node: Name
    task: str = Field(description="its v2v.import task; a dry run: empty")
    disks: list[str] = Field(description="the volumes its disks are converted into")
    warnings: list[str] = Field(default_factory=list, description="what changes on the way")


class ImportDisk(BaseModel):
    volume: str = Field(description="id of the volume it is converted into")
    source: str = Field(description="what qemu-img reads: a file, or a json: name (OVA)")
    format: str | None = Field(description="-f for a file (never guessed); none: in the name")
    chain: list[str] = Field(
        default_factory=list,
        description="a differencing VHD or VHDX: the images below it, nearest first, which "
        "the import merges (qemu-img does not follow their parents)",
    )


class ImportSettings(Record):
    parallel: int = Field(
        default=2,
        ge=1,
        le=16,
        description="imports that run at once on each node; the others wait in their order",
    )
