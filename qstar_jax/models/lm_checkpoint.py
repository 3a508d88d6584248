"""Mid-training checkpoints of ``lm_training.train_causal_lm``, which a killed run resumes
from to the same result as a run never killed.

Each step directory (orbax, the newest two kept) holds what the next step depends on: the
parameters and the optimizer state (restored with the live arrays' shardings, so
replicated on a mesh as training lays them out), and as JSON the step reached, the batch
generator's state (numpy's ``bit_generator.state``), the loss log so far and the
training's fingerprint: the ``LMTrainingConfig`` fields (but ``checkpoint_every``, which
changes no result), the model's config, digests of its initial parameters and of the
training arrays (token rows, loss mask, value rows). The run resumes from the newest step
that reads back whole (a damaged one is passed over, with a warning, for the one before).
A checkpoint written for another fingerprint (other settings, data or model) is not
resumed: training starts over from step 0, with a warning naming what differs, and
replaces it; as it does, with a warning, where no step reads back.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from qstar_jax.outputs.durable import DamagedOutputError
from qstar_jax.outputs.orbax_steps import StepCheckpointer, abstract_like, newest_readable

logger = logging.getLogger(__name__)

# How often a run saves changes nothing it computes: a run may resume under another value.
_NOT_FINGERPRINTED = ("checkpoint_every",)


class TrainingMismatchError(ValueError):
    """A training checkpoint was written for other settings, data or model."""


@dataclasses.dataclass(frozen=True)
class Resumed:
    """What a checkpoint restores: the step reached (the next one to run), the params and
    optimizer state after it, the batch generator's state and the loss log so far."""

    step: int
    params: Any
    opt_state: Any
    rng_state: dict
    log: dict[str, list[float]]


def training_fingerprint(config, model_config, initial_params,
                         arrays: Mapping[str, np.ndarray]) -> dict:
    """What a training run's result depends on, as JSON reads it back: ``config``'s
    fields (a dataclass; ``checkpoint_every`` left out), a digest of ``model_config``, of
    the ``initial_params`` (a pytree of arrays) and, per name, of the training ``arrays``
    (shape, dtype and a SHA-256 of their bytes)."""
    settings = {k: v for k, v in dataclasses.asdict(config).items()
                if k not in _NOT_FINGERPRINTED}
    model = json.dumps(dataclasses.asdict(model_config), sort_keys=True, default=str)
    fingerprint = {
        "settings": settings,
        "model": hashlib.sha256(model.encode()).hexdigest()[:16],
        "initial_params": _digest(jax.tree.leaves(initial_params)),
        "data": {name: {"shape": list(np.shape(array)), "dtype": str(np.asarray(array).dtype),
                        "sha256": _digest([array])} for name, array in arrays.items()},
    }
    return json.loads(json.dumps(fingerprint))  # tuples as lists, as the stored one reads


def _digest(arrays) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(np.asarray(array))
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def differences(stored: dict, live: dict) -> list[str]:
    """``key (stored value) there, (live value) here`` for each key of the two
    fingerprints (a section's, ``settings.steps``, for a section that is a dict) whose
    values differ, sorted."""
    found = []
    for section in sorted(stored.keys() | live.keys()):
        there, here = stored.get(section), live.get(section)
        if isinstance(there, dict) and isinstance(here, dict):
            found += [f"{section}.{key} {there.get(key)!r} there, {here.get(key)!r} here"
                      for key in sorted(there.keys() | here.keys())
                      if there.get(key) != here.get(key)]
        elif there != here:
            found.append(f"{section} {there!r} there, {here!r} here")
    return found


class LMCheckpointer(StepCheckpointer):
    """Saves and restores the state of one policy training (``fingerprint``) in
    ``directory``; a context manager that waits for the pending save on exit."""

    def __init__(self, directory: str | os.PathLike, *, fingerprint: dict,
                 max_to_keep: int = 2):
        super().__init__(directory, max_to_keep=max_to_keep)
        self.fingerprint = fingerprint

    def save(self, step: int, *, params, opt_state, rng_state: dict,
             log: dict[str, list[float]]) -> None:
        """Save the state after ``step`` steps, asynchronously (what is JSON is copied
        now, as the caller goes on changing it); a failed write raises here or on
        ``close``, a full disk as an OSError."""
        progress = copy.deepcopy({"step": step, "rng": rng_state, "log": log})
        self._save(step, params=ocp.args.StandardSave(params),
                   opt_state=ocp.args.StandardSave(opt_state),
                   meta=ocp.args.JsonSave(self.fingerprint),
                   progress=ocp.args.JsonSave(progress))

    def restore(self, *, params, opt_state) -> Resumed | None:
        """The newest step that reads back whole, restored into the structure, shapes,
        dtypes and shardings of the live ``params`` and ``opt_state`` (later, damaged
        steps are deleted, for training to save them again); None, with every step
        deleted, where there is none, none reads back or the checkpoint was written for
        another fingerprint. Every process calls this."""
        if self.latest_step() is None:
            return None
        templates = {"params": ocp.args.StandardRestore(abstract_like(params)),
                     "opt_state": ocp.args.StandardRestore(abstract_like(opt_state)),
                     "progress": ocp.args.JsonRestore()}

        def read(at: int):
            stored = self._read(at, meta=ocp.args.JsonRestore()).meta
            if stored != self.fingerprint:
                raise TrainingMismatchError("; ".join(differences(stored, self.fingerprint)))
            return self._read(at, **templates)

        try:
            at, restored = newest_readable(self._manager, self.directory, read,
                                           passed_on=(TrainingMismatchError,),
                                           remedy="training starts over from step 0")
        except TrainingMismatchError as mismatch:
            logger.warning("%s: written for other training (%s); training starts over from "
                           "step 0", self.directory, mismatch)
        except DamagedOutputError as damaged:
            logger.warning("%s", damaged)
        else:
            self._delete_steps_after(at)
            progress = restored.progress
            return Resumed(step=at, params=restored.params, opt_state=restored.opt_state,
                           rng_state=progress["rng"], log=progress["log"])
        self._delete_steps_after(None)
        return None
