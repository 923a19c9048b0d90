"""Storage pools behind one interface; volumes are files or devices QEMU opens."""
