"""Network namespaces without fork: the agent is threaded (gRPC's etcd client, the API), and
a forked child of a threaded process may crash before it does anything (pyroute2 forks one to
open a socket in a namespace, or to make one). Here a short-lived thread enters the namespace
instead (setns changes only the calling thread), opens the netlink socket there, or unshares
and pins a new namespace; the socket stays in its namespace whatever thread uses it later.
"""

import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pyroute2.netns
from pyroute2 import IPRoute

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
NETLINK_ROUTE = 0


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def run_in(netns: str | None, work: Callable[[], T]) -> T:
    """Run `work` in the network namespace `netns` (None: where the caller is), on a thread
    of its own, and return what it returns (or raise what it raises)."""
    if netns is None:
        return work()
    return _on_thread(netns, lambda: _entered(netns, work))


def _entered(netns: str, work: Callable[[], T]) -> T:
    target = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY)
    try:
        _check(_libc().setns(target, CLONE_NEWNET))
    finally:
        os.close(target)
    return work()


def _on_thread(name: str, work: Callable[[], T]) -> T:
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    # The thread ends with its work: whatever namespace it is in goes with it.
    thread = threading.Thread(target=run, name=f"netns-{name}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def netlink(netns: str | None, **options: Any) -> IPRoute:
    """An rtnetlink socket in `netns` (None: the caller's). A namespace that does not exist is
    an error (FileNotFoundError), never a new empty one."""
    if netns is None:
        return IPRoute(**options)

    def open_socket() -> int:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE).detach()

    return IPRoute(fileno=run_in(netns, open_socket), **options)


def names() -> list[str]:
    return list(pyroute2.netns.listnetns())


def exists(netns: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, netns))


def create(netns: str) -> None:
    """Make the named namespace `netns` (as `ip netns add` does) if it does not exist."""
    if exists(netns):
        return

    def make() -> None:
        _check(_libc().unshare(CLONE_NEWNET))
        # Pins this thread's new namespace at /run/netns/<netns> (pyroute2 does the mounts).
        pyroute2.netns.attach(netns, "thread-self")

    _on_thread(netns, make)


def remove(netns: str) -> None:
    """Delete the named namespace `netns`; its links go with it once nothing uses it."""
    with contextlib.suppress(FileNotFoundError):
        pyroute2.netns.remove(netns)
