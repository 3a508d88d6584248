"""Stage train_prm: a learned process reward model, Math-Shepherd style; and the PRM that
``search.utility=prm`` scores steps with.

The learned PRM is a head on the policy's hidden states at a step's last token, trained
with BCE on per-step labels from M completions per step (``labels_shepherd``). Search
scores a step from the hidden state the decoder computed while sampling it, so a PRM
call costs no forward pass. ``search.prm_model`` names either such a directory (it holds
``prm.json``) or a Math-Shepherd checkpoint (an HF directory, a .gguf file, an alias),
scored by ``ShepherdPRM``; unset with train_prm in the stages, it is this run's own.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from flax import nnx

from qstar_jax.config import ConfigError, SearchConfig
from qstar_jax.models.loading import PACKAGED_MODELS
from qstar_jax.outputs.durable import write_text_atomically
from qstar_jax.parallel import is_writer
from qstar_jax.policy.rollouts import DecoderRolloutSampler
from qstar_jax.qvalue.checkpoint import BackboneIdentity, QCheckpointer, load_q_head
from qstar_jax.qvalue.dataset import load_labelled
from qstar_jax.qvalue.head import QHead, QHeadConfig, QHeadModel
from qstar_jax.qvalue.labels_shepherd import (OutcomeJournal, missing_outcomes,
                                              sample_outcomes, shepherd_labels)
from qstar_jax.qvalue.prm import ShepherdPRM
from qstar_jax.qvalue.rollouts import read_rollouts
from qstar_jax.qvalue.scorers import PolicyHiddenPRM
from qstar_jax.qvalue.train import train_q_model
from qstar_jax.search.interface import ProcessRewardModel
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.rollouts import labelled_pairs, pairs_per_call, reward_fn
from qstar_jax.stages.train_q import train_config, write_training_summary

PRM_DIR = "prm"  # in the run folder: the learned PRM
LEARNED_PRM_MARKER = "prm.json"  # what tells a learned PRM's directory apart
SUMMARY_FILE = "prm_training.json"


def train_prm(ctx: RunContext) -> None:
    """Label every (s, a) of the rollouts by its completions (those the label stage
    recorded, the rest sampled now), train the head, write ``<out>/prm``."""
    done = ctx.out / SUMMARY_FILE
    if done.exists():
        return
    cfg = ctx.config
    steps, features = load_labelled(ctx.labels_path)
    problems = ctx.train_problems()
    pairs = labelled_pairs(ctx, problems, read_rollouts(ctx.rollouts_path))
    if features is None or [p.key for p in pairs] != [
            (s.problem_index, s.prefix_steps, s.step_text) for s in steps]:
        raise ValueError(f"{ctx.labels_path} and its features do not belong to the rollouts "
                         f"in {ctx.rollouts_path}; rerun the label stage")
    journal = OutcomeJournal(ctx.step_outcomes_path)
    missing = missing_outcomes(pairs, journal)
    if missing:  # another label method, UCT rollouts, or a label stage killed mid-batch
        sampler = DecoderRolloutSampler(ctx.runtime(problems), max_steps=cfg.decode.max_steps)
        sample_outcomes(missing, sampler, reward_fn(ctx, problems), journal,
                        completions=cfg.label.rollouts_per_state,
                        temperature=cfg.collect.temperature, max_steps=cfg.decode.max_steps,
                        batch_pairs=pairs_per_call(ctx))
        journal.close()
    estimation = cfg.prm_training.labels.value
    labels = np.array([s.label for s in shepherd_labels(pairs, journal.known(), estimation)],
                      np.float32)
    directory = ctx.out / PRM_DIR
    # Hidden states alone, so that search scores a step with what the decoder computed.
    width = ctx.policy.config.hidden_size
    head = QHead(QHeadConfig(hidden_size=width, mlp_widths=(width,) * cfg.q_train.hidden_layers,
                             output="sigmoid"), rngs=nnx.Rngs(cfg.seed))
    settings = dataclasses.replace(train_config(ctx, len(labels)), loss="bce")
    result = train_learned_prm(head, features, labels, settings, directory,
                               BackboneIdentity.of_policy(ctx.policy.config), mesh=ctx.mesh)
    if is_writer():
        write_text_atomically(directory / LEARNED_PRM_MARKER, json.dumps(
            {"kind": "head on the policy's hidden states", "labels": estimation,
             "completions_per_step": cfg.label.rollouts_per_state}) + "\n")
    write_training_summary(done, result, labels)


def train_learned_prm(head: QHead, features: np.ndarray, labels: np.ndarray, settings,
                      directory: Path, identity: BackboneIdentity, *, mesh=None):
    """Fit ``head`` (output sigmoid) to the labels with BCE, checkpointed with orbax in
    ``directory / "checkpoint"`` (a killed stage resumes); returns the TrainResult."""
    with QCheckpointer(directory / "checkpoint", identity=identity,
                       head_config=head.head_config) as checkpointer:
        return train_q_model(head, features, labels, settings, checkpointer=checkpointer,
                             mesh=mesh, progress_label="PRM training")


def load_learned_prm(directory: str | Path, *, policy_config, mesh=None) -> PolicyHiddenPRM:
    """The PRM train_prm wrote to ``directory``, for the policy with ``policy_config`` (on
    ``mesh``, when given)."""
    head = load_q_head(Path(directory) / "checkpoint", policy_config=policy_config, mesh=mesh)
    return PolicyHiddenPRM(QHeadModel(head))


def prm_kind(source: str) -> str:
    """"learned" for a directory train_prm wrote, "shepherd" for a Math-Shepherd
    checkpoint; anything else is a ConfigError naming both."""
    path = Path(source)
    if (path / LEARNED_PRM_MARKER).is_file():
        return "learned"
    if (source in PACKAGED_MODELS or (path / "config.json").is_file()
            or (path.is_file() and path.suffix == ".gguf")):
        return "shepherd"
    raise ConfigError(f"search.prm_model={source} is neither a PRM the train_prm stage wrote "
                      f"(a directory holding {LEARNED_PRM_MARKER}) nor a Math-Shepherd "
                      "checkpoint (an HF directory with config.json, a .gguf file or one of "
                      f"{sorted(PACKAGED_MODELS)})")


def load_prm(ctx: RunContext, problems) -> ProcessRewardModel:
    """The PRM search.prm_model names, or this run's learned one when it names none."""
    source = ctx.config.search.prm_model
    if source is None:
        directory = ctx.out / PRM_DIR
        if not (directory / LEARNED_PRM_MARKER).is_file():
            raise ConfigError(f"search.utility=prm with no search.prm_model reads this run's "
                              f"learned PRM, but {directory} holds none; list train_prm in "
                              "stages before evaluate")
        return load_learned_prm(directory, policy_config=ctx.policy.config, mesh=ctx.mesh)
    if prm_kind(source) == "learned":
        return load_learned_prm(source, policy_config=ctx.policy.config, mesh=ctx.mesh)
    return shepherd_prm(ctx, problems)


def shepherd_prm(ctx: RunContext, problems) -> ShepherdPRM:
    s = ctx.config.search
    loaded = ctx.load(s.prm_model)
    good, bad = prm_label_ids(loaded.tokenizer.encode, s)
    return ShepherdPRM(loaded.model, encode=loaded.tokenizer.encode_input,
                       question=lambda i: problems[i].question, step_tag=s.prm_step_tag,
                       good_token_id=good, bad_token_id=bad)


def prm_label_ids(encode, search: SearchConfig) -> tuple[int, int]:
    """The ids of ``search.prm_good_token`` and ``prm_bad_token`` under the Math-Shepherd
    PRM's tokenizer (``encode``); a label of any other length than one token is refused."""
    def token_id(key: str) -> int:
        text = getattr(search, key)
        ids = encode(text)
        if len(ids) != 1:
            raise ConfigError(f"search.{key}={text!r} is {len(ids)} tokens for the tokenizer of "
                              f"search.prm_model={search.prm_model}; give a single-token label")
        return ids[0]

    return token_id("prm_good_token"), token_id("prm_bad_token")
