"""``results.jsonl``: one line per (method, problem), appended and fsynced as each
problem finishes, so a killed run loses nothing finished and resumes where it stopped.

It is read and written through ``outputs.durable``: a torn last line (a kill mid-write) is
skipped and cut off before the next append; a damaged line anywhere else is an error.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable

from qstar_jax.outputs import durable


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProblemResult:
    method: str
    problem_id: str
    correct: bool
    answer: str | None
    completion: str
    completed: bool
    generated_tokens: int
    prefilled_tokens: int
    q_calls: int
    prm_calls: int
    expansions: int
    wall_s: float
    # Chain methods: whether any of the complete chains is right (pass@N, a ceiling read
    # with the grader); None for the others.
    any_correct: bool | None = None
    # Tasks graded by running tests (code): how the tests ended (passed, failed, timeout,
    # error, memory_exceeded, killed, no_code); None for tasks graded by comparison.
    grade_status: str | None = None
    # Tree of Thoughts DFS: the states eval.tot.threshold pruned; None for the others.
    pruned: int | None = None
    # Tokens the uncached scorers read in forward passes of their own (prompt, steps and
    # step of each child scored, padding aside): Q̂'s second policy or separate backbone,
    # and a Math-Shepherd PRM. A Q̂ or learned PRM on the policy's hidden states reads
    # none (0). None in a log written before they were counted.
    q_scorer_tokens: int | None = None
    prm_scorer_tokens: int | None = None

    @property
    def scorer_tokens(self) -> int | None:
        """Both scorers' tokens; None where either was not counted."""
        if self.q_scorer_tokens is None or self.prm_scorer_tokens is None:
            return None
        return self.q_scorer_tokens + self.prm_scorer_tokens

    @property
    def forward_tokens(self) -> int | None:
        """Every token a forward pass read for this problem: generated, prefilled and the
        scorers'; None where the scorers' were not counted."""
        scorer = self.scorer_tokens
        return None if scorer is None else self.generated_tokens + self.prefilled_tokens + scorer


class ResultsLog:
    """Append-only per-problem results; what is on disk is what is done."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> list[ProblemResult]:
        records, _ = durable.read_jsonl(self.path)
        return [ProblemResult(**record) for record in records]

    def done(self, method: str) -> set[str]:
        return {r.problem_id for r in self.read() if r.method == method}

    def append(self, results: Iterable[ProblemResult]) -> None:
        with durable.open_for_append(self.path) as f:
            durable.append_records(f, [dataclasses.asdict(r) for r in results])

    def drop(self, method: str) -> None:
        """Remove every result of ``method`` (to evaluate it again another way)."""
        self._rewrite([r for r in self.read() if r.method != method])

    def _rewrite(self, results: list[ProblemResult]) -> None:
        text = "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in results)
        durable.write_text_atomically(self.path, text)
