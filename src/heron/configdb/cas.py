"""Compare-and-swap: the Conflict a lost swap raises, and the retry of a read-decide-write.

Writers never lock (DESIGN.md, principle 8): each reads the records it decides from, writes
with their revisions as conditions, and when another writer got in between, reads again and
decides again. `retry` is that loop, once for all of Heron.
"""

from collections.abc import Awaitable, Callable
from typing import TypeVar

from heron.errors import ConfigDBError

T = TypeVar("T")

ATTEMPTS = 20  # rivals that keep winning this often mean something is wrong: say so


class Conflict(ConfigDBError):
    """A compare-and-swap failed: the key was changed, created or deleted by someone else."""


async def retry(attempt: Callable[[], Awaitable[T]], what: str, attempts: int = ATTEMPTS) -> T:
    """Run `attempt` (read, decide, write with revision conditions) until it raises no
    Conflict; after `attempts` losses, raise Conflict saying that `what` kept changing.
    Anything else `attempt` raises (the record is gone, the change is refused) ends it."""
    for _ in range(attempts):
        try:
            return await attempt()
        except Conflict:
            continue  # another writer got in between: read again
    raise Conflict(f"{what} kept changing under {attempts} attempts")
