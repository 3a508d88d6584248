"""experiments/trie_chunk_times.py (README's trie-chunk figures): the run it evaluates, the
chunks it times and its JSON, with stand-in chunks and clock, so the figures are exact.
(A real tiny decoder's chunked trie through its hook took 13 s to compile here: left out.)"""

import collections
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from qstar_jax.decoding import trie_calls
from tests.support.experiments import experiment_module

SCRIPT = Path(__file__).parents[1] / "experiments/trie_chunk_times.py"
CONFIG = "configs/smollm2_humaneval.yaml"  # decode.min_rows: 8


@pytest.fixture
def chunk_times(monkeypatch):
    """The script as a module; ``trie_calls._chunk``, which it replaces, restored after."""
    monkeypatch.setattr(trie_calls, "_chunk", trie_calls._chunk)
    return experiment_module(monkeypatch, "trie_chunk_times")


def run_script(chunk_times, monkeypatch, capsys, run, *args: str) -> tuple[dict, list[str]]:
    monkeypatch.setattr("qstar_jax.run.main", run)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), CONFIG, "--reuse", "done", "--out", "new",
                                      *args])
    chunk_times.main()
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1]), lines


def test_chunks_of_2_5_0_3_and_4_s_two_new_variants(chunk_times, monkeypatch, capsys):
    """Three chunks of 4, 2 and 1 rows at window 128, the first and the last compiling a
    variant, taking 2.5, 0.3 and 4.0 s of a 100 s run."""
    clock = iter([0.0, 1.0, 3.5, 10.0, 10.3, 20.0, 24.0, 100.0])
    monkeypatch.setattr(chunk_times, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    decoder = SimpleNamespace(trace_counts=collections.Counter())

    def chunk(decoder, trie, row_slots, *, window):
        if trie.rows.size != 2:
            decoder.trace_counts["sample_trie"] += 1

    monkeypatch.setattr(trie_calls, "_chunk", chunk)
    runs = []

    def run(argv):
        runs.append(argv)
        for rows in (4, 2, 1):
            trie_calls._chunk(decoder, SimpleNamespace(rows=np.arange(rows)), None, window=128)
        return 0

    figures, lines = run_script(chunk_times, monkeypatch, capsys, run, "--min-rows", "16",
                                "eval.samples=2")
    assert runs == [[CONFIG, "--out", "new", "--reuse", "done", "stages=[evaluate]",
                     "eval.methods=[greedy]", "eval.samples=2", "decode.min_rows=16"]]
    assert figures == {"method": "greedy", "min_rows": 16, "wall_s": 100.0, "chunks": 3,
                       "chunk_s": 6.8, "new_variant_chunks": 2, "new_variant_s": 6.5}
    assert lines[:3] == ["chunk 1: 4 rows, window 128, 2.50 s, new variant",
                         "chunk 2: 2 rows, window 128, 0.30 s",
                         "chunk 3: 1 rows, window 128, 4.00 s, new variant"]


def test_without_min_rows_the_configs_is_reported_and_a_failed_run_exits(
        chunk_times, monkeypatch, capsys):
    runs = []

    def failing_run(argv):
        runs.append(argv)
        return 3

    with pytest.raises(SystemExit) as stopped:
        run_script(chunk_times, monkeypatch, capsys, failing_run, "--method", "qstar")
    assert stopped.value.code == 3
    assert runs == [[CONFIG, "--out", "new", "--reuse", "done", "stages=[evaluate]",
                     "eval.methods=[qstar]"]]
    figures, _ = run_script(chunk_times, monkeypatch, capsys, lambda argv: 0)
    assert figures == {"method": "greedy", "min_rows": 8, "wall_s": figures["wall_s"],
                       "chunks": 0, "chunk_s": 0, "new_variant_chunks": 0, "new_variant_s": 0}

