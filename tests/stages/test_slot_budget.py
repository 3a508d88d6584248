"""Evaluation sizes batches of problems by the cache slots one problem's search holds at
once; undercounting them runs the decoder's slot pool dry mid-evaluation. Each search's
slots sit on one data shard, so a batch is the shards times what one shard holds."""

import itertools
from types import SimpleNamespace

import pytest
from jax.sharding import AbstractMesh

from qstar_jax.config_loading import load_config
from qstar_jax.search.driver import run_search
from qstar_jax.search.process_utility import ZeroUtility
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.evaluate import planner_factory, slots_per_problem
from tests.search.fakes import FakeExpander, HiddenQ, child, tree

WIDTH, DEPTH = 5, 3


def full_tree():
    """Every state has WIDTH distinct children; traces end at DEPTH steps."""
    spec = {}
    for depth in range(DEPTH):
        for path in itertools.product(range(WIDTH), repeat=depth):
            prefix = " ".join(f"s{depth_}-{i}" for depth_, i in enumerate(path))
            spec[prefix] = [child(f"s{depth}-{i}", q=i / WIDTH, end=depth == DEPTH - 1)
                            for i in range(WIDTH)]
    return tree(spec)


@pytest.mark.parametrize("method, overrides, held", [
    ("best_of_n", ["eval.samples=5"], 10),  # 5 chain tips and the 5 steps forked from them
    ("beam", ["eval.beam_width=2", "eval.beam_k=4"], 10),  # 2 beams and their 8 children
    ("qstar", ["search.k=5", "search.max_expansions=3"], 14),  # 3 expansions of 5 children
])
def test_slots_per_problem_covers_what_a_search_holds_at_once(method, overrides, held):
    ctx = SimpleNamespace(config=load_config(None, overrides))
    expander = FakeExpander({0: full_tree()})
    run_search(1, planner_factory(ctx, method), expander, HiddenQ(), ZeroUtility(),
               progress=False)
    assert expander.peak_held == held
    assert slots_per_problem(ctx, method) >= held


def test_qstar_holds_k_slots_for_each_expansion_its_budget_allows():
    def slots(*overrides):
        return slots_per_problem(SimpleNamespace(config=load_config(None, list(overrides))),
                                 "qstar")
    assert slots("search.k=5", "search.max_expansions=3") == 5 * 3 + 1
    # 100 tokens pay for at most 100 // 5 + 1 = 21 expansions of 5 children.
    assert slots("search.k=5", "search.max_generated_tokens=100") == 5 * 21 + 1


def context(slots, data=None):
    mesh = None if data is None else AbstractMesh((data, 1), ("data", "model"))
    return RunContext(config=load_config(overrides=[f"decode.slots={slots}"]), out=None,
                      mesh=mesh)


def test_one_device_divides_the_pool():
    assert context(256).searches_per_batch(24) == 10
    assert context(16).searches_per_batch(24) == 1  # at least one


def test_a_search_must_fit_one_shard():
    # 256 slots over 4 shards: 64 a shard hold 2 searches of 24 each, not 256 // 24 = 10,
    # which would put 3 searches (72 slots) on some shard.
    assert context(256, data=4).searches_per_batch(24) == 8
    assert context(256, data=4).searches_per_batch(64) == 4
    assert context(256, data=2).searches_per_batch(24) == 10


def test_rollout_batches_on_pages_are_held_to_what_the_pages_hold_at_max_len():
    """collect's and label's rollouts (full_rows) may each fill a max_len row of their own;
    on a paged cache, whose slots are sized for evaluate's trees sharing their pages, a
    batch of them is also held to the pages: max_len // page_size = 10 a slot here."""
    def paged(pages, data=None):
        mesh = None if data is None else AbstractMesh((data, 1), ("data", "model"))
        return RunContext(config=load_config(overrides=[
            "decode.slots=900", "decode.max_len=160", "decode.page_size=16",
            f"decode.pages={pages}"]), out=None, mesh=mesh)

    assert paged(4000).searches_per_batch(9) == 100  # slots: 900 // 9
    assert paged(4000).searches_per_batch(9, full_rows=True) == 4000 // 90 == 44
    assert paged(50).searches_per_batch(9, full_rows=True) == 1  # at least one
    assert context(900).searches_per_batch(9, full_rows=True) == 100  # the slot pool
    # Over 2 shards each holds 2025 pages, 22 searches' rows: 44 in all (not 2 x 45, the
    # whole pool's 4050 // 90 on each shard), though the slots would hold 2 x (450 // 9).
    assert paged(4050, data=2).searches_per_batch(9, full_rows=True) == 44
    assert paged(4050, data=2).searches_per_batch(9) == 100
