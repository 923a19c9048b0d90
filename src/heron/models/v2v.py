"""V2V: what the guest-fix step found in an imported Linux guest and what it changed.

The import converts a VMware or Hyper-V VM's disks and then runs the guest fix
(heron.v2v.guestfix) so the guest boots on virtio: device names in fstab and the boot
loader's configuration become UUID=, the initramfs carries the virtio drivers, and the other
hypervisor's tools are removed. docs/v2v.md ("Guest fixes") says what is fixed and what is not.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

GuestFixKind = Literal["device-names", "initramfs", "package-removed", "boot-file", "selinux"]
InitramfsTool = Literal["update-initramfs", "dracut"]


class GuestFixChange(BaseModel):
    """One change made inside the guest."""

    model_config = ConfigDict(extra="forbid")

    kind: GuestFixKind
    # The file changed in the guest (a path on the filesystem it is on; "(partition /dev/sda1)"
    # names a filesystem the guest does not mount), or the package removed.
    path: str
    detail: str


class GuestFixReport(BaseModel):
    """What the guest fix found (distribution, kernels) and changed, with its warnings."""

    model_config = ConfigDict(extra="forbid")

    os_type: Literal["linux"] = "linux"
    distro: str = Field(description="libguestfs' name for the distribution, e.g. debian, rhel")
    product: str = Field(description="the distribution's own name and version")
    version: str = Field(description="major.minor")
    root: str = Field(description="the guest's root filesystem, as the fix's appliance names it")
    kernels: list[str] = Field(description="kernel versions installed in the guest")
    initramfs_tool: InitramfsTool | None
    boot_loaders: list[str] = Field(description="boot loader configuration files found")
    changes: list[GuestFixChange]
    warnings: list[str] = Field(description="what was not fixed or may still stop a boot")
    duration_seconds: float
