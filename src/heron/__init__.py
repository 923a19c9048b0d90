"""Heron: a hyperconverged virtualization platform (KVM/QEMU clusters on etcd)."""

__version__ = "0.1.0"
