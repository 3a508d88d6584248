"""best_of_n_matched searches for the smallest N whose best-of-N really spends Q*'s
tokens, down from an estimate that overshoots and up from one that falls short."""

import json

from qstar_jax.outputs.reports import MatchedN
from qstar_jax.outputs.results_log import ProblemResult, ResultsLog
from qstar_jax.stages import matched_best_of_n
from qstar_jax.stages.matched_best_of_n import evaluate_best_of_n_matched

PROBLEMS = ("a", "b")


def _row(method, problem, tokens, correct=False):
    return ProblemResult(method=method, problem_id=problem, correct=correct, answer=None,
                         completion=str(tokens), completed=True, generated_tokens=tokens,
                         prefilled_tokens=1, q_calls=0, prm_calls=0, expansions=1, wall_s=0.1)


class FakeBestOfN:
    """A stand-in for the searches: best-of-N spends ``tokens(N)`` a problem (by default 8
    a chain, where best-of-2's 10 a chain overestimates it, as shared prefixes make it),
    logged problem by problem; ``fail_after`` problems in all, it is killed."""

    def __init__(self, log, tokens=lambda n: 8 * n, fail_after=None):
        self.log, self.tokens, self.fail_after, self.calls = log, tokens, fail_after, []

    def __call__(self, method, samples):
        self.calls.append(samples)
        for problem in sorted(set(PROBLEMS) - self.log.done(method)):
            if self.fail_after is not None:
                if self.fail_after == 0:
                    raise KeyboardInterrupt
                self.fail_after -= 1
            self.log.append([_row(method, problem, self.tokens(samples))])


def _log(tmp_path, best_of_n=20, qstar=100):
    log = ResultsLog(tmp_path / "results.jsonl")
    log.append([_row("best_of_n", p, best_of_n) for p in PROBLEMS])
    log.append([_row("qstar", p, qstar) for p in PROBLEMS])
    return log


def _matched_tokens(log):
    return [r.generated_tokens for r in log.read() if r.method == "best_of_n_matched"]


def test_n_grows_from_the_estimate_until_best_of_n_spends_qstars_tokens(tmp_path):
    log = _log(tmp_path)  # best-of-2: 10 tokens a chain; Q* 100
    search = FakeBestOfN(log)
    state = tmp_path / "best_of_n_matched.json"
    assert evaluate_best_of_n_matched(state, log, search, samples=2) == MatchedN(
        samples=13, reached=True)  # 8 * 13 = 104 >= 100
    assert search.calls == [10, 11, 12, 13]  # 10 from the estimate: 100 / (20 / 2)
    assert _matched_tokens(log) == [104, 104]  # only the last N's results
    assert json.loads(state.read_text()) == {"samples": 13, "short": [12, 96.0],
                                             "enough": None}


def test_n_falls_from_an_estimate_that_overshoots_and_the_smallest_ns_rows_stay(tmp_path):
    # Chains sharing prefixes: best-of-N spends 10 + 2N, so best-of-6's 22 (3.7 a chain)
    # puts Q*'s 16 at N = 5, which spends 20; 3 spends exactly 16 and 2 spends 14.
    log = _log(tmp_path, best_of_n=22, qstar=16)
    search = FakeBestOfN(log, tokens=lambda n: 10 + 2 * n)
    state = tmp_path / "n.json"
    assert evaluate_best_of_n_matched(state, log, search, samples=6) == MatchedN(
        samples=3, reached=True)
    assert search.calls == [5, 4, 3, 2]
    assert _matched_tokens(log) == [16, 16]  # best-of-3's rows, put back after 2's
    # A rerun (evaluate resumed for a later method) asks for best-of-3 alone, every
    # problem of which is logged, and changes nothing.
    again = FakeBestOfN(log, tokens=lambda n: 10 + 2 * n)
    assert evaluate_best_of_n_matched(state, log, again, samples=6).samples == 3
    assert again.calls == [3] and _matched_tokens(log) == [16, 16]


def test_a_run_killed_below_the_n_that_spent_enough_searches_that_n_again(tmp_path):
    log = _log(tmp_path, best_of_n=22, qstar=16)
    state = tmp_path / "n.json"
    killed = FakeBestOfN(log, tokens=lambda n: 10 + 2 * n, fail_after=7)  # 5, 4, 3; 2 cut
    try:
        evaluate_best_of_n_matched(state, log, killed, samples=6)
    except KeyboardInterrupt:
        pass
    assert killed.calls == [5, 4, 3, 2]
    resumed = FakeBestOfN(log, tokens=lambda n: 10 + 2 * n)
    assert evaluate_best_of_n_matched(state, log, resumed, samples=6).samples == 3
    assert resumed.calls == [2, 3] and _matched_tokens(log) == [16, 16]


def test_a_killed_count_resumes_at_the_n_it_had_reached(tmp_path):
    log = _log(tmp_path)
    state = tmp_path / "best_of_n_matched.json"
    killed = FakeBestOfN(log, fail_after=5)  # 10, 11 done; 12 killed after one problem
    try:
        evaluate_best_of_n_matched(state, log, killed, samples=2)
    except KeyboardInterrupt:
        pass
    assert killed.calls == [10, 11, 12] and json.loads(state.read_text())["samples"] == 12
    resumed = FakeBestOfN(log)
    assert evaluate_best_of_n_matched(state, log, resumed, samples=2).samples == 13
    assert resumed.calls == [12, 13]
    assert _matched_tokens(log) == [104, 104]


