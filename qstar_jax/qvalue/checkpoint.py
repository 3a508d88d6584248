"""Orbax checkpoints of Q̂ training, tied to the backbone the head reads.

Each step directory holds the trainable params, the optimizer state, the best params so
far (what search should load), the training progress, and metadata naming the backbone
(its kind, hidden size and a fingerprint of its config) and the head's config. Restoring
against a different backbone raises ``BackboneMismatchError`` naming both. A step whose
files do not read back (damaged on disk) is passed over for the one before it, which
orbax keeps; where none reads, ``DamagedOutputError`` names the directory.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from qstar_jax.models.config import ModelConfig
from qstar_jax.models.rope_scaling import rope_scaling_from_fields
from qstar_jax.models.sharded_params import module_template
from qstar_jax.outputs.orbax_steps import StepCheckpointer, abstract_like, newest_readable
from qstar_jax.parallel import replicate, replicated
from qstar_jax.qvalue.backbone import BackboneQ
from qstar_jax.qvalue.head import QHead, QHeadConfig

_ARRAY_ITEMS = ("params", "opt_state", "best_params")


class CheckpointMismatchError(ValueError):
    """A Q̂ checkpoint was trained with another head or backbone than it is restored for."""


class BackboneMismatchError(CheckpointMismatchError):
    """A Q̂ checkpoint was trained on another backbone than the one it is restored against."""


# Token ids do not change hidden states; a retokenized config must still match.
_NOT_FINGERPRINTED = ("bos_token_id", "eos_token_ids")


def config_fingerprint(config: ModelConfig) -> str:
    """A short stable hash of the model-config fields that shape the hidden states."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def model_config_from_dict(fields: dict[str, Any]) -> ModelConfig:
    """Inverse of ``dataclasses.asdict`` for ``ModelConfig`` (as read back from JSON)."""
    rope = fields.get("rope_scaling")
    return ModelConfig(**{
        **fields,
        "rope_scaling": rope_scaling_from_fields(rope) if rope else None,
        "sliding_windows": tuple(fields.get("sliding_windows", ())),
        "eos_token_ids": tuple(fields.get("eos_token_ids", ())),
    })


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackboneIdentity:
    """Which backbone's hidden states a Q̂ head was trained on."""

    kind: Literal["policy_features", "separate_backbone"]
    hidden_size: int
    config_fingerprint: str
    # The separate backbone's full config, so a checkpoint can rebuild its model.
    model_config: dict[str, Any] | None = None

    @classmethod
    def of_policy(cls, policy_config: ModelConfig) -> "BackboneIdentity":
        """A head on the frozen policy's own hidden states."""
        return cls(kind="policy_features", hidden_size=policy_config.hidden_size,
                   config_fingerprint=config_fingerprint(policy_config))

    @classmethod
    def of_separate_backbone(cls, config: ModelConfig) -> "BackboneIdentity":
        return cls(kind="separate_backbone", hidden_size=config.hidden_size,
                   config_fingerprint=config_fingerprint(config),
                   model_config=dataclasses.asdict(config))

    def describe(self) -> str:
        return (f"{self.kind} backbone (hidden size {self.hidden_size}, config fingerprint "
                f"{self.config_fingerprint})")

    def same_backbone(self, other: "BackboneIdentity") -> bool:
        return (self.kind, self.hidden_size, self.config_fingerprint) == (
            other.kind, other.hidden_size, other.config_fingerprint)


