"""Free TCP ports for the listeners Heron starts: QEMU's migration and NBD endpoints, heron-io
peers, the etcd and API ports of a cluster on one machine.

A free port is only a guess until the listener binds it; callers that can retry do. A port
chosen in a span below the kernel's ephemeral range (`span`) cannot be handed meanwhile to
another program's outgoing connection or port-0 listener, as one the kernel chose can.
"""

import contextlib
import random
import socket

# Where a devcluster's etcd members and APIs listen: below heron-io's peers (20000-32000)
# and the ephemeral range (32768 on).
DEVCLUSTER_PORTS = (10000, 20000)


def free_ports(
    count: int, host: str = "127.0.0.1", span: tuple[int, int] | None = None, tries: int = 200
) -> list[int]:
    """`count` distinct ports free now: bound all at once, so none is repeated; in `span`
    ([low, high)) when given, otherwise where the kernel chooses."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count * tries):
            if len(ports) == count:
                return ports
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind((host, 0 if span is None else random.randrange(*span)))
            except OSError:
                continue  # taken (or held by this very call): another
            ports.append(int(sock.getsockname()[1]))
        if len(ports) == count:
            return ports
    raise OSError(f"no {count} free ports in {span} on {host}")


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_port_in(span: tuple[int, int], host: str = "127.0.0.1") -> int:
    """A port free now in [low, high): for a listener that keeps its port across restarts."""
    return free_ports(1, host, span)[0]
