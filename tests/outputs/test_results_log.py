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
