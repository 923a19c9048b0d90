"""The NBD protocol: its numbers (`proto`, shared with heron-io's server) and a small client
(`client`) for reading QEMU's NBD exports. Nothing of Heron below it."""
