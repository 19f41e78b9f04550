"""Files and directories the product creates: private to their owner (0600 and 0700),
whatever the process's umask allows others."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Final

FILE_MODE: Final = 0o600
DIRECTORY_MODE: Final = 0o700


def private_directory(path: Path) -> Path:
    """Create ``path`` and each missing parent with mode 0700; an existing directory is left
    as it is. Returns ``path``.

    Raises:
        OSError: a level cannot be created, or exists as a file.
    """
    missing = [level for level in (path, *path.parents) if not level.exists()]
    for level in reversed(missing):
        try:
            level.mkdir(mode=DIRECTORY_MODE)
        except FileExistsError:  # another process made it first
            if not level.is_dir():
                raise
    return path


def create_private(path: Path) -> IO[str]:
    """A new text file (UTF-8) at ``path`` with mode 0600 from its first byte, open for
    writing.

    Raises:
        FileExistsError: ``path`` exists.
        OSError: it cannot be created.
    """
    descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    return os.fdopen(descriptor, "w", encoding="utf-8")
