"""Warnings every source gives for the same reasons, worded once."""

from heron.models.v2v import ScannedVm

_VMXNET = {"vmxnet", "vmxnet2", "vmxnet3"}
# SCSI controllers QEMU does not emulate as the source did: the disks move to virtio-scsi.
_SCSI_KEPT = {"virtio-scsi", "virtio"}


def hardware_warnings(vm: ScannedVm) -> None:
    """The warnings that follow from the VM's firmware and guest family."""
    if vm.firmware == "uefi":
        vm.warn(
            "uefi-variables",
            "the UEFI variables (boot entries) are not carried over: the guest boots from its "
            "EFI system partition's default loader, or its boot entry is made again",
        )
    if vm.guest_os.family == "windows":
        vm.warn(
            "windows-drivers",
            "Windows boots on virtio only with the virtio-win drivers (the administrator's "
            "ISO, not in Debian); without them it is imported on SATA disks and e1000 NICs",
        )


def nic_model_warning(vm: ScannedVm, model: str | None, device: str) -> None:
    if model and model.lower() in _VMXNET:
        vm.warn(
            "nic-model",
            f"{model} has no KVM counterpart: the NIC becomes virtio-net (the guest sees a "
            "new NIC; settings bound to the old interface name need fixing) or e1000e",
            device,
        )


def controller_warning(vm: ScannedVm, model: str | None, device: str) -> None:
    """Once per SCSI controller whose model changes."""
    if model and model.lower() not in _SCSI_KEPT:
        vm.warn(
            "controller-model",
            f"the {model} SCSI controller becomes virtio-scsi (or SATA where the guest lacks "
            "virtio drivers)",
            device,
        )


def chain_warning(vm: ScannedVm, below: int, device: str) -> None:
    if below:
        vm.warn(
            "snapshot-chain",
            f"the disk has {below} image(s) below it (snapshots or a differencing chain): "
            "the current state is imported, the snapshots are not",
            device,
        )
