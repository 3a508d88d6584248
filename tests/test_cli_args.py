"""The experiment scripts refuse counts that cannot run, naming the option, before
anything loads (experiments/cli_args.py and each script's own checks)."""

from __future__ import annotations

import argparse
import os
import sys

import pytest

from tests.support.experiments import experiment_module


@pytest.fixture
def cli_args(monkeypatch):
    return experiment_module(monkeypatch, "cli_args")


def test_the_types_take_what_runs_and_refuse_the_rest_saying_why(cli_args):
    assert cli_args.positive_int("3") == 3 and cli_args.at_least(0)("0") == 0
    cores = len(os.sched_getaffinity(0))
    assert cli_args.cpu_threads(str(cores)) == cores
    assert cli_args.positive_float("0.5") == 0.5
    for parse, text, message in [
            (cli_args.positive_int, "0", "must be at least 1, got 0"),
            (cli_args.positive_int, "-2", "must be at least 1, got -2"),
            (cli_args.positive_int, "2.5", "must be a whole number, got '2.5'"),
            (cli_args.cpu_threads, "0", "must be at least 1, got 0"),
            (cli_args.cpu_threads, str(cores + 1),
             f"this process may use {cores} cores, got {cores + 1}"),
            (cli_args.positive_float, "0", "must be greater than 0, got 0.0"),
            (cli_args.positive_float, "warm", "must be a number, got 'warm'")]:
        with pytest.raises(argparse.ArgumentTypeError) as refused:
            parse(text)
        assert str(refused.value) == message


@pytest.mark.parametrize("script, argv, message", [
    ("bench_search", ["--problems", "0"], "argument --problems: must be at least 1, got 0"),
    ("bench_search", ["--expansions", "0"], "argument --expansions: must be at least 1"),
    ("bench_search", ["--threads", "0"], "argument --threads: must be at least 1, got 0"),
    ("bench_decode", ["--batches", "1", "0"], "argument --batches: must be at least 1, got 0"),
    ("bench_decode", ["--reps", "0"], "argument --reps: must be at least 1, got 0"),
    ("decode_step_breakdown", ["--reps", "-1"], "argument --reps: must be at least 1"),
    ("profile_decode", ["--steps", "0"], "argument --steps: must be at least 1, got 0"),
    ("profile_decode", ["--spare-rules", "old", "bogus"],
     "argument --spare-rules: give old, new or FLOOR:SHARE (two numbers), got 'bogus'"),
    ("bench_paged_attention", ["--page-size", "0"], "argument --page-size: must be at least 1"),
    ("bench_paged_attention", ["--lengths", "352", "200"],
     "--lengths LOW HIGH: LOW must not exceed HIGH, got [352, 200]"),
    ("bench_paged_attention", ["--kv-heads", "2"], "--heads 9 is not a multiple of --kv-heads 2"),
    ("bench_paged_attention", ["--dtype", "bogus"], "argument --dtype: invalid choice: 'bogus'"),
    ("cascade_attention", ["--children", "4", "0"], "argument --children: must be at least 1"),
    ("bench_row_products", ["--blocks", "8x512"],
     "argument --blocks: give OUTxINxWARPS, three whole numbers >= 1 (as 8x512x4), got "
     "'8x512'"),
    ("bench_row_products", ["--layers", "0"], "argument --layers: must be at least 1, got 0"),
], ids=lambda value: value if isinstance(value, str) and " " not in value else None)
def test_a_script_refuses_a_count_that_cannot_run_by_its_option(monkeypatch, capsys, script,
                                                                 argv, message):
    module = experiment_module(monkeypatch, script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
    parse = getattr(module, "parse_args", None) or module.main  # main parses first
    with pytest.raises(SystemExit) as exit_:
        parse()
    assert exit_.value.code == 2 and message in capsys.readouterr().err
