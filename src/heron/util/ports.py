"""Free TCP ports for the listeners Heron starts: QEMU's migration and NBD endpoints, heron-io
peers, the etcd and API ports of a cluster on one machine.

A free port is only a guess until the listener binds it; callers that can retry do.
"""

import contextlib
import random
import socket


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports free now: bound all at once, so the kernel cannot repeat one."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_port_in(span: tuple[int, int], host: str = "127.0.0.1", tries: int = 200) -> int:
    """A port free now in [low, high): for a listener that keeps its port across restarts.

    A span below the kernel's ephemeral range keeps the port from being handed to other
    programs' connections and port-0 listeners between this choice and the bind.
    """
    for _ in range(tries):
        port = random.randrange(*span)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {span} on {host}")
