"""XLA's persistent compilation cache, on for every run: a program compiled once on a
machine is read back from disk by every later process that compiles it again.

A run compiles the same decoder programs in several stages (collect, label and each
evaluated method build their own decoder) and again when it is rerun or resumed; the
test suite compiles the same tiny programs in many tests and in the processes they
start. On the 2-core CPU machine an evaluate stage of the tiny test run went from 39 s
to 11 s with the cache warm. Entries are keyed by the program, the compile options,
the backend and the jax version, so a stale entry is never read for a changed program.

``QSTAR_COMPILE_CACHE`` names the folder (default ``~/.cache/qstar_jax/xla``), or
``off`` to compile everything afresh; a ``JAX_COMPILATION_CACHE_DIR`` the user set
wins. The cache is bounded (least recently used entries go first), which also makes
JAX take a file lock around each read and write, so processes that share the folder
(a two-process run, pytest's workers) never read a half-written entry.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

DEFAULT_FOLDER = Path("~/.cache/qstar_jax/xla")
MAX_BYTES = 4 << 30


def compile_cache_folder() -> Path | None:
    """The folder the environment asks for, or None when the cache is off."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    setting = os.environ.get("QSTAR_COMPILE_CACHE", str(DEFAULT_FOLDER))
    return None if setting.strip().lower() == "off" else Path(setting).expanduser()


def enable_compile_cache() -> Path | None:
    """Turns the cache on (before the first compilation); returns its folder, or None
    when it is off or the folder cannot be made (then every program compiles afresh)."""
    folder = compile_cache_folder()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return folder
