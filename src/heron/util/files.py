"""Replacing a small file whole, so that a reader sees the old text or the new, never half."""

import contextlib
import os
import tempfile
from pathlib import Path


def replace_text(path: Path, text: str) -> None:
    """Write `text` to a temporary file of its own beside `path`, then rename it over `path`.

    The temporary name is unique: two files of one directory written at once from two
    threads (`fence.beat` and `fence.grace`) never take each other's temporary file."""
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
