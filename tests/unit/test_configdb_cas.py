"""heron.configdb.cas.retry: the one read-decide-write loop that survives rival writers."""

import pytest

from heron.configdb import Conflict, cas
from heron.errors import ConfigDBError


class Rivals:
    """An attempt that loses the swap to a rival `losses` times, then wins."""

    def __init__(self, losses: int):
        self.losses = losses
        self.attempts = 0

    async def __call__(self) -> str:
        self.attempts += 1
        if self.attempts <= self.losses:
            raise Conflict("changed under us")
        return f"won on attempt {self.attempts}"


async def test_a_lost_swap_is_read_and_decided_again() -> None:
    attempt = Rivals(losses=3)
    assert await cas.retry(attempt, "the record") == "won on attempt 4"


async def test_a_record_that_keeps_changing_is_a_conflict_that_says_which() -> None:
    attempt = Rivals(losses=1000)
    with pytest.raises(Conflict, match="node settings kept changing under 5 attempts"):
        await cas.retry(attempt, "node settings", attempts=5)
    assert attempt.attempts == 5


async def test_other_errors_end_the_retry_at_once() -> None:
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("gone")

    with pytest.raises(KeyError):
        await cas.retry(refused, "the record")
    assert calls == 1


def test_conflict_is_a_configdb_error_and_still_importable_from_the_store() -> None:
    from heron.configdb.store import Conflict as FromStore

    assert FromStore is Conflict
    assert issubclass(Conflict, ConfigDBError)
