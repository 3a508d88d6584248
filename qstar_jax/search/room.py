"""A round's expander call when the KV cache may lack room for it: who waits, who restarts.

The expander raises ``NoRoom``, having changed nothing, when the cache cannot hold a
call's children. The round then expands the requests of the first half of its planners,
then of the first quarter, down to the first alone, then of each other planner alone;
the planners left out wait with their requests for a later round, when those that went
on have released nodes or finished. A waiting search keeps the cache its tree holds, so
the searches of a batch can together outgrow the cache with none able to go on alone:
then the last planner of the round that holds handles is restarted (its handles freed,
its search begun again from its root by a fresh planner), and the round is tried again,
down to the first planner, which is never restarted. Only a search that does not fit
alone in the cache raises the decoder's error.

Once a search has been restarted, the batch is known not to fit at once: that search
and every other holding nothing (not yet begun, or restarted before) are held back from
the rounds, and one rejoins, the earliest problem first, each time a search finishes
(or when every unfinished search is held back). Let back at once, they would take the
room again and other searches would be begun again in their place: SmolLM2's eight
searches in a search's worth of row slots were begun again 11 times so, giving up half
the tokens they kept (``experiments/bench_search.py --runs ae --e-wave 8``).

A search's tree does not depend on which round expands a node, nor on how often it was
begun (the samples are keyed by problem and node), so waiting and restarting change no
result but wall-clock: a restarted search counts the tokens, expansions and calls of the
attempt that finished, and the attempts given up show in wall-clock alone.
"""

from __future__ import annotations

from typing import Callable

from qstar_jax.search.interface import ExpandRequest, NoRoom, Step, StepExpander
from qstar_jax.search.planner import Planner


