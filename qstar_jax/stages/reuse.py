"""``--reuse DIR``: evaluate new search settings on what an earlier run trained.

Ablations over K, N, λ, budgets or the evaluation split need the same policy, labels and
Q̂; retraining them per setting wastes the most expensive stages. A run that reuses
``DIR`` links DIR's trained outputs into its own folder, so its training stages are
skipped, after checking that every setting those stages read is the same in both runs.
Only the settings that evaluation alone reads may differ.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from qstar_jax.config import ConfigError, DistributedConfig, RunConfig
from qstar_jax.config_loading import load_config

# What changes how the decoder holds its cache and batches its rows, never what it
# computes (decode.slots sizes batches; pages hold what rows hold; step chunks sample the
# tokens one call samples; padded rows are not read; row windows are the rows' cache
# windows copied). A run may also resume in its own folder under new values of these,
# until its evaluate stage, whose wall-clock they move, has begun (run.py).
CACHE_LAYOUT = ("decode.slots", "decode.page_size", "decode.pages", "decode.step_chunk",
                "decode.min_rows", "decode.row_windows")
# What changes when a run saves its progress, never what it computes: a run may change
# these in its own folder at any time, and a run reusing another's may differ in them.
NO_RESULT = ("policy_training.checkpoint_every",)
# What only the evaluate stage reads, the cache's layout, or the device mesh: trained
# outputs load onto any mesh (models/sharded_params.py), so a run trained on eight devices
# can be evaluated on one; a mesh changes only the order of sharded sums. (Not a resume in
# the run's own folder: a training stage would go on under other rounding.)
EVALUATION_ONLY = ("out_dir", "stages", "search", "eval", "task.eval_split",
                   "task.eval_problems", *CACHE_LAYOUT, "mesh", *NO_RESULT)
TRAINED_OUTPUTS = ("policy", "second_policy", "rollouts.jsonl", "labels.jsonl",
                   "labels.jsonl.features.npz", "q_checkpoint", "q_training.json",
                   "step_outcomes.jsonl", "prm", "prm_training.json")
# What train_prm writes or extends: linked only once the source's train_prm has finished
# (its PRM_SUMMARY is there), else this run's train_prm would resume inside the source.
PRM_OUTPUTS = ("step_outcomes.jsonl", "prm")
PRM_SUMMARY = "prm_training.json"
NOTE = "reused_from.txt"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _settings(config: RunConfig) -> dict[str, Any]:
    """Every setting of the experiment by its dotted key. The launch settings are none:
    config.yaml leaves them out (``to_yaml``), so a saved run's read as the defaults
    whatever its processes were."""
    config = dataclasses.replace(config, distributed=DistributedConfig())
    return _flatten(OmegaConf.to_container(OmegaConf.structured(config), resolve=True))


def setting_values(config: RunConfig, keys: list[str]) -> dict[str, Any]:
    """``config``'s values of the dotted settings ``keys``, in that order."""
    settings = _settings(config)
    return {key: settings.get(key) for key in keys}


def differing_settings(ours: RunConfig, theirs: RunConfig) -> list[str]:
    """The dotted keys whose values differ between the two configs, sorted."""
    return _differing(_settings(ours), _settings(theirs))


def _differing(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """The keys of either settings map whose values differ (absent in one: differs)."""
    return sorted(key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key))


def evaluation_only(key: str) -> bool:
    """Whether the dotted setting ``key`` is one a run reusing another's may change."""
    return any(key == skip or key.startswith(skip + ".") for skip in EVALUATION_ONLY)


def _training_settings(config: RunConfig) -> dict[str, Any]:
    return {key: value for key, value in _settings(config).items() if not evaluation_only(key)}


def reuse_trained_outputs(source: Path, out: Path, config: RunConfig) -> list[str]:
    """Symlink ``source``'s trained outputs into ``out``; returns the names linked.

    ``source`` must hold a finished train_q stage (so nothing linked is still being
    written, and no stage of this run writes into a link) and a config that agrees with
    ``config`` on every setting outside EVALUATION_ONLY; otherwise ConfigError. A PRM
    whose training has not finished there is not linked, and the label stage's
    completions (step_outcomes.jsonl) are copied for this run's train_prm to extend.
    """
    source = source.absolute()
    resolved = source / "config.yaml"
    if not resolved.exists() or not training_finished(source):
        raise ConfigError(f"--reuse {source}: not a run folder with a finished train_q stage "
                          "(config.yaml and q_training.json); run its training stages first")
    try:
        theirs = _training_settings(load_config(resolved))
    except ConfigError as error:  # saved by a version that took what the checks now refuse
        raise ConfigError(f"--reuse {source}: its config.yaml no longer loads ({error}); "
                          "correct that setting there") from None
    differing = _differing(_training_settings(config), theirs)
    if differing:
        raise ConfigError(f"--reuse {source}: its run was trained with different settings for "
                          f"{', '.join(differing)}; only {', '.join(EVALUATION_ONLY)} may differ")
    prm_trained = (source / PRM_SUMMARY).exists()
    # A trained output of the folder's own (a killed run's Q̂ checkpoint) left beside links
    # to the source's would mix two runs: the source's q_training.json over its own Q̂.
    own = [name for name in TRAINED_OUTPUTS
           if (source / name).exists() and (out / name).exists()
           and not _links_to(out / name, source / name)
           and not (name in PRM_OUTPUTS and not prm_trained)]
    if own:
        raise ConfigError(f"--reuse {source}: {out} already holds trained outputs of its own "
                          f"({', '.join(own)}), which would be mixed with {source}'s; reuse "
                          "into a new --out, or delete them")
    linked = []
    for name in TRAINED_OUTPUTS:
        target, link = source / name, out / name
        if not target.exists() or link.exists():
            continue
        if name in PRM_OUTPUTS and not prm_trained:
            if target.is_file():
                shutil.copyfile(target, link)
            continue
        link.symlink_to(target, target_is_directory=target.is_dir())
        linked.append(name)
    (out / NOTE).write_text(f"{source}\n")
    return linked


def training_finished(folder: Path) -> bool:
    """Whether the run in ``folder`` finished its train_q stage, as --reuse needs."""
    return (folder / "q_training.json").exists()


def _links_to(link: Path, target: Path) -> bool:
    return link.is_symlink() and link.resolve() == target.resolve()
