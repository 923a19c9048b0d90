"""The roots of Heron's error tree: one per package family, all under HeronError.

`except HeronError` catches every error Heron raises on purpose, and a family's root catches
that family's, without listing its classes. Each class keeps the builtin base callers rely on
(e.g. a ValueError stays one). StorageError is also importable from heron.storage.driver,
where pool drivers have always found it. Families whose root lives elsewhere:

* the API: heron.api.errors.ApiError, which carries its HTTP status;
* ARDFS: heron.ardfs.errors.ArdfsError, not a HeronError, because the data path imports
  nothing else from Heron;
* the CLI: heron.cli.client.CliError, for the same reason (it talks HTTP only).
"""


class HeronError(Exception):
    """Root of every error Heron raises on purpose."""


class ConfigDBError(HeronError):
    """The ConfigDB (etcd) refused or failed: a lost compare-and-swap, an etcd member."""


class HypervisorError(HeronError):
    """QEMU, its QMP socket or its accelerator failed."""


class StorageError(HeronError):
    """A pool operation failed or is not possible for this pool type; the message says why.
    Also the root of the errors of the tools pool drivers run (qemu-img)."""


class SchedulingError(HeronError):
    """No placement satisfies a VM's needs."""


class AgentError(HeronError):
    """A node agent's task or VM controller stopped an operation."""


class NetworkError(HeronError):
    """The kernel refused a network object a VM needs now (its tap); drivers that realise
    switches report problems as sentences instead."""


class V2VError(HeronError):
    """A V2V source could not be read: a description that does not parse, a disk that does
    not open. A scan turns these into a VM's blockers or the report's failures."""


class DRError(HeronError):
    """The disaster-recovery replica store refused or found damage: a point or chunk that is
    missing or corrupt, a writer or a garbage collection already running (heron.dr.errors)."""