def test_at_best_of_ns_own_n_its_rows_are_copied_once_the_n_below_falls_short(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    log.append([_row("best_of_n", "a", 120, correct=True), _row("best_of_n", "b", 80)])
    log.append([_row("qstar", p, 90) for p in PROBLEMS])  # best-of-2 already spends more
    search = FakeBestOfN(log)
    assert evaluate_best_of_n_matched(tmp_path / "n.json", log, search, samples=2) == MatchedN(
        samples=2, reached=True)
    assert search.calls == [1]  # best-of-1 spends 8: too few
    matched = [r for r in log.read() if r.method == "best_of_n_matched"]
    assert [(r.problem_id, r.generated_tokens, r.correct) for r in matched] == [
        ("a", 120, True), ("b", 80, False)]
    # A rerun finds them copied and copies nothing.
    assert evaluate_best_of_n_matched(tmp_path / "n.json", log, search, samples=2).samples == 2
    assert search.calls == [1]
    assert [r.problem_id for r in log.read() if r.method == "best_of_n_matched"] == ["a", "b"]


def test_spending_exactly_qstars_tokens_is_a_match(tmp_path):
    log = _log(tmp_path, qstar=96)
    search = FakeBestOfN(log)
    assert evaluate_best_of_n_matched(tmp_path / "n.json", log, search, samples=2).samples == 12
    assert search.calls == [10, 11, 12]  # 8 * 12 = 96: as many tokens as Q*, not more
    # Best-of-1 spending it already: nothing smaller to try.
    log = ResultsLog(tmp_path / "one.jsonl")
    log.append([_row("best_of_n", p, 96) for p in PROBLEMS])
    log.append([_row("qstar", p, 8) for p in PROBLEMS])
    search = FakeBestOfN(log)
    assert evaluate_best_of_n_matched(tmp_path / "m.json", log, search, samples=2) == MatchedN(
        samples=1, reached=True)
    assert search.calls == [1]


def test_n_stops_short_where_one_more_chain_adds_no_tokens_or_at_its_limit(tmp_path):
    # Equal chains (temperature 0 with prefix sharing): N chains cost one chain's tokens,
    # so no N reaches Q*'s; the count stopped only when the cache filled.
    log = _log(tmp_path)
    search = FakeBestOfN(log, tokens=lambda n: 20)
    assert evaluate_best_of_n_matched(tmp_path / "n.json", log, search, samples=2) == MatchedN(
        samples=11, reached=False, stalled=True)
    assert search.calls == [10, 11] and _matched_tokens(log) == [20, 20]
    # Growing, but slower than the estimate: at most four times the first N.
    (tmp_path / "slow").mkdir()
    log = _log(tmp_path / "slow", best_of_n=102, qstar=300)
    search = FakeBestOfN(log, tokens=lambda n: 100 + n)
    assert evaluate_best_of_n_matched(tmp_path / "m.json", log, search, samples=2) == MatchedN(
        samples=24, reached=False)  # 6 from the estimate: 300 / 51
    assert search.calls == list(range(6, 25))


class WatchedLog(ResultsLog):
    """A results log that notes each read and write in ``events`` beside the barriers."""

    def __init__(self, path, events):
        super().__init__(path)
        self.events = events

    def read(self):
        self.events.append("read")
        return super().read()

    def append(self, results):
        self.events.append("write")
        super().append(results)

    def drop(self, method):  # reads the log, then writes it
        super().drop(method)
        self.events.append("write")


def test_every_change_to_the_log_is_followed_by_a_barrier_before_it_is_read(tmp_path,
                                                                          monkeypatch):
    """Process 0 alone writes results.jsonl and every process reads it: without a barrier
    after a drop, a copy or rows put back, process 1 read the log before process 0 had
    changed it and the two searched different things (a deadlock)."""
    events = []
    monkeypatch.setattr(matched_best_of_n, "barrier", lambda name: events.append("barrier"))
    log = WatchedLog(tmp_path / "results.jsonl", events)
    log.append([_row("best_of_n", p, 22) for p in PROBLEMS])
    log.append([_row("qstar", p, 16) for p in PROBLEMS])

    def search(method, samples):  # as evaluate's search: what is left, then a barrier
        pending = sorted(set(PROBLEMS) - log.done(method))
        log.append([_row(method, p, 10 + 2 * samples) for p in pending])
        matched_best_of_n.barrier("results appended")

    events.clear()
    # At best-of-3's own N (copied, 22 >= 16), then best-of-2 searched (14): short, so
    # best-of-3's rows are put back.
    assert evaluate_best_of_n_matched(tmp_path / "n.json", log, search, samples=3).samples == 3
    assert _matched_tokens(log) == [22, 22]
    writes = [k for k, event in enumerate(events) if event == "write"]
    assert writes and all("barrier" in events[k:events.index("read", k)]
                          for k in writes if "read" in events[k:])
