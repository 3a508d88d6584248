"""Crash-safe files: append-only JSONL that survives a kill mid-write, atomic writes
and atomic folder copies.

A JSONL record counts only once its closing newline is on disk, so a kill during a write
leaves at most a torn tail after the last newline. Readers skip that tail; appenders cut
it off before writing, so the next record never lands glued to half a line.

In a multi-process run only process 0 writes (``qstar_jax.parallel.is_writer``); the
others, computing the same records in step, write nowhere and read process 0's files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import IO, Any, Callable, Sequence

from qstar_jax.parallel import is_writer

logger = logging.getLogger(__name__)


class DamagedOutputError(ValueError):
    """A file a run wrote does not read back (damaged on disk, beyond the torn tail a kill
    leaves, which readers skip): the message names it and what to delete so that a rerun
    writes it again."""


class CorruptRecordError(DamagedOutputError):
    """A complete JSONL line (not the torn tail) does not parse: the file was damaged."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of ``error``'s message, at most ``limit`` characters (tensorstore's
    run to kilobytes), for a one-line report."""
    text = str(error).strip().split("\n", 1)[0] or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_failure(error: BaseException | None) -> BaseException | None:
    """``error``, or the one it was raised from, where it is what reading a damaged file
    raises (a ValueError, OSError or KeyError: orbax raises tensorstore's from a bare
    Exception); None for any other error."""
    while error is not None and not isinstance(error, (ValueError, OSError, KeyError)):
        error = error.__cause__
    return error


def read_jsonl(path: str | os.PathLike, *, remedy: str | None = None
               ) -> tuple[list[Any], int]:
    """All complete records of a JSONL file and the byte length they span.

    A missing file reads as empty. A torn last line (no closing newline, as a kill
    mid-write leaves) is skipped with a warning; any other unparseable line raises
    ``CorruptRecordError`` naming the file and line, and ``remedy`` (what to delete; by
    default that line or the file, as in an append-only file whose records a rerun
    makes again where they are missing).
    """
    path = Path(path)
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        logger.warning("%s: ignoring a torn last line of %d bytes (an interrupted write)",
                       path, len(data) - complete)
    records = []
    for number, line in enumerate(data[:complete].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            remedy = remedy or ("delete that line (or the file) and run again: the run "
                                "makes again the records it is missing")
            raise CorruptRecordError(
                f"{path}:{number} is not valid JSON ({err.msg}): the file is damaged beyond a "
                f"torn last line; {remedy}") from None
    return records, complete


def open_for_append(path: str | os.PathLike) -> IO[str]:
    """Open a JSONL file for appending after cutting off any torn tail."""
    if not is_writer():
        return open(os.devnull, "a", encoding="utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _, complete = read_jsonl(path)
    if path.exists() and path.stat().st_size > complete:
        with open(path, "r+b") as f:
            f.truncate(complete)
    return open(path, "a", encoding="utf-8")


def append_record(file: IO[str], record: Any) -> None:
    """Write one JSON line and force it to disk before returning."""
    append_records(file, [record])


def append_records(file: IO[str], records: Sequence[Any]) -> None:
    """Write JSON lines and force them to disk once, before returning."""
    file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    file.flush()
    if is_writer():  # another process appends to os.devnull, which cannot be fsynced
        os.fsync(file.fileno())


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write a whole file so that readers see either the old file or the complete new one."""
    if not is_writer():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _sync_folder(path.parent)  # makes the rename itself durable


def remove_file(path: str | os.PathLike) -> None:
    """Delete ``path`` where it exists, on the writing process alone: another process
    reaching this first would delete what process 0 has not yet replaced."""
    if is_writer():
        Path(path).unlink(missing_ok=True)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """``write_atomically`` of a text, UTF-8."""
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def copy_folder_atomically(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy the folder ``source`` to ``target``, which must not exist, whole or not at all:
    into ``<target>.partial`` beside it, each file forced to disk, then renamed, so a kill
    mid-copy never leaves a partial ``target`` that a resumed run takes for whole."""
    if not is_writer():
        return
    target = Path(target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # what a killed copy left
    shutil.copytree(source, partial)
    for copied in partial.rglob("*"):
        if copied.is_file():
            with open(copied, "rb") as f:
                os.fsync(f.fileno())
    os.rename(partial, target)
    _sync_folder(target.parent)


def _sync_folder(path: Path) -> None:
    """Force ``path``'s entries (a rename into it) to disk."""
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
