"""heron.util.wait: the one poll-until-deadline loop (async and blocking)."""

import time

import pytest

from heron.util.proc import wait_until
from heron.util.wait import until, until_sync


class Countdown:
    """A condition that comes true on its `after`-th look, and counts the looks."""

    def __init__(self, after: int, value: object = "ready"):
        self.after = after
        self.value = value
        self.looks = 0

    def __call__(self) -> object:
        self.looks += 1
        return self.value if self.looks >= self.after else None

    async def look(self) -> object:
        return self()


async def test_until_returns_the_first_truthy_result() -> None:
    condition = Countdown(after=3, value={"state": "done"})
    assert await until(condition.look, timeout=10, interval=0.001) == {"state": "done"}
    assert condition.looks == 3


async def test_until_gives_none_when_time_runs_out_after_a_last_look_at_the_deadline() -> None:
    condition = Countdown(after=1_000_000)
    started = time.monotonic()
    # An interval far beyond the timeout: the wait still ends at the deadline, not after it.
    assert await until(condition.look, timeout=0.05, interval=60) is None
    assert time.monotonic() - started < 5
    assert condition.looks == 2  # at once, then at the deadline


async def test_until_lets_the_checks_exception_through() -> None:
    async def broken() -> bool:
        raise LookupError("the record vanished")

    with pytest.raises(LookupError, match="vanished"):
        await until(broken, timeout=10)


def test_until_sync_behaves_the_same() -> None:
    assert until_sync(Countdown(after=2), timeout=10, interval=0.001) == "ready"
    condition = Countdown(after=1_000_000)
    assert until_sync(condition, timeout=0.05, interval=60) is None
    assert condition.looks == 2


def test_wait_until_still_answers_with_a_bool() -> None:
    assert wait_until(lambda: True, timeout=1) is True
    assert wait_until(lambda: False, timeout=0.05, interval=0.01) is False
