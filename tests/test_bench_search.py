"""experiments/bench_search.py end to end on a tiny random checkpoint: the five runs, the
same trees for ours, the counts and ratios its JSON reports (the figures themselves come
from the real model, in docs/paged_cache.md)."""

import contextlib
import io
import json
import re
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.support.tiny_checkpoints import save_tiny_checkpoint

SCRIPT = Path(__file__).parents[1] / "experiments/bench_search.py"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "llama", "llama")


def run_bench(model: Path, *options: str) -> tuple[dict, list[str]]:
    """The script's JSON and printed lines, small: 2 problems, K = 2, 2 expansions each,
    8-token steps."""
    argv = [str(SCRIPT), "--model", str(model), "--problems", "2", "--expansions", "2",
            "--k", "2", "--step-tokens", "8", *options]
    out = io.StringIO()
    # As ``python experiments/bench_search.py`` has it: its folder's modules importable.
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setattr(sys, "argv", argv)
        patch.syspath_prepend(str(SCRIPT.parent))
        runpy.run_path(str(SCRIPT), run_name="__main__")
    lines = out.getvalue().strip().splitlines()
    return json.loads(lines[-1]), lines


@pytest.fixture(scope="module")
def report(tiny_model) -> tuple[dict, list[str]]:
    """All five runs (one run, shared by the tests: compiling is most of its 30-odd
    seconds)."""
    return run_bench(tiny_model, "--runs", "abcde")


def trees_of(lines: list[str]) -> dict[str, str]:
    """Each run's tree hash, from the script's "trees:" line."""
    trees_line, = [line for line in lines if line.startswith("trees: ")]
    return dict(re.findall(r"\((\w)\) (\w+)", trees_line))


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


def test_a_pool_short_of_the_peak_makes_searches_wait_and_grow_the_same_trees(
        report, tiny_model):
    """(a) on a page fewer than it peaks at: some of its calls find the pool full (so do
    the compiling pass's), the searches wait for room and grow the same trees, in no more
    pages than the pool has. (Two fewer, and the two problems' trees together outgrow the
    pool: neither's round fits alone, and the search stops with the pool's error.)"""
    figures, lines = report
    token_bytes, page_size = figures["settings"]["kv_token_bytes"], figures["settings"][
        "page_size"]
    peak = figures["runs"]["a"]["peak_kv_bytes"] // (page_size * token_bytes)
    assert figures["runs"]["a"]["refused_calls"] == 0
    tight, tight_lines = run_bench(tiny_model, "--runs", "a", "--pages", str(peak - 1))
    assert tight["settings"]["pages"] == peak - 1
    assert tight["runs"]["a"]["refused_calls"] > 0
    assert tight["runs"]["a"]["peak_kv_bytes"] <= (peak - 1) * page_size * token_bytes
    assert trees_of(tight_lines)["a"] == trees_of(lines)["a"]
    passes = [line for line in tight_lines if line.startswith("(a) ")]
    assert all(not line.endswith(" 0 calls found the cache full") for line in passes)


