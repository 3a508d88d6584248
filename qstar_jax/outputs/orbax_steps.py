"""Numbered orbax checkpoints of a training run, which a killed run resumes from.

``StepCheckpointer`` holds an orbax ``CheckpointManager`` over one directory: it keeps the
newest ``max_to_keep`` steps, clears the temporary step directory a kill mid-save leaves,
raises a failed save as the OSError Python's own writes raise (``disk_full``) and keeps
orbax's own reports of a failure off the terminal. ``newest_readable`` finds the newest
step that reads back whole, passing over damaged ones for the one before. Q̂ training
(``qvalue.checkpoint``) and policy training (``models.lm_checkpoint``) build on them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from qstar_jax.outputs.disk_full import (orbax_write_errors_as_os_errors,
                                        quiet_orbax_failures)
from qstar_jax.outputs.durable import DamagedOutputError, first_line, read_failure

logger = logging.getLogger(__name__)


def abstract_like(tree):
    """Shape/dtype/sharding templates for arrays or already-abstract leaves: restored
    against them, orbax lays each array out as the live one is (replicated on a mesh, or
    on one device)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree)


class StepCheckpointer:
    """Saves numbered steps of a training run in ``directory`` with an orbax
    CheckpointManager, as a context manager that waits for the pending save on exit."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                # A kill mid-save leaves a temporary step directory; the resumed run saves
                # that step again.
                cleanup_tmp_directories=True))
        # A failed save (a full disk, a Ctrl-C while one is waited for) is raised by
        # ``save`` or ``close``: orbax's threads' own reports of it stay off the terminal,
        # to the end of the process where one failed, as they go on reporting it.
        self._quiet = contextlib.ExitStack()
        self._quiet.enter_context(quiet_orbax_failures())

    def __enter__(self):
        return self

    def __exit__(self, failed, *exc) -> None:
        if failed is not None:  # maybe a save: orbax's threads stay quiet
            self._quiet.pop_all()
        self.close()

    def close(self) -> None:
        """Wait for pending writes and release the manager."""
        with orbax_write_errors_as_os_errors(self.directory):
            self._manager.wait_until_finished()
        self._manager.close()
        self._quiet.close()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def _save(self, step: int, **items) -> None:
        """Save the orbax ``items`` (``ocp.args``) as ``step``, asynchronously: a write
        that failed (this save's, or the last one's, which it waits for) raises here or in
        ``close``; a full disk as an OSError."""
        with orbax_write_errors_as_os_errors(self.directory):
            self._manager.save(step, args=ocp.args.Composite(**items))

    def _read(self, step: int, **items) -> Any:
        """The orbax ``items`` (``ocp.args``) of ``step``."""
        return self._manager.restore(step, args=ocp.args.Composite(**items))

    def _delete_steps_after(self, step: int | None) -> None:
        """Delete every step after ``step`` (None: every step), for training to save them
        again. Every process calls this."""
        for later in self._manager.all_steps():
            if step is None or later > step:
                self._manager.delete(later)


def newest_readable(manager: ocp.CheckpointManager, directory: Path,
                    read: Callable[[int], Any], step: int | None = None, *,
                    name: str = "checkpoint", remedy: str = "delete it",
                    passed_on: tuple[type[BaseException], ...] = ()) -> tuple[int, Any]:
    """(step, ``read(step)``) for ``step``, or by default for the newest step of
    ``manager`` that reads whole: a damaged one is passed over, with a warning, for the
    one before. FileNotFoundError (no ``name`` in ``directory``) where there is no step;
    DamagedOutputError, ending with ``remedy``, where none reads. The errors of
    ``passed_on`` (a checkpoint of another run) are raised as they are, not taken for
    damage."""
    steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    if not steps:
        raise FileNotFoundError(f"no {name} in {directory}")
    damaged = []
    for at in steps:
        try:
            result = read(at)
        except passed_on:
            raise
        except Exception as error:  # noqa: BLE001 (orbax wraps some in a bare Exception)
            cause = read_failure(error)
            if cause is None:
                raise
            damaged.append(f"step {at}: {first_line(cause)}")
            continue
        for problem in damaged:
            logger.warning("%s: passing over the damaged %s; restored step %d", directory,
                           problem, at)
        return at, result
    raise DamagedOutputError(
        f"cannot read the checkpoint in {directory} ({'; '.join(damaged)}): it is damaged; "
        f"{remedy}")
