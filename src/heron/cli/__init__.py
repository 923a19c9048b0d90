"""The `heron` command."""
