"""best_of_n_matched counts N up until best-of-N really spends Q*'s tokens."""

import json

from qstar_jax.outputs.results_log import ProblemResult, ResultsLog
from qstar_jax.stages.evaluate import evaluate_best_of_n_matched

PROBLEMS = ("a", "b")


def _row(method, problem, tokens, correct=False):
    return ProblemResult(method=method, problem_id=problem, correct=correct, answer=None,
                         completion=str(tokens), completed=True, generated_tokens=tokens,
                         prefilled_tokens=1, q_calls=0, prm_calls=0, expansions=1, wall_s=0.1)


class SublinearBestOfN:
    """A stand-in for the searches: best-of-N costs 8 tokens a chain (best-of-2's 10 a
    chain overestimates it, as shared prefixes make it), logged problem by problem;
    ``fail_after`` problems in all, it is killed."""

    def __init__(self, log, fail_after=None):
        self.log, self.fail_after, self.calls = log, fail_after, []

    def __call__(self, method, samples):
        self.calls.append(samples)
        for problem in sorted(set(PROBLEMS) - self.log.done(method)):
            if self.fail_after is not None:
                if self.fail_after == 0:
                    raise KeyboardInterrupt
                self.fail_after -= 1
            self.log.append([_row(method, problem, 8 * samples)])


def _log(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    log.append([_row("best_of_n", p, 20) for p in PROBLEMS])  # best-of-2: 10 tokens a chain
    log.append([_row("qstar", p, 100) for p in PROBLEMS])
    return log


def test_n_grows_from_the_estimate_until_best_of_n_spends_qstars_tokens(tmp_path):
    log = _log(tmp_path)
    search = SublinearBestOfN(log)
    state = tmp_path / "best_of_n_matched.json"
    assert evaluate_best_of_n_matched(state, log, search, samples=2) == 13  # 8 * 13 = 104 >= 100
    assert search.calls == [10, 11, 12, 13]  # 10 from the estimate: 100 / (20 / 2)
    matched = [r for r in log.read() if r.method == "best_of_n_matched"]
    assert [r.generated_tokens for r in matched] == [104, 104]  # only the last N's results
    assert json.loads(state.read_text()) == {"samples": 13}


def test_a_killed_count_resumes_at_the_n_it_had_reached(tmp_path):
    log = _log(tmp_path)
    state = tmp_path / "best_of_n_matched.json"
    killed = SublinearBestOfN(log, fail_after=5)  # 10, 11 done; 12 killed after one problem
    try:
        evaluate_best_of_n_matched(state, log, killed, samples=2)
    except KeyboardInterrupt:
        pass
    assert killed.calls == [10, 11, 12] and json.loads(state.read_text()) == {"samples": 12}
    resumed = SublinearBestOfN(log)
    assert evaluate_best_of_n_matched(state, log, resumed, samples=2) == 13
    assert resumed.calls == [12, 13]
    assert [r.generated_tokens for r in log.read() if r.method == "best_of_n_matched"] == [
        104, 104]


def test_at_best_of_ns_own_n_its_rows_are_copied_not_searched_again(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    log.append([_row("best_of_n", "a", 120, correct=True), _row("best_of_n", "b", 80)])
    log.append([_row("qstar", p, 90) for p in PROBLEMS])  # best-of-2 already spends more
    search = SublinearBestOfN(log)
    assert evaluate_best_of_n_matched(tmp_path / "n.json", log, search, samples=2) == 2
    assert search.calls == []
    matched = [r for r in log.read() if r.method == "best_of_n_matched"]
    assert [(r.problem_id, r.generated_tokens, r.correct) for r in matched] == [
        ("a", 120, True), ("b", 80, False)]
    # A rerun (evaluate resumed for a later method) finds them copied and copies nothing.
    assert evaluate_best_of_n_matched(tmp_path / "n.json", log, search, samples=2) == 2
    assert [r.problem_id for r in log.read() if r.method == "best_of_n_matched"] == ["a", "b"]


def test_spending_exactly_qstars_tokens_is_a_match(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    log.append([_row("best_of_n", p, 20) for p in PROBLEMS])  # best-of-2: 10 tokens a chain
    log.append([_row("qstar", p, 96) for p in PROBLEMS])
    search = SublinearBestOfN(log)
    assert evaluate_best_of_n_matched(tmp_path / "n.json", log, search, samples=2) == 12
    assert search.calls == [10, 11, 12]  # 8 * 12 = 96: as many tokens as Q*, not more
    # And at best_of_n's own N when it already spends exactly Q*'s tokens: copied, no search.
    log = ResultsLog(tmp_path / "equal.jsonl")
    log.append([_row("best_of_n", p, 96) for p in PROBLEMS])
    log.append([_row("qstar", p, 96) for p in PROBLEMS])
    search = SublinearBestOfN(log)
    assert evaluate_best_of_n_matched(tmp_path / "m.json", log, search, samples=2) == 2
    assert search.calls == []
