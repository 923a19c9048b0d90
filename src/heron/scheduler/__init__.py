"""Where VMs go: placement (and later balancing and maintenance drains)."""
