"""ARDFS: Heron's distributed block storage for VM disks.

Virtual disks are made of 4 MiB blocks kept as chunks in chunk stores (directories on each
node's disks), placed by rendezvous hashing over failure domains, protected by replication or
single-parity erasure coding, and served to QEMU over NBD by one `heron-io` process per node.
"""
