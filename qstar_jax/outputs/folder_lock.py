"""One run at a time in an output folder.

Two runs on the same folder would each append every problem to ``results.jsonl`` (the
summary then counts it twice) and clear each other's half-trained policy. A run holds an
exclusive lock on ``.lock`` in its folder while it works; the operating system drops it
when the process ends however it ends, so a killed run never leaves the folder locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from qstar_jax.parallel import is_writer

LOCK_FILE = ".lock"


class FolderInUseError(RuntimeError):
    """Another run holds the output folder."""


def lock_folder(out: Path) -> IO[str] | None:
    """Lock ``out`` for this process until the returned file is closed (or the process
    ends); its id is written in the file for whoever is refused. Only process 0 writes
    the folder, so only it locks (None elsewhere). Raises ``FolderInUseError`` naming the
    process that holds the lock."""
    if not is_writer():
        return None
    file = open(out / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "unknown"
        file.close()
        raise FolderInUseError(f"another run (process {holder}) is using {out}; wait for it "
                               "to end or choose another --out") from None
    file.truncate(0)
    file.write(f"{os.getpid()}\n")
    file.flush()
    return file
