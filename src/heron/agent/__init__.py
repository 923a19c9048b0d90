"""herond: the node agent. Registers the node, carries out its tasks, reconciles its VMs."""
