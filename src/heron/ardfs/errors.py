"""The root of the data path's errors.

ARDFS imports nothing else from Heron, so its root is its own rather than heron.errors'
HeronError: `except ArdfsError` catches every error heron-io and its client raise on purpose.
"""


class ArdfsError(Exception):
    """Root of every error ARDFS raises on purpose."""
