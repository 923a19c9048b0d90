"""herond's start waits for an unreachable ConfigDB instead of exiting (found by the chaos
test: an agent restarted while its node was cut off exited at its first write)."""

import aetcd.exceptions
import pytest

from heron.herond import patiently


async def test_a_startup_step_is_tried_until_the_configdb_answers() -> None:
    tries = []

    async def step() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise aetcd.exceptions.ConnectionTimeoutError("Deadline Exceeded")
        return "done"

    assert await patiently("a step", step, first=0.001) == "done"
    assert len(tries) == 3


async def test_other_errors_still_end_the_start() -> None:
    async def step() -> None:
        raise ValueError("a bad configuration")

    with pytest.raises(ValueError, match="bad configuration"):
        await patiently("a step", step, first=0.001)