def test_row_slots_in_as_few_bytes_as_pages_make_searches_wait_and_begin_again(tiny_model):
    """(e) on 4 problems: (a)'s peak KV holds 4 max_len rows, a search's worth, so the
    row-slot searches, all begun at once (``--e-wave 4``), wait for rows and some begin
    again; they grow (a)'s trees, counted for the attempts that finished, and the given-up
    attempts' tokens are reported apart."""
    figures, lines = run_bench(tiny_model, "--problems", "4", "--runs", "ae", "--e-wave", "4")
    runs = figures["runs"]
    assert (figures["settings"]["equal_kv_rows"], figures["settings"]["e_wave"]) == (4, 4)
    assert "(e) 4 max_len rows in (a)'s peak KV, 4.0 slots a problem at (a)'s peak: waves of 4" \
        in lines
    assert trees_of(lines)["e"] == trees_of(lines)["a"] and figures["same_trees"] is True
    assert runs["e"]["refused_calls"] > 0 and runs["e"]["begun_again"] > 0
    assert runs["e"]["given_up_tokens"] > 0
    for count in ("expansions", "prefilled_tokens", "generated_tokens"):
        assert runs["e"][count] == runs["a"][count], count
    # The step tokens count every step handed back, the given-up attempts' too.
    assert runs["e"]["step_tokens"] > runs["a"]["step_tokens"]
    assert (runs["a"]["refused_calls"], runs["a"]["begun_again"],
            runs["a"]["given_up_tokens"]) == (0, 0, 0)
    assert runs["e"]["peak_kv_bytes"] <= runs["a"]["peak_kv_bytes"]
    assert figures["speedup_vs_slot_copy_equal_kv"] > 0
    e_passes = [line for line in lines if line.startswith("(e) ") and " pass " in line]
    assert len(e_passes) == 2 and all(
        f"{runs['e']['begun_again']} searches begun again "
        f"({runs['e']['given_up_tokens']} tokens given up)" in line for line in e_passes)


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
    # The held pages' places: distinct tokens, tokens held twice, and page ends, at most
    # one partly filled page a live slot.
    places = figures["held_places"]
    held = places["distinct"] + places["held_twice"] + places["unfilled"]
    assert abs(held / places["distinct"] - figures["z_held"]) < 1e-3
    assert places["held_twice"] >= 0
    page_size = figures["settings"]["page_size"]
    assert 0 <= places["unfilled"] <= places["slots"] * (page_size - 1)
    # z is (a)'s peak pages' token places over the distinct tokens then, as printed.
    z_line, = [line for line in lines if line.startswith("z = ")]
    pages, size, distinct = map(int, re.match(
        r"z = (\d+) peak pages x (\d+) / (\d+) distinct tokens = ", z_line).groups())
    assert size == page_size and figures["kv_bytes_vs_distinct_tokens"] == round(
        pages * size / distinct, 3)
    # (e): the row slots that fit (a)'s peak KV are too few to hold one problem's search
    # (test_row_slots_in_as_few_bytes_as_pages_make_searches_wait_and_begin_again gives
    # them enough).
    assert figures["speedup_vs_slot_copy_equal_kv"] is None
    e_line, = [line for line in lines if "do not hold one problem's search" in line]
    assert e_line.startswith(f"(e) {figures['settings']['equal_kv_rows']} max_len rows")
    assert figures["settings"]["equal_kv_rows"] >= 1


def test_the_peak_kv_bytes_are_pages_or_rows_at_the_models_bytes_a_token(report):
    """The tiny llama's token takes 2 x 2 layers x 2 KV heads x 16 x 4 bytes (float32);
    (a) peaks at its peak pages' bytes, (b) at a max_len row's for each slot (a) peaked
    at, and (e) gets as many rows as (a)'s peak bytes hold; max_len is the longest prompt
    and 2 capped steps of 8 tokens, in whole pages; the searches never stop early (5
    complete trajectories, more than 2 expansions of 2 children make)."""
    figures, lines = report
    runs, settings = figures["runs"], figures["settings"]
    assert settings["dtype"] == "float32"
    token_bytes = 2 * 2 * 2 * 16 * 4
    assert settings["kv_token_bytes"] == token_bytes
    page_size, max_len = settings["page_size"], settings["max_len"]
    longest, = map(int, re.search(r"\(prompts \d+-(\d+) tokens\)", lines[0]).groups())
    assert max_len == page_size * -(-(longest + 2 * 8) // page_size)
    assert f"max_len {max_len}, {page_size}-token pages" in lines[0]
    z_line, = [line for line in lines if line.startswith("z = ")]
    pages = int(re.match(r"z = (\d+) peak pages", z_line).group(1))
    assert runs["a"]["peak_kv_bytes"] == pages * page_size * token_bytes
    e_line, = [line for line in lines if "max_len rows in (a)'s peak KV" in line]
    rows, slots_a_problem = re.match(r"\(e\) (\d+) max_len rows in \(a\)'s peak KV, "
                                     r"([\d.]+) slots a problem", e_line).groups()
    assert runs["b"]["peak_kv_bytes"] == round(2 * float(slots_a_problem)) * max_len * token_bytes
    assert int(rows) == settings["equal_kv_rows"] == runs["a"]["peak_kv_bytes"] // (
        max_len * token_bytes)
    assert settings["n_complete"] == 2 * 2 + 1


