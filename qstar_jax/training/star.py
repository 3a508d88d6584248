"""STaR, self-taught reasoner (Zelikman et al. 2022): the policy learns from its own
right rationales.

Each round samples rationales for the training problems from the current policy and
keeps those whose answer is right. For a problem with no right rationale it samples
again with the answer given as a hint (rationalization) and keeps the rationales that
reach it, saved with the plain prompt: the hint is never in a saved example, and a
rationale that quotes the hint is dropped. The policy is then fine-tuned from the base
policy (not the last round's) on the round's kept examples.

A round's kept examples and its policy are written before the round counts as done, so
a killed run resumes at the first unfinished round.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from qstar_jax.outputs.durable import write_text_atomically


@dataclasses.dataclass(frozen=True, kw_only=True)
class StarProblem:
    id: str
    prompt: str  # what the policy is asked, and what a saved example holds
    hinted_prompt: str  # the same with the answer given as a hint
    hint: str  # the hint's text, which no saved example may contain


@dataclasses.dataclass(frozen=True, kw_only=True)
class Example:
    problem_id: str
    prompt: str
    rationale: tuple[str, ...]  # the steps
    rationalized: bool  # found with the hint


class RationaleSampler(Protocol):
    def sample(self, prompts: Sequence[str], n: int) -> list[list[tuple[str, ...]]]:
        """``n`` rationales (steps) per prompt from the current policy."""


def kept_examples(problems: Sequence[StarProblem], sampler: RationaleSampler, samples: int,
                  is_right: Callable[[StarProblem, tuple[str, ...]], bool],
                  rationalize: bool = True) -> list[Example]:
    """One round's kept set: each problem's first right rationale, else (with
    ``rationalize``) its first right rationale sampled with the hint."""
    def first_right(batch, drafts):
        return {p.id: next((r for r in rs if is_right(p, r)
                            and not any(p.hint in step for step in r)), None)
                for p, rs in zip(batch, drafts)}

    found = first_right(problems, sampler.sample([p.prompt for p in problems], samples))
    kept = [Example(problem_id=p.id, prompt=p.prompt, rationale=found[p.id],
                    rationalized=False) for p in problems if found[p.id] is not None]
    failed = [p for p in problems if found[p.id] is None]
    if rationalize and failed:
        hinted = first_right(failed, sampler.sample([p.hinted_prompt for p in failed], samples))
        kept += [Example(problem_id=p.id, prompt=p.prompt, rationale=hinted[p.id],
                         rationalized=True) for p in failed if hinted[p.id] is not None]
    return kept


@dataclasses.dataclass(frozen=True, kw_only=True)
class StarLoop:
    """``finetune(examples, round)`` trains a policy from the base one and returns it;
    ``save(policy, folder)`` / ``load(folder)`` keep it; ``sampler(policy)`` samples from
    it (the base policy is ``load(None)``'s)."""

    folder: Path
    rounds: int
    samples: int
    sampler: Callable[[Any], RationaleSampler]
    finetune: Callable[[list[Example], int], Any]
    save: Callable[[Any, Path], None]
    load: Callable[[Path | None], Any]
    is_right: Callable[[StarProblem, tuple[str, ...]], bool]
    rationalize: bool = True

    def run(self, problems: Sequence[StarProblem]) -> list[int]:
        """Every round not yet done; the number of kept examples of each round."""
        policy = self.load(None)
        for r in range(self.rounds):
            done = self.round_folder(r) / "done.json"
            if done.exists():
                policy = self.load(self.round_folder(r) / "policy")
                continue
            examples = kept_examples(problems, self.sampler(policy), self.samples,
                                     self.is_right, self.rationalize)
            write_text_atomically(self.round_folder(r) / "examples.jsonl", "".join(
                json.dumps(dataclasses.asdict(e)) + "\n" for e in examples))
            policy = self.finetune(examples, r)
            self.save(policy, self.round_folder(r) / "policy")
            write_text_atomically(done, json.dumps({"kept": len(examples)}))
        return [json.loads((self.round_folder(r) / "done.json").read_text())["kept"]
                for r in range(self.rounds)]

    def round_folder(self, r: int) -> Path:
        return self.folder / f"round_{r}"
