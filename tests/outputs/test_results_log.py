import dataclasses
import json

import pytest

from qstar_jax.outputs.results_log import ResultsLog
from qstar_jax.outputs.durable import CorruptRecordError
from tests.outputs.problem_results import result


def test_log_survives_a_torn_last_line(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    log.append([result("greedy", "a", True), result("greedy", "b", False)])
    with log.path.open("a") as f:
        f.write('{"method": "greedy", "problem_id": "c", "corr')  # killed mid-write
    assert log.done("greedy") == {"a", "b"}
    log.append([result("greedy", "c", True)])
    assert [r.problem_id for r in log.read()] == ["a", "b", "c"]


def test_log_refuses_a_damaged_line_before_the_last(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    log.append([result("greedy", "a", True)])
    with log.path.open("a") as f:
        f.write('{"method": "greedy", "probl\n')  # a whole line, but not JSON
        f.write(json.dumps(dataclasses.asdict(result("greedy", "b", True))) + "\n")
    for use in (log.read, lambda: log.append([result("greedy", "c", True)])):
        with pytest.raises(CorruptRecordError, match="results.jsonl:2 is not valid JSON"):
            use()


def test_dropping_a_method_keeps_the_others_in_order(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    log.append([result("greedy", "a", True), result("qstar", "a", True),
                result("greedy", "b", False)])
    log.drop("greedy")
    assert [(r.method, r.problem_id) for r in log.read()] == [("qstar", "a")]
    log.append([result("greedy", "a", False)])
    assert [(r.method, r.problem_id) for r in log.read()] == [("qstar", "a"), ("greedy", "a")]


def test_done_names_only_the_methods_own_problems(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    assert log.done("greedy") == set()  # no file yet
    log.append([result("greedy", "a", True), result("qstar", "b", False),
                result("greedy", "c", False), result("beam", "a", True)])
    assert (log.done("greedy"), log.done("qstar"), log.done("tot")) == ({"a", "c"}, {"b"}, set())


def test_every_field_reads_back_as_written(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    chain = dataclasses.replace(result("self_consistency", "p", False), answer=None,
                                any_correct=True, grade_status="timeout", wall_s=1.25)
    log.append([chain, result("greedy", "p", True)])
    assert log.read() == [chain, result("greedy", "p", True)]
    first, second = log.read()
    assert (first.answer, first.any_correct, first.grade_status) == (None, True, "timeout")
    # The others leave any_correct and grade_status unset: None, not False.
    assert (second.any_correct, second.grade_status) == (None, None)
    log.drop("greedy")
    assert log.read() == [chain]


def test_a_row_logged_before_scorer_tokens_were_counted_reads_with_none(tmp_path):
    """A results.jsonl line without the scorers' tokens (an older log) reads back with
    None for them, not 0; a new row's round-trip, and all its forward tokens add up."""
    log = ResultsLog(tmp_path / "results.jsonl")
    record = dataclasses.asdict(result("qstar", "a", True, 100))
    del record["q_scorer_tokens"], record["prm_scorer_tokens"]
    log.path.write_text(json.dumps(record) + "\n")
    counted = result("qstar", "b", True, 100, (300, 40))
    log.append([counted])
    old, new = log.read()
    assert (old.q_scorer_tokens, old.prm_scorer_tokens, old.forward_tokens) == (None, None, None)
    assert new == counted and (new.scorer_tokens, new.forward_tokens) == (340, 445)
