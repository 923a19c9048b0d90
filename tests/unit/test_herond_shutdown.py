"""herond stops within a limit: a shutdown step that hangs (found in CI: an agent whose ardfs
task stopped it under load never exited, and its cluster ran on for the rest of the run)."""

import subprocess
import sys
import textwrap


def test_a_shutdown_that_hangs_ends_the_process_and_says_what_hung() -> None:
    """A stopping agent with a step deaf to its cancel exits (1) after the limit, naming
    the task still running; one that stops in time returns normally."""
    program = textwrap.dedent(
        """
        import asyncio, logging, sys
        from heron.herond import bounded

        async def deaf() -> None:
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    pass  # a job that ignores its cancel

        async def main() -> None:
            await bounded(asyncio.sleep(0), 5)  # in time: returns
            print("first stopped", flush=True)
            asyncio.create_task(deaf(), name="deaf-job")
            await bounded(asyncio.Event().wait(), 0.2)
            print("not reached", flush=True)

        logging.basicConfig(level=logging.INFO)
        asyncio.run(main())
        """
    )
    said = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert said.returncode == 1, said
    assert said.stdout == "first stopped\n"
    assert "still running after 0.2 s of shutdown: deaf-job" in said.stderr