class QCheckpointer(StepCheckpointer):
    """Saves and restores Q̂ training state in ``directory`` with an orbax CheckpointManager."""

    def __init__(self, directory: str | os.PathLike, *, identity: BackboneIdentity,
                 head_config: QHeadConfig, max_to_keep: int = 2):
        super().__init__(directory, max_to_keep=max_to_keep)
        self.identity = identity
        self.head_config = head_config

    def save(self, step: int, *, params, opt_state, best_params, progress: dict) -> None:
        """Save the arrays (pytrees) and the JSON-able ``progress`` as ``step``.

        The save is asynchronous, so ``progress`` is copied now: the caller goes on
        mutating its bookkeeping while orbax writes in the background. A write that
        failed (this save's, or the last one's, which it waits for) raises here or in
        ``close``; a full disk as an OSError.
        """
        meta = {"identity": dataclasses.asdict(self.identity),
                "head_config": dataclasses.asdict(self.head_config)}
        self._save(step, params=ocp.args.StandardSave(params),
                   opt_state=ocp.args.StandardSave(opt_state),
                   best_params=ocp.args.StandardSave(best_params), meta=ocp.args.JsonSave(meta),
                   progress=ocp.args.JsonSave(copy.deepcopy(progress)))

    def restore(self, *, params, opt_state, best_params, step: int | None = None
                ) -> tuple[Any, Any, Any, dict]:
        """(params, opt_state, best_params, progress) at ``step`` (default: the newest that
        reads whole; the damaged steps after it are deleted, for training to save again).

        The arguments are templates giving each pytree's structure, shapes and dtypes.
        """
        templates = {"params": params, "opt_state": opt_state, "best_params": best_params}
        at, restored = self._restore(step, progress=ocp.args.JsonRestore(), **{
            name: ocp.args.StandardRestore(abstract_like(templates[name]))
            for name in _ARRAY_ITEMS})
        if step is None:
            self._delete_steps_after(at)
        return restored.params, restored.opt_state, restored.best_params, restored.progress

    def restore_best_params(self, template, step: int | None = None):
        """Only the best params (for search), restored into ``template``'s structure, at
        ``step`` (default: the newest that reads whole)."""
        _, restored = self._restore(
            step, best_params=ocp.args.StandardRestore(abstract_like(template)))
        return restored.best_params

    def _restore(self, step: int | None, **items) -> tuple[int, Any]:
        """(the step, its ``items`` restored), the step checked against this head and
        backbone first."""
        def read(at: int):
            self._check(*_read_meta(self._manager, at))
            return self._read(at, **items)
        return _newest_readable(self._manager, self.directory, read, step)

    def _check(self, stored_identity: BackboneIdentity, stored_head: QHeadConfig) -> None:
        if not stored_identity.same_backbone(self.identity):
            raise BackboneMismatchError(
                f"the Q̂ checkpoint in {self.directory} was trained on the "
                f"{stored_identity.describe()}, but it is being restored against the "
                f"{self.identity.describe()}; use a checkpoint trained on this backbone, "
                "or retrain Q̂ (in a new directory)")
        if stored_head != self.head_config:
            raise CheckpointMismatchError(
                f"the Q̂ checkpoint in {self.directory} has head {stored_head}, not "
                f"{self.head_config}; match the head config or use a new directory")


def _newest_readable(manager: ocp.CheckpointManager, directory: Path,
                     read: Callable[[int], Any], step: int | None = None) -> tuple[int, Any]:
    """``orbax_steps.newest_readable`` of a Q̂ checkpoint: a mismatch is raised as it is."""
    return newest_readable(
        manager, directory, read, step, name="Q̂ checkpoint",
        passed_on=(CheckpointMismatchError,),
        remedy="delete it, and in a run folder the *_training.json that marks its training "
               "done, so that it is trained again")


def _read_meta(manager: ocp.CheckpointManager, step: int
               ) -> tuple[BackboneIdentity, QHeadConfig]:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    head = meta["head_config"]
    return (BackboneIdentity(**meta["identity"]),
            QHeadConfig(**{**head, "mlp_widths": tuple(head["mlp_widths"])}))


def read_metadata(directory: str | os.PathLike) -> tuple[BackboneIdentity, QHeadConfig]:
    """The backbone identity and head config of the newest readable checkpoint in
    ``directory``."""
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"no Q̂ checkpoint directory at {directory}")
    with ocp.CheckpointManager(directory,
                               options=ocp.CheckpointManagerOptions(create=False)) as manager:
        return _newest_readable(manager, directory,
                                lambda step: _read_meta(manager, step))[1]


def _load_best(directory: str | os.PathLike, build: Callable[[], nnx.Module],
               identity: BackboneIdentity, head_config: QHeadConfig,
               mesh: Mesh | None = None) -> nnx.Module:
    """The module ``build`` makes, with the checkpoint's best params; with a ``mesh``,
    restored replicated onto it, as training lays them out (each process reading its own
    devices' copies)."""
    graphdef, abstract, rest = module_template(build)
    if mesh is not None:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)), abstract)
        rest = replicate(rest, mesh)
    with QCheckpointer(directory, identity=identity, head_config=head_config) as checkpointer:
        params = checkpointer.restore_best_params(abstract)
    return nnx.merge(graphdef, params, rest)


def load_q_head(directory: str | os.PathLike, *, policy_config: ModelConfig,
                mesh: Mesh | None = None) -> QHead:
    """The trained head for hidden states of the policy with ``policy_config`` (on
    ``mesh``, when given)."""
    _, head_config = read_metadata(directory)
    return _load_best(directory, lambda: QHead(head_config, rngs=nnx.Rngs(0)),
                      BackboneIdentity.of_policy(policy_config), head_config, mesh)


def load_backbone_q(directory: str | os.PathLike, *, model_config: ModelConfig | None = None,
                    dtype=jnp.float32, mesh: Mesh | None = None) -> BackboneQ:
    """The trained separate-backbone Q̂ (on ``mesh``, when given, replicated as training
    lays it out); ``model_config``, when given, must be the one the checkpoint was trained
    with (by default it is rebuilt from the checkpoint)."""
    identity, head_config = read_metadata(directory)
    if identity.model_config is None:
        raise BackboneMismatchError(f"the Q̂ checkpoint in {directory} is a head on the "
                                    f"{identity.describe()}; load it with load_q_head")
    config = model_config or model_config_from_dict(identity.model_config)
    return _load_best(directory,
                      lambda: BackboneQ(config, head_config, dtype=dtype, rngs=nnx.Rngs(0)),
                      BackboneIdentity.of_separate_backbone(config), head_config, mesh)
