"""experiments/bench_search.py end to end on a tiny random checkpoint: the five runs, the
same trees for ours, the counts and ratios its JSON reports (the figures themselves come
from the real model, in docs/paged_cache.md)."""

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

import pytest

from tests.support.tiny_checkpoints import save_tiny_checkpoint

SCRIPT = Path(__file__).parents[1] / "experiments/bench_search.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, list[str]]:
    """The script's JSON and printed lines for all five runs, small: 2 problems, K = 2,
    2 expansions each, 8-token steps (one run, shared by the tests: compiling is most of
    its 30-odd seconds)."""
    model = save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "llama", "llama")
    argv = [str(SCRIPT), "--model", str(model), "--runs", "abcde", "--problems", "2",
            "--expansions", "2", "--k", "2", "--step-tokens", "8"]
    out = io.StringIO()
    # As ``python experiments/bench_search.py`` has it: its folder's modules importable.
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setattr(sys, "argv", argv)
        patch.syspath_prepend(str(SCRIPT.parent))
        runpy.run_path(str(SCRIPT), run_name="__main__")
    lines = out.getvalue().strip().splitlines()
    return json.loads(lines[-1]), lines


def test_our_runs_grow_the_same_trees_at_the_same_cost(report):
    figures, _ = report
    runs = figures["runs"]
    assert figures["same_trees"] is True
    for name in ("b", "d"):
        for count in ("expansions", "prefilled_tokens", "generated_tokens", "step_tokens"):
            assert runs[name][count] == runs["a"][count], (name, count)
    # Ours prefill each prompt once; the peer re-encodes K copies of every node's text.
    assert runs["c"]["prefilled_tokens"] >= 2 * runs["a"]["prefilled_tokens"]
    # One max_len row a slot holds more than the pages a tree's distinct tokens take.
    assert runs["a"]["peak_kv_bytes"] < runs["b"]["peak_kv_bytes"]


def test_the_ratios_are_of_the_runs_it_reports(report):
    figures, lines = report
    runs = figures["runs"]
    for key, (slow, fast) in {"speedup_vs_reprefill": ("c", "a"),
                              "speedup_one_at_a_time": ("c", "d"),
                              "speedup_vs_slot_copy": ("b", "a")}.items():
        # The JSON rounds each wall-clock to 10 ms; the ratio is of the unrounded ones.
        slow_s, fast_s = runs[slow]["wall_s"], runs[fast]["wall_s"]
        low, high = (slow_s - 0.005) / (fast_s + 0.005), (slow_s + 0.005) / max(fast_s - 0.005,
                                                                                 1e-9)
        assert low <= figures[key] <= high, key
    assert 1.0 <= figures["z_held"] <= figures["kv_bytes_vs_distinct_tokens"] < 2.0
    assert any(line.startswith("z = ") for line in lines)
    # (e): the row slots that fit (a)'s peak KV are too few to hold one problem's search.
    assert figures["speedup_vs_slot_copy_equal_kv"] is None
    assert figures["settings"]["equal_kv_rows"] >= 1
