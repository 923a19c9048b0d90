"""A tiny bootable test guest built from Debian packages, for Heron's integration tests."""
