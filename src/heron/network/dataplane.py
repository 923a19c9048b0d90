"""Where a node's switches live."""

from dataclasses import dataclass


@dataclass(frozen=True)
class DataPlane:
    """The network namespace holding this node's bridges, uplinks and taps: the host's own
    (None) on a real server; on a devcluster, one namespace per node stands for its host, so
    several nodes on one machine have data planes as separate as real hosts'."""

    netns: str | None = None

    def namespace(self, name: str) -> str:
        """A namespace of this node's own (a DHCP server's), distinct from other nodes'."""
        return f"{self.netns}-{name}" if self.netns else name
