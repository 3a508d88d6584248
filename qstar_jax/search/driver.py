"""Runs many per-problem planners side by side, one batched decoder call per round.

Each round collects the requests of every unfinished planner, calls the expander once,
scores the new children with one Q̂ call and one process-utility call, hands the children
back to their planners and releases the handles they no longer need, in one call.

Q̂ scores only the children whose h their planner will read (``TreePlanner.q_reads``:
every child of a tree search, only the steps that end a chain for a chain planner under
h_agg=last); the others reach ``absorb`` with a NaN Q̂ and count no Q̂ call. A planner
that finds on finishing that it reads one of those after all (``take_owed_q``: a chain
planner's partial answer) has it scored in a second Q̂ call of the round. The process
utility scores every child: g folds every step's reward.

When the cache has no room for a round's children, some planners wait for a later round
and, where waiting searches hold the room, some searches begin again (``search/room.py``):
the same results, more wall-clock.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from qstar_jax.search.checks import checked_scores
from qstar_jax.search.interface import (ProcessUtility, QItem, QValueFunction, Step,
                                        StepExpander, TextGenerator)
from qstar_jax.search.planner import Planner, ScoredStep, SearchCounters, SearchResult
from qstar_jax.search.process_utility import ZeroUtility
from qstar_jax.search.room import RoomKeeper


def run_search(problems_count: int, make_planner: Callable[[int], Planner],
               expander: StepExpander, q_fn: QValueFunction | None,
               utility: ProcessUtility = ZeroUtility(), *, include_trees: bool = False,
               progress: bool = True, description: str = "search") -> list[SearchResult]:
    """Search ``problems_count`` problems; result i is that of ``make_planner(i)``.

    Planners must have distinct ``problem_index`` values: the expander counts tokens per
    problem index. ``q_fn=None`` sets every Q̂ to 0 and spends no Q̂ calls (for planners
    that do not use it, such as self-consistency). A tqdm bar counts finished problems
    and the rounds and tokens so far, and a line after it says whether searches waited
    for room in the cache.
    """
    planners = [make_planner(i) for i in range(problems_count)]
    room = RoomKeeper(expander, make_planner, planners)

    def run_round(active: list[Planner], tallies: list[Tally]) -> None:
        _run_round(active, tallies, expander, q_fn, utility, room)

    results = drive(planners, expander, run_round, include_trees=include_trees,
                    progress=progress, description=description)
    if progress and (line := room.report(description)):
        print(line, flush=True)
    return results


def drive(planners: list, tokens: StepExpander | TextGenerator,
          run_round: Callable[[list, list[Tally]], None], *, include_trees: bool,
          progress: bool, description: str) -> list[SearchResult]:
    """Rounds of ``run_round`` over the unfinished planners (each with its ``Tally``) until
    all are done; their results with the compute each spent, read from ``tokens``."""
    indices = [p.problem_index for p in planners]
    if len(set(indices)) != len(indices):
        raise ValueError(f"planners share problem indices {sorted(indices)}; run problems "
                         "with the same index (e.g. two methods) in separate run_search calls")
    tallies = [Tally(tokens.generated_tokens(i), tokens.prefilled_tokens(i)) for i in indices]
    start, rounds = time.perf_counter(), 0
    with tqdm(total=len(planners), desc=description, disable=not progress) as bar:
        while True:
            for planner, tally in zip(planners, tallies):
                if planner.done and tally.wall_s is None:
                    tally.wall_s = time.perf_counter() - start
                    bar.update(1)
            active = [slot for slot, p in enumerate(planners) if not p.done]
            if not active:
                break
            run_round([planners[slot] for slot in active], [tallies[slot] for slot in active])
            rounds += 1
            if progress:  # batched problems finish together: show the work as it goes
                generated = sum(t.generated(tokens, i) for t, i in zip(tallies, indices))
                bar.set_postfix_str(f"round {rounds}, {generated} tokens generated")
    return [dataclasses.replace(planner.result(include_tree=include_trees),
                                counters=tally.counters(tokens, index))
            for planner, tally, index in zip(planners, tallies, indices)]


@dataclasses.dataclass
class Tally:
    """What the driver counts for one problem while it runs."""

    generated_before: int
    prefilled_before: int
    q_calls: int = 0
    prm_calls: int = 0
    expansions: int = 0
    wall_s: float | None = None

    def begin_again(self, tokens: StepExpander | TextGenerator, index: int) -> None:
        """Count from now: the search of problem ``index`` begins again."""
        self.generated_before = tokens.generated_tokens(index)
        self.prefilled_before = tokens.prefilled_tokens(index)
        self.q_calls = self.prm_calls = self.expansions = 0

    def generated(self, tokens: StepExpander | TextGenerator, index: int) -> int:
        """Tokens charged to problem ``index`` since its search began."""
        return tokens.generated_tokens(index) - self.generated_before

    def counters(self, tokens: StepExpander | TextGenerator, index: int) -> SearchCounters:
        return SearchCounters(
            generated_tokens=self.generated(tokens, index),
            prefilled_tokens=tokens.prefilled_tokens(index) - self.prefilled_before,
            q_calls=self.q_calls, prm_calls=self.prm_calls, expansions=self.expansions,
            wall_s=self.wall_s)


def _run_round(planners: list[Planner], tallies: list[Tally], expander: StepExpander,
               q_fn: QValueFunction | None, utility: ProcessUtility, room: RoomKeeper) -> None:
    """One expander call (more where the cache is full: ``room``), one Q̂ call (of the
    children the planners read, ``_q_reads``; a second for what finished planners owe),
    one utility call, and a release call before the expander's (for the planners that
    have just finished) and after it (for the rest), where there are handles to free.
    Each planner expanded is told the tokens charged to its search so far, then absorbs."""
    proposals = room.proposals(planners)
    for planner, proposal in zip(planners, proposals):
        if not proposal and not planner.done and not room.holds_back(planner):
            raise RuntimeError(f"planner of problem {planner.problem_index} proposed nothing "
                               "but is not done")
    # What the planners that have just finished held is freed before the call, which
    # may need the room.
    finished = [handle for planner, proposal in zip(planners, proposals) if not proposal
                for handle in planner.take_released()]
    if finished:
        expander.release(finished)
    children = room.expand(planners, tallies, proposals)
    requests = [request for proposal in proposals for request in proposal]
    items = [QItem(problem_index=r.problem_index, prefix_steps=r.node.steps,
                   step_text=step.text, hidden=step.hidden, logprob=step.logprob)
             for r, steps in zip(requests, children) for step in steps]
    # The children whose Q̂ each planner reads are scored (none without a Q̂ function:
    # every Q̂ is 0); the others' is NaN, not scored and not read.
    groups = iter(children)
    theirs = [[next(groups) for _ in proposal] for proposal in proposals]
    reads = [_q_reads(planner, steps) if q_fn is not None and steps
             else [[False] * len(s) for s in steps] for planner, steps in zip(planners, theirs)]
    wanted = np.array([read for mine in reads for flags in mine for read in flags], bool)
    q_values = np.zeros(len(items)) if q_fn is None else np.full(len(items), np.nan)
    if q_fn is not None and wanted.any():
        q_values[wanted] = _scores(q_fn.score, [item for item, read in zip(items, wanted)
                                                if read], "QValueFunction.score")
    rewards = _scores(utility.step_rewards, items, "ProcessUtility.step_rewards")
    scored = iter(_scored_steps(children, q_values, rewards))
    released = []
    for planner, tally, proposal, mine_read in zip(planners, tallies, proposals, reads):
        if proposal:
            planner.note_generated_tokens(tally.generated(expander, planner.problem_index))
            mine = [next(scored) for _ in proposal]
            planner.absorb(mine)
            new = sum(len(steps) for steps in mine)
            tally.expansions += len(proposal)
            tally.q_calls += sum(map(sum, mine_read))
            tally.prm_calls += new if utility.calls_reward_model else 0
        released += planner.take_released()
    if q_fn is not None:
        _score_owed(planners, tallies, q_fn)
    if released:
        expander.release(released)


def _q_reads(planner: Planner, children: list[list[Step]]) -> list[list[bool]]:
    """``planner.q_reads(children)`` (every child where the planner has no such method),
    checked: a flag per child."""
    reads_of = getattr(planner, "q_reads", None)
    if reads_of is None:
        return [[True] * len(steps) for steps in children]
    reads = [[bool(read) for read in flags] for flags in reads_of(children)]
    if [len(flags) for flags in reads] != [len(steps) for steps in children]:
        raise ValueError(f"planner of problem {planner.problem_index} said which Q̂ it reads "
                         f"for {[len(flags) for flags in reads]} children of its requests, "
                         f"which have {[len(steps) for steps in children]}")
    return reads


def _score_owed(planners: list[Planner], tallies: list[Tally], q_fn: QValueFunction) -> None:
    """One Q̂ call for the steps the planners owe (``take_owed_q``), each counted as its
    planner's Q̂ call, the values handed back to each."""
    owed = [(planner, tally, getattr(planner, "take_owed_q", list)())
            for planner, tally in zip(planners, tallies)]
    items = [item for _, _, mine in owed for item in mine]
    if not items:
        return
    q_values = _scores(q_fn.score, items, "QValueFunction.score")
    flat = 0
    for planner, tally, mine in owed:
        if mine:
            planner.absorb_owed_q(q_values[flat:flat + len(mine)])
            tally.q_calls += len(mine)
            flat += len(mine)


def _scores(score: Callable[[Sequence[QItem]], np.ndarray], items: list[QItem],
            name: str) -> np.ndarray:
    """``score(items)``, checked: one finite float per item."""
    if not items:
        return np.zeros(0)
    return checked_scores(score(items), len(items), name)


def _scored_steps(children: list[list[Step]], q_values: np.ndarray,
                  rewards: np.ndarray) -> list[list[ScoredStep]]:
    """Each request's children with their Q̂ and reward; the scores are flat, in order."""
    scored, flat = [], 0
    for steps in children:
        scored.append([ScoredStep(step=step, q_value=float(q_values[flat + j]),
                                  reward=float(rewards[flat + j]))
                       for j, step in enumerate(steps)])
        flat += len(steps)
    return scored