class RoomKeeper:
    """One search batch's requests left out of a round for want of room (by problem
    index) and its planners restarted to make room, over ``planners`` (the driver's list,
    ``make_planner(k)`` at position k), whose entries a restart replaces."""

    def __init__(self, expander: StepExpander, make_planner: Callable[[int], Planner],
                 planners: list[Planner]):
        self.expander, self.make_planner, self.planners = expander, make_planner, planners
        self.position = {planner.problem_index: k for k, planner in enumerate(planners)}
        self.waiting: dict[int, list[ExpandRequest]] = {}
        self.held_back: list[int] = []  # problem indices, in problem order (_hold_back)
        self._finished: set[int] = set()  # problems finished when last counted
        self.rounds_short = 0  # rounds that left some planners' requests out
        self.restarts = 0

    def proposals(self, planners: list[Planner]) -> list[list[ExpandRequest]]:
        """Each planner's requests for this round: those it waits with, else new ones;
        none from a planner held back. A search that finishes as it proposes (nothing
        left to ask) lets a held-back one in, which then proposes too."""
        proposals: dict[int, list[ExpandRequest]] = {}
        while True:
            self._let_back_in(planners)
            asked = [k for k, planner in enumerate(planners)
                     if k not in proposals and not self.holds_back(planner)]
            if not asked:
                return [proposals.get(k, []) for k in range(len(planners))]
            for k in asked:
                index = planners[k].problem_index
                proposals[k] = self.waiting.pop(index, None) or planners[k].propose()

    def holds_back(self, planner: Planner) -> bool:
        """Whether the planner's search waits to begin until another finishes."""
        return planner.problem_index in self.held_back

    def _let_back_in(self, planners: list[Planner]) -> None:
        """One held-back search rejoins for each search finished since last counted; the
        first of them when every one of ``planners`` (the unfinished) is held back."""
        finished = self._count_finished()
        del self.held_back[:len(finished)]
        if self.held_back and all(self.holds_back(planner) for planner in planners):
            del self.held_back[0]

    def _count_finished(self) -> set[int]:
        """The problems whose searches have finished since last counted."""
        finished = {planner.problem_index for planner in self.planners if planner.done}
        new, self._finished = finished - self._finished, finished
        return new

    def _hold_back(self, planners: list[Planner],
                   proposals: list[list[ExpandRequest]]) -> None:
        """Hold back every unfinished search that holds nothing (``planners``, the round's,
        are every unfinished one), keeping its requests for when it rejoins; only searches
        finishing from now on let them in."""
        self._count_finished()
        for k, planner in enumerate(planners):
            index = planner.problem_index
            if planner.done or planner.holds_handles or index in self.held_back:
                continue
            self.held_back.append(index)
            if proposals[k]:
                self.waiting[index], proposals[k] = proposals[k], []
        self.held_back.sort(key=self.position.__getitem__)

    def expand(self, planners: list[Planner], tallies: list,
               proposals: list[list[ExpandRequest]]) -> list[list[Step]]:
        """The children of the requests of the planners that go on this round, in order.
        ``proposals`` keeps only theirs: the others' wait, and a restarted planner's are
        dropped (it is replaced in ``planners``, its tally begun again)."""
        while isinstance(expanded := _expand_with_room(self.expander, proposals), NoRoom):
            if not self._restart_one(planners, tallies, proposals):
                raise expanded.__cause__ or expanded
        going, children = expanded
        left_out = [k for k, proposal in enumerate(proposals) if proposal and k not in going]
        for k in left_out:
            self.waiting[planners[k].problem_index] = proposals[k]
            proposals[k] = []
        self.rounds_short += bool(left_out)
        return children

    def _restart_one(self, planners: list[Planner], tallies: list,
                     proposals: list[list[ExpandRequest]]) -> bool:
        """Restarts the last planner after the first that holds handles, freeing them;
        False when none does."""
        for k in range(len(planners) - 1, 0, -1):
            if not planners[k].holds_handles:
                continue
            index = planners[k].problem_index
            self.expander.release(planners[k].abandon())
            fresh = self.make_planner(self.position[index])
            self.planners[self.position[index]] = planners[k] = fresh
            proposals[k] = []  # the round's requests are out of ``waiting`` (proposals)
            self._hold_back(planners, proposals)
            tallies[k].begin_again(self.expander, index)
            self.restarts += 1
            return True
        return False

    def report(self, description: str) -> str | None:
        """A line on what the batch waited for, or None when nothing did."""
        if not self.rounds_short and not self.restarts:
            return None
        return (f"[qstar] {description}: the KV cache was short of room: {self.rounds_short} "
                f"rounds left searches waiting, {self.restarts} searches were begun again "
                "(the same results, each counted for the attempt that finished; more "
                "decode.pages or decode.slots would run them side by side, and "
                "eval.problems_per_batch at python -m qstar_jax.memory_plan's "
                "searches_in_flight would spare the wait)")


def _expand_with_room(expander: StepExpander, proposals: list[list[ExpandRequest]]
                      ) -> tuple[set[int], list[list[Step]]] | NoRoom:
    """(the planners whose proposals were expanded, the children of their requests in
    order): every planner's where the cache has room, else the first half's, the first
    quarter's, ... the first's, then each other's alone; the last NoRoom when none fits."""
    asking = [k for k, proposal in enumerate(proposals) if proposal]
    sizes = [len(asking)]
    while sizes[-1] > 1:
        sizes.append(-(-sizes[-1] // 2))
    full = None
    for going in [asking[:n] for n in sizes] + [[k] for k in asking[1:]]:
        try:
            return set(going), checked_expand(expander,
                                              [r for k in going for r in proposals[k]])
        except NoRoom as error:
            full = error
    return full


def checked_expand(expander: StepExpander, requests: list[ExpandRequest]) -> list[list[Step]]:
    """``expander.expand(requests)``, its reply checked against the requests."""
    if not requests:
        return []
    children = expander.expand(requests)
    if len(children) != len(requests):
        raise ValueError(f"expander returned {len(children)} child lists for "
                         f"{len(requests)} requests")
    for request, steps in zip(requests, children):
        if len(steps) > request.num_children:
            raise ValueError(f"expander returned {len(steps)} steps for a request of "
                             f"{request.num_children} (problem {request.problem_index})")
    return children
