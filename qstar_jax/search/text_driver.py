"""Runs whole-text planners (MCTSr) side by side: one batched generator call per round.

The same loop and compute accounting as ``driver.run_search``; a round collects the text
requests of every unfinished planner instead of step expansions. ``expansions`` counts
the generation requests a problem made (each of one or more samples).
"""

from __future__ import annotations

from typing import Callable

from qstar_jax.search.driver import Tally, drive
from qstar_jax.search.interface import Generation, TextGenerator, TextRequest
from qstar_jax.search.planner import RoundPlanner, SearchResult

# Absorbs the completions of each text request it made.
TextPlanner = RoundPlanner[TextRequest, Generation]


def run_text_search(problems_count: int, make_planner: Callable[[int], TextPlanner],
                    generator: TextGenerator, *, include_trees: bool = False,
                    progress: bool = True, description: str = "search") -> list[SearchResult]:
    """Search ``problems_count`` problems; result i is that of ``make_planner(i)``."""
    def run_round(planners: list[TextPlanner], tallies: list[Tally]) -> None:
        proposals = [planner.propose() for planner in planners]
        requests = [request for proposal in proposals for request in proposal]
        generations = iter(_generate(generator, requests))
        for planner, tally, proposal in zip(planners, tallies, proposals):
            if proposal:
                planner.absorb([next(generations) for _ in proposal])
                tally.expansions += len(proposal)
            elif not planner.done:
                raise RuntimeError(f"planner of problem {planner.problem_index} proposed "
                                   "nothing but is not done")

    return drive([make_planner(i) for i in range(problems_count)], generator, run_round,
                 include_trees=include_trees, progress=progress, description=description)


def _generate(generator: TextGenerator, requests: list[TextRequest]) -> list[list[Generation]]:
    if not requests:
        return []
    out = generator.generate(requests)
    if len(out) != len(requests) or any(len(g) != r.num_samples for g, r in zip(out, requests)):
        raise ValueError(f"generator returned {[len(g) for g in out]} completions for "
                         f"requests of {[r.num_samples for r in requests]}")
    return out
