"""The hypervisor: QEMU driven directly over QMP, one process per VM."""
