"""(state, action) pairs taken from rollouts, and the labelled dataset Q̂ trains on.

A state is a problem plus the steps so far; an action is the next step. The labelled
dataset is a JSONL file of records with, optionally, the policy's hidden state at each
step's last token in a companion ``.npz`` (row i belongs to record i).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from qstar_jax.outputs import durable
from qstar_jax.qvalue.rollouts import ProblemRollouts


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepPair:
    """The pair (s, a): state s = problem ⊕ ``prefix_steps``, action a = ``step_text``.

    ``terminal_reward`` is the trace's reward when a ended its trace, else None.
    """

    problem_index: int
    prefix_steps: tuple[str, ...]
    step_text: str
    terminal_reward: float | None = None

    @property
    def next_state(self) -> tuple[str, ...]:
        """The steps of s' = s ⊕ a."""
        return (*self.prefix_steps, self.step_text)

    @property
    def key(self) -> tuple[int, tuple[str, ...], str]:
        return self.problem_index, self.prefix_steps, self.step_text


def step_pairs(rollouts: Iterable[ProblemRollouts]) -> list[StepPair]:
    """Every distinct (s, a) along the rollouts' traces, in first-seen order."""
    pairs: dict[tuple, StepPair] = {}
    for record in rollouts:
        for rollout in record.rollouts:
            last = len(rollout.steps) - 1
            for t, step in enumerate(rollout.steps):
                pair = StepPair(problem_index=record.problem_index,
                                prefix_steps=rollout.steps[:t], step_text=step,
                                terminal_reward=rollout.reward if t == last else None)
                pairs.setdefault(pair.key, pair)
    return list(pairs.values())


def trace_continuations(rollouts: Iterable[ProblemRollouts]
                        ) -> dict[tuple[int, tuple[str, ...], str], list[tuple[int, float]]]:
    """For each (s, a) along the traces (keyed as ``StepPair.key``), one (steps after a,
    the trace's reward) per trace through it: what the trace did after s' = s ⊕ a is a
    rollout from s' by the policy that wrote it."""
    out: dict[tuple, list[tuple[int, float]]] = {}
    for record in rollouts:
        for rollout in record.rollouts:
            for t, step in enumerate(rollout.steps):
                key = (record.problem_index, rollout.steps[:t], step)
                out.setdefault(key, []).append((len(rollout.steps) - t - 1, rollout.reward))
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelledStep:
    problem_index: int
    prefix_steps: tuple[str, ...]
    step_text: str
    label: float


def labelled(pairs: Sequence[StepPair], labels: Sequence[float]) -> list[LabelledStep]:
    return [LabelledStep(problem_index=p.problem_index, prefix_steps=p.prefix_steps,
                         step_text=p.step_text, label=float(y)) for p, y in zip(pairs, labels)]


def features_path(path: str | os.PathLike) -> Path:
    """Where the hidden features of the dataset at ``path`` live."""
    path = Path(path)
    return path.with_name(path.name + ".features.npz")


def save_labelled(path: str | os.PathLike, steps: Sequence[LabelledStep], *,
                  features: np.ndarray | None = None,
                  step_logprobs: np.ndarray | None = None) -> None:
    """Write the dataset atomically; ``features`` [N, E] (and the steps' log-probabilities
    under the policy, [N]) go to ``features_path(path)``."""
    if features is not None and (features.ndim != 2 or len(features) != len(steps)):
        raise ValueError(f"features must be [N={len(steps)}, E], got shape {features.shape}")
    if step_logprobs is not None and (features is None or step_logprobs.shape != (len(steps),)):
        raise ValueError(f"step_logprobs go with features and must be [N={len(steps)}]")
    lines = "".join(json.dumps(dataclasses.asdict(s), ensure_ascii=False) + "\n" for s in steps)
    if features is not None:
        buffer = io.BytesIO()
        np.savez(buffer, features=features, **(
            {} if step_logprobs is None else {"step_logprobs": step_logprobs}))
        durable.write_atomically(features_path(path), lambda f: f.write(buffer.getvalue()))
    else:
        durable.remove_file(features_path(path))  # stale rows would pair with new records
    durable.write_text_atomically(path, lines)


def load_labelled(path: str | os.PathLike) -> tuple[list[LabelledStep], np.ndarray | None]:
    """The records at ``path`` and their features [N, E] (None when none were saved); a
    DamagedOutputError where the two do not read back whole, or not as one pair."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no labelled dataset at {path}")
    records, _ = durable.read_jsonl(path, remedy=_relabel(path))
    steps = [LabelledStep(problem_index=int(r["problem_index"]),
                          prefix_steps=tuple(r["prefix_steps"]), step_text=r["step_text"],
                          label=float(r["label"])) for r in records]
    arrays = _saved_arrays(path, "features")
    if arrays is None:
        return steps, None
    features = arrays["features"]
    if len(features) != len(steps):
        raise durable.DamagedOutputError(
            f"{features_path(path)} has {len(features)} feature rows for {len(steps)} records "
            f"in {path}: the two were not saved together; {_relabel(path)}")
    return steps, features


def load_step_logprobs(path: str | os.PathLike) -> np.ndarray | None:
    """The labelled steps' log-probabilities under the policy [N], saved with the features
    (None when none were saved)."""
    arrays = _saved_arrays(path, "step_logprobs")
    return None if arrays is None else arrays.get("step_logprobs")


def _saved_arrays(path: str | os.PathLike, *names: str) -> dict[str, np.ndarray] | None:
    """Those of the arrays ``names`` saved beside the labelled dataset at ``path`` (None:
    none were saved), each read only when asked for: the features run to N x hidden."""
    feature_file = features_path(path)
    if not feature_file.exists():
        return None
    try:
        with np.load(feature_file) as archive:
            arrays = {name: archive[name] for name in names if name in archive.files}
    # What numpy and zipfile raise on a cut or overwritten archive.
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise durable.DamagedOutputError(
            f"cannot read {feature_file} ({durable.first_line(error)}): it is damaged; "
            f"{_relabel(path)}") from error
    return arrays


def _relabel(path: str | os.PathLike) -> str:
    """What to do about a damaged labelled dataset at ``path``."""
    return f"delete {path} so that stage label labels the rollouts again"
