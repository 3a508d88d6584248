"""What a sandboxed run leaves on disk, removed once its processes are dead: the scratch
directory, and (for a throwaway uid without bubblewrap) what that uid wrote to the shared
world-writable directories.

Trees are removed without recursion and through directory file descriptors, one level
open at a time, so a program that nests directories thousands deep (past the recursion
limit, past PATH_MAX) or takes away their permissions cannot make the clean-up fail.
"""

from __future__ import annotations

import os
import tempfile

from qstar_jax.tasks.sandbox.sandbox_isolation import Identity

# World-writable places a program without bubblewrap can still write to.
_SHARED_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def make_scratch(identity: Identity | None) -> str:
    scratch = tempfile.mkdtemp(prefix="qstar-sandbox-")
    if identity is not None:
        os.chown(scratch, identity.uid, identity.gid)
    return scratch


def remove_tree(root: str) -> None:
    """Delete directory ``root`` and everything below it (symlinks are removed, never
    followed). Only call it once nothing can write to the tree any more."""
    os.chmod(root, 0o700)
    fd = os.open(root, _DIRECTORY)
    # One list per open level: the subdirectories of that level still to delete.
    pending = [_remove_files(fd)]
    try:
        while pending:
            if pending[-1]:
                child = os.open(pending[-1][-1], _DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = child
                pending.append(_remove_files(fd))
                continue
            pending.pop()
            if pending:
                parent = os.open("..", _DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = parent
                os.rmdir(pending[-1].pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(root)


def _remove_files(fd: int) -> list[str]:
    """Unlink everything in directory ``fd`` but its subdirectories, made enterable and
    returned by name."""
    directories = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                os.chmod(entry.name, 0o700, dir_fd=fd)
                directories.append(entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    return directories


def remove_files_of(uid: int, *, sparing: str) -> None:
    """Delete what ``uid`` created directly in the shared world-writable directories,
    except ``sparing`` (the scratch directory, removed on its own)."""
    sparing = os.path.realpath(sparing)
    for directory in _SHARED_WRITABLE_DIRS:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                if (os.path.join(os.path.realpath(directory), entry.name) == sparing
                        or entry.stat(follow_symlinks=False).st_uid != uid):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    remove_tree(entry.path)
                else:
                    os.unlink(entry.path)
            except OSError:
                continue
