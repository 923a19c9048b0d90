"""V2V: VMs from other hypervisors, read (the scan) and imported.

The parsers are pure, text or bytes in and models out: vmx (VMware's VM description), vmdk
(its disk descriptors and sparse headers), ovf (OVF envelopes and OVA archives) and hyperv
(Hyper-V's exported configuration, VHD and VHDX headers). scan is the directory source's
driver: it walks a directory, reads the files, asks qemu-img, and returns a ScanReport
(heron.models.v2v). docs/v2v.md says what a scan reads and why a finding is a blocker.
guestfix makes an imported Linux guest boot on virtio, in libguestfs' appliance (appliance:
the kernel it boots on hosts without one).
"""
