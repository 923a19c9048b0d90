"""Typed access to the ConfigDB (etcd): records, compare-and-swap, watches, leases, election."""

from heron.configdb.store import (
    UNREACHABLE,
    ConfigDB,
    Conflict,
    Entry,
    Txn,
    WatchEvent,
)

__all__ = ["UNREACHABLE", "ConfigDB", "Conflict", "Entry", "Txn", "WatchEvent"]
