"""High availability: the fence watchdog on every node, the failover controller on the leader."""
