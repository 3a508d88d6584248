"""Random batches of searches in random rooms (``search/room.py``): every schedule ends,
as the search with the largest need alone allows. In a room at least that large, each
search grows what it grows with room for all, and every handle is freed; in a smaller
room the run raises the decoder's error, and never hangs or fails otherwise."""

import contextlib
import signal
import zlib

import numpy as np
import pytest

from qstar_jax.search.aggregate import Agg
from qstar_jax.search.astar import AStarConfig, AStarPlanner, Budget
from qstar_jax.search.beam import BeamConfig, BeamPlanner
from qstar_jax.search.chains import greedy_planner
from qstar_jax.search.driver import run_search
from tests.search.fakes import (CacheFull, FakeExpander, HiddenQ, RoomLimitedExpander, child,
                                without_wall)

MAX_DEPTH = 5  # every child this deep or deeper ends its trace


class RandomTree(dict):
    """The K children of any step prefix, drawn when first asked from (seed, prefix),
    so a tree is the same whatever order a schedule asks in."""

    def __init__(self, seed: int, k: int, end_chance: float):
        super().__init__()
        self.seed, self.k, self.end_chance = seed, k, end_chance

    def __missing__(self, steps: tuple[str, ...]):
        rng = np.random.default_rng([self.seed, zlib.crc32(" ".join(steps).encode())])
        deep = len(steps) + 1 >= MAX_DEPTH
        children = [child(f"s{j}", float(rng.uniform()), tokens=int(rng.integers(1, 6)),
                          end=bool(deep or rng.uniform() < self.end_chance))
                    for j in range(self.k)]
        self[steps] = children
        return children


def random_batch(seed: int):
    """(trees by problem, a planner maker per problem taking the index to give it): three
    to seven problems, each an A* search, a beam or a greedy chain with its own K."""
    rng = np.random.default_rng(seed)
    trees, makers = {}, []
    for i in range(int(rng.integers(3, 8))):
        k = int(rng.integers(1, 5))
        trees[i] = RandomTree(seed * 100 + i, k, end_chance=float(rng.uniform(.05, .4)))
        kind = rng.choice(["astar", "astar", "astar", "beam", "greedy"])
        if kind == "astar":
            config = AStarConfig(k=k, n_complete=int(rng.integers(1, 4)), agg=Agg.sum,
                                 budget=Budget(max_expansions=int(rng.integers(1, 7))),
                                 expansions_per_round=int(rng.integers(1, 3)))
            makers.append(lambda index, config=config: AStarPlanner(index, config))
        elif kind == "beam":
            config = BeamConfig(beam_width=int(rng.integers(1, 3)), k=k, max_steps=MAX_DEPTH)
            makers.append(lambda index, config=config: BeamPlanner(index, config))
        else:
            makers.append(lambda index: greedy_planner(index, max_steps=MAX_DEPTH))
    return trees, makers


@contextlib.contextmanager
def ends_within(seconds: float):
    """Fails the test when the block has not ended within ``seconds``: a schedule that
    never ends, calling the expander or not (fake searches take milliseconds)."""
    def stuck(signum, frame):
        raise AssertionError(f"the searches had not ended after {seconds} s")
    previous = signal.signal(signal.SIGALRM, stuck)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("seed", range(100))
def test_random_searches_in_random_rooms_end_as_room_for_all_ends_them(seed):
    trees, makers = random_batch(seed)
    alone_needs = []
    for i, make in enumerate(makers):
        alone = FakeExpander({0: trees[i]}, prompt_tokens=7)
        run_search(1, make, alone, HiddenQ(), progress=False)
        alone_needs.append(alone.peak_held)
    def searched(expander):
        return run_search(len(makers), lambda i: makers[i](i), expander, HiddenQ(),
                          include_trees=True, progress=False)

    roomy = FakeExpander(trees, prompt_tokens=7)
    expected = searched(roomy)
    need = max(alone_needs)
    assert need <= roomy.peak_held
    rng = np.random.default_rng(seed)
    for room in sorted({need - 1, need, need + 1,
                        int(rng.integers(need, roomy.peak_held + 1)), roomy.peak_held}):
        tight = RoomLimitedExpander(trees, room)
        if room < need:
            with pytest.raises(CacheFull), ends_within(10):
                searched(tight)
            continue
        with ends_within(10):
            results = searched(tight)
        assert without_wall(results) == without_wall(expected), room
        assert tight.peak_held <= room and not tight.live, room
        assert (tight.refused == 0) == (room >= roomy.peak_held), room
