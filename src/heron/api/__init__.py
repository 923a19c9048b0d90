"""The REST API under /api/v1: served by every node, for any object in the cluster."""