def test_a_page_fills_as_many_places_as_the_slot_keeping_most_tokens_in_it(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from metered_runtime import filled_places
    # 4-token pages: slot 0 holds 6 tokens in pages 0 and 1; slot 1, forked from it and
    # written on, 7 in page 0 (shared) and page 2 (its copy of page 1 and one token more);
    # slot 2, forked from slot 0 before its last two tokens, 5 in pages 0 and 1.
    table = np.array([[0, 1, 9], [0, 2, 9], [0, 1, 9]], np.int32)
    held = np.array([2, 2, 2])
    assert filled_places(table, held, 4, [0, 1, 2], [6, 7, 5], num_pages=9) == 4 + 2 + 3
    assert filled_places(table, held, 4, [2], [5], num_pages=9) == 4 + 1
    assert filled_places(table, held, 4, [], [], num_pages=9) == 0


def test_a_pass_searches_in_waves_and_sums_each_results_counts(monkeypatch):
    """search() over 5 problems in waves of 2 runs run_search on planners [0, 1], [2, 3],
    [4], every step handed back counted; figures() sums the results' counters."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import search_passes

    calls = []

    def run_search(count, make_planner, expander, q_fn, *, include_trees, progress):
        planners = [make_planner(i) for i in range(count)]
        calls.append(planners)
        children = expander.expand(planners)  # each planner's one request: two steps
        return [SimpleNamespace(tree={"planner": p, "steps": len(c)}, counters=SimpleNamespace(
            expansions=1, prefilled_tokens=10 * p, generated_tokens=p + 1))
                for p, c in zip(planners, children)]

    class Expander:
        def expand(self, requests):
            return [[SimpleNamespace(token_ids=[7] * r), SimpleNamespace(token_ids=[8])]
                    for r in requests]

        def generated_tokens(self, problem_index):
            return problem_index + 1  # what each result counts: nothing given up

    monkeypatch.setattr("qstar_jax.search.driver.run_search", run_search)
    result = search_passes.search(Expander(), lambda i: i, 5, wave=2)
    assert calls == [[0, 1], [2, 3], [4]]
    assert result.step_tokens == (0 + 1 + 2 + 3 + 4) + 5  # r tokens and 1 each request
    figures = result.figures(first_pass_s=2.5, peak_kv_bytes=4096)
    assert (figures.expansions, figures.prefilled_tokens, figures.generated_tokens) == (
        5, 100, 15)
    assert (figures.wall_s, figures.first_pass_s, figures.step_tokens,
            figures.peak_kv_bytes) == (result.wall_s, 2.5, 10 + 5, 4096)
    assert (figures.begun_again, figures.given_up_tokens) == (0, 0)
    again = search_passes.search(Expander(), lambda i: i, 5, wave=5)
    assert calls[-1] == [0, 1, 2, 3, 4] and again.trees_hash == result.trees_hash
    other = search_passes.search(Expander(), lambda i: 4 - i, 5, wave=5)
    assert other.trees_hash != result.trees_hash  # the same trees in another order


def test_distinct_tokens_count_each_problems_token_trie_and_the_places_split(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from metered_runtime import HeldPages, distinct_tokens
    # Problem 0's two slots share 5, 6 and end 7 and 8; problem 1's slot holds 5, 6 again,
    # distinct for its own problem: 4 + 2 tokens (the markers -1 and -2 not counted).
    assert distinct_tokens([(-1, 5, 6, 7), (-1, 5, 6, 8), (-2, 5, 6)]) == 6
    assert distinct_tokens([(-1, 5, 6, 7), (-1, 5, 6, 7)]) == 3
    assert distinct_tokens([]) == 0
    # 5 pages of 4 places: 15 filled, 12 of them distinct tokens, 3 held twice, 5 unfilled.
    assert HeldPages(pages=5, distinct=12, filled=15, slots=3).places(page_size=4) == {
        "distinct": 12, "held_twice": 3, "unfilled": 5, "slots": 3}


def test_the_peers_step_ends_at_its_first_newline_or_eos(monkeypatch):
    """The peer's ``generate`` rows cut as our steps are: token 3 a newline, 9 EOS, the
    others letters; a step at a newline ends the trace only on the task's answer line."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from peer_expansion import TransformersExpander

    expander = object.__new__(TransformersExpander)  # _step reads only these
    expander.newline = np.array([t == 3 for t in range(10)])
    expander.eos = {9}
    expander.tokenizer = SimpleNamespace(
        decode=lambda ids: "".join("\n" if t == 3 else "abcdefghij"[t] for t in ids))
    expander.task = SimpleNamespace(is_terminal_step=lambda text: text.startswith("ab"))
    steps = [expander._step(row) for row in ([1, 2, 3, 4, 3], [0, 1, 2, 3, 4], [1, 9, 2],
                                             [1, 2, 4], [9])]
    assert [(s.text, s.token_ids, s.ends_trace, s.handle) for s in steps] == [
        ("bc", (1, 2, 3), False, None),  # at a newline the next step follows
        ("abc", (0, 1, 2, 3), True, None),  # unless it is the answer line ("ab...")
        ("b", (1, 9), True, None),  # EOS kept in the tokens, not in the text
        ("bce", (1, 2, 4), True, None),  # at the token cap
        ("", (9,), True, None)]


def test_the_peers_expansion_counts_k_prefills_of_the_node_text_and_k_rows_of_kv(monkeypatch):
    """A 3-child expansion of a node whose text (prompt "pq", step "r") encodes to 4
    tokens: generate asked for 3 samples at temperature 0.7, at most 6 new tokens, no
    top-k or top-p, seeded by the (problem, node, first child) id; it prefilled 3 x 4 =
    12 tokens, its 3 rows of 4 + 5 tokens peak at 3 x 9 x 10 KV bytes, and its steps
    (each cut at its first newline, token 3) generated 3 + 1 + 5 tokens."""
    import torch

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from peer_expansion import TransformersExpander
    from qstar_jax.policy.runtime import stable_id

    calls = []

    class Model:
        config, device = SimpleNamespace(vocab_size=10), torch.device("cpu")

        def generate(self, input_ids, *, attention_mask, generation_config,
                     stopping_criteria):
            calls.append((input_ids.tolist(), attention_mask.tolist(), generation_config,
                          torch.initial_seed()))
            new = [[1, 2, 3, 0, 0], [3, 0, 0, 0, 0], [1, 2, 4, 5, 6]]
            return torch.tensor([input_ids[0].tolist() + row for row in new])

    tokenizer = SimpleNamespace(
        encode=lambda text: [5 + "pqr\n".index(c) for c in text], eos_ids=[9], pad_id=0,
        newline_table=lambda vocab: np.array([t == 3 for t in range(vocab)]),
        decode=lambda ids: "".join("\n" if t == 3 else "abcdefghij"[t] for t in ids))
    task = SimpleNamespace(is_terminal_step=lambda text: False)
    peer = TransformersExpander(Model(), tokenizer, task, [SimpleNamespace(id="p0")], ["pq"],
                                step_token_cap=6, kv_token_bytes=10)
    request = SimpleNamespace(problem_index=0, num_children=3, first_child=4,
                              temperature=0.7, node=SimpleNamespace(id=2, steps=["r"]))
    steps, = peer.expand([request])
    (ids, mask, generation, seed), = calls
    assert ids == [[5, 6, 7, 8]] and mask == [[1, 1, 1, 1]]
    assert seed == stable_id("p0", 2, 4)
    assert (generation.num_return_sequences, generation.max_new_tokens, generation.do_sample,
            generation.temperature, generation.top_k, generation.top_p) == (
        3, 6, True, 0.7, 0, 1.0)
    assert [s.token_ids for s in steps] == [(1, 2, 3), (3,), (1, 2, 4, 5, 6)]
    assert (peer.prefilled_tokens(0), peer.generated_tokens(0)) == (3 * 4, 3 + 1 + 5)
    assert peer.peak_kv_bytes == 3 * (4 + 5) * 10
    assert (peer.prefilled_tokens(1), peer.generated_tokens(1)) == (0, 0)
