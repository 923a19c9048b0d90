"""Storage calls that may hang (a hard NFS mount whose server is away) do not hang callers."""

import asyncio
import threading

from heron.storage.probe import probe


def test_a_hung_call_is_given_up_and_not_started_again_until_it_returns() -> None:
    release = threading.Event()
    started: list[str] = []

    def hangs() -> int:
        started.append("hangs")
        release.wait(30)
        return 1

    def quick() -> int:
        started.append("quick")
        return 2

    async def main() -> None:
        assert await probe("a", quick) == 2
        assert await probe("nas", hangs, timeout=0.2) is None
        # Still stuck: no new thread for that storage, and at once; others are not held up.
        assert await asyncio.wait_for(probe("nas", quick), 0.1) is None
        assert await probe("b", quick) == 2
        release.set()
        for _ in range(100):  # the stuck call returns in its thread
            if await probe("nas", quick) == 2:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the storage was not probed again once it answered")

    asyncio.run(main())
    assert started == ["quick", "hangs", "quick", "quick"]


def test_errors_of_the_call_reach_the_caller() -> None:
    def fails() -> None:
        raise PermissionError("denied")

    async def main() -> None:
        try:
            await probe("c", fails)
        except PermissionError as exc:
            assert "denied" in str(exc)
        else:
            raise AssertionError("the error was swallowed")

    asyncio.run(main())
