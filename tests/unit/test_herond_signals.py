"""herond's stop signals stay herond's: a child it forks without exec (pyroute2 does, to enter
a namespace, and SIGTERMs it when done) must not hand that SIGTERM to herond's own loop."""

import asyncio
import os
import signal

from heron.herond import _forget_stop_signals


def test_a_forked_child_has_no_wakeup_fd_and_default_stop_signals() -> None:
    loop = asyncio.new_event_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: None)  # sets the loop's wakeup fd
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what it has after the hook, then leave
            try:
                _forget_stop_signals()
                wakeup = signal.set_wakeup_fd(-1)
                default = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
                os.write(write, f"{wakeup} {default}".encode())
            finally:
                os._exit(0)
        os.close(write)
        said = os.read(read, 100).decode()
        os.waitpid(pid, 0)
        os.close(read)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.close()
    assert said == "-1 True"
