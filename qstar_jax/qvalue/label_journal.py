"""Labels as they are estimated, journalled so a killed label stage resumes.

Estimating labels costs rollouts for every (s, a); the journal appends each finished
batch of labels (fsynced) to a JSONL file, and a rerun takes those labels as known and
estimates only the rest. Rollout sampling keys come from the content of each item (not
from how items are batched), so a resumed stage produces the labels an uninterrupted one
would have.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Sequence

from qstar_jax.outputs import durable
from qstar_jax.qvalue.dataset import StepPair


class LabelJournal:
    """An append-only JSONL file of (pair, label) records; a torn last line is ignored.
    The file is opened for appending once, at the first ``record``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file: IO[str] | None = None

    def known(self) -> dict[tuple, float]:
        """Labels recorded so far, by pair key."""
        records, _ = durable.read_jsonl(self.path)
        return {(r["problem_index"], tuple(r["prefix_steps"]), r["step_text"]): float(r["label"])
                for r in records}

    def record(self, pairs: Sequence[StepPair], labels: Sequence[float]) -> None:
        if self._file is None:
            self._file = durable.open_for_append(self.path)
        durable.append_records(self._file, [
            {"problem_index": p.problem_index, "prefix_steps": list(p.prefix_steps),
             "step_text": p.step_text, "label": float(y)} for p, y in zip(pairs, labels)])

    def remove(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        durable.remove_file(self.path)


def starting_labels(pairs: Sequence[StepPair],
                    journal: LabelJournal | None) -> list[float | None]:
    """Each pair's label where it is known before any rollout: a terminal step's reward,
    or a label the journal recorded; None where it must be estimated."""
    known = journal.known() if journal is not None else {}
    return [p.terminal_reward if p.terminal_reward is not None else known.get(p.key)
            for p in pairs]
