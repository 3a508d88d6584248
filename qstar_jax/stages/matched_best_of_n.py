"""best_of_n_matched: best-of-N at the smallest N that spends Q*'s generated tokens per
problem, found by searching best-of-N again at each N tried (evaluate's ``search``), over
the rows evaluate logged for best_of_n and qstar."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from qstar_jax.outputs.durable import write_text_atomically
from qstar_jax.outputs.reports import MatchedN, matched_samples, summarize
from qstar_jax.outputs.results_log import ProblemResult, ResultsLog
from qstar_jax.parallel import barrier

MATCHED_STATE = "best_of_n_matched.json"  # the N best_of_n_matched is evaluated at
# Up from its first N, best_of_n_matched stops short of Q*'s tokens at this many times it.
MATCHED_GROWTH = 4


def evaluate_best_of_n_matched(state: Path, log: ResultsLog,
                               search: Callable[[str, int], None], samples: int) -> MatchedN:
    """best_of_n_matched: best-of-N at the smallest N whose results spend at least Q*'s
    generated tokens per problem. N starts from the estimate (``matched_samples``: Q*'s
    tokens at the tokens a chain of best-of-``samples`` spent) and steps down while the
    N below still spends as much, up while it spends less: with prefix sharing a chain's
    tokens move with N either way. Each N is a search of every problem (best_of_n's rows
    copied at its own N); going down, the rows of the last N that spent enough are kept
    to be put back. Going up, it stops short where one more chain adds no tokens (equal
    chains: eval.temperature=0 with prefix sharing) or at MATCHED_GROWTH times the first
    N; best_of_n_matched then stays below Q*'s budget, and says so. ``state`` (JSON)
    keeps the N in use and what the Ns tried gave, so a killed run resumes there. The
    config checks list best_of_n and qstar before it. Process 0 alone changes the log,
    and every process reads it: each change is followed by a barrier."""
    def tokens_per_problem(method: str) -> float:
        entry = summarize(log.read(), (method,))["methods"][method]
        return entry["generated_tokens"] / entry["n"]

    def save(n: int) -> None:
        write_text_atomically(state, json.dumps({"samples": n, "short": short,
                                                 "enough": enough}))

    def run_at(n: int) -> None:
        if n == samples:
            _copy_best_of_n(log)
            barrier("best_of_n_matched copied")
        else:
            search("best_of_n_matched", n)

    def drop() -> None:
        log.drop("best_of_n_matched")
        barrier("best_of_n_matched dropped")

    def evaluate_at(n: int) -> float:
        save(n)
        run_at(n)
        return tokens_per_problem("best_of_n_matched")

    saved = json.loads(state.read_text()) if state.exists() else {}
    first = matched_samples(summarize(log.read(), ("best_of_n", "qstar")), samples) or samples
    n = saved.get("samples", first)
    short = saved.get("short")  # [N, tokens]: the largest N found spending less than Q*
    enough = saved.get("enough")  # the smallest N found spending at least Q*'s tokens
    kept: list[ProblemResult] | None = None  # enough's rows, while a smaller N is tried
    target = tokens_per_problem("qstar")
    while True:
        tokens = evaluate_at(n)
        if tokens >= target:
            enough = n
            if n == 1 or (short is not None and short[0] == n - 1):
                return MatchedN(samples=n, reached=True)
            kept = [r for r in log.read() if r.method == "best_of_n_matched"]
            step = -1
        elif enough == n + 1:  # n spends less, n + 1 enough: n + 1's rows go back
            short = [n, tokens]
            save(enough)
            drop()
            if kept is None:  # the run was killed since they were kept: searched again
                run_at(enough)
            else:
                log.append(kept)
                barrier("best_of_n_matched put back")
            return MatchedN(samples=enough, reached=True)
        else:
            stalled = short is not None and short[0] == n - 1 and tokens <= short[1]
            if stalled or n >= MATCHED_GROWTH * first:
                return MatchedN(samples=n, reached=False, stalled=stalled)
            short, step = [n, tokens], 1
        drop()  # before the new N is saved: no mixed results
        n += step


def _copy_best_of_n(log: ResultsLog) -> None:
    """best_of_n_matched at best_of_n's own N is best_of_n's search over again: the same
    chains (keys come from the problem and node ids alone), ranker and token charges. Its
    rows, wall-clock included, are copied instead of computed twice."""
    rows = log.read()
    done = {r.problem_id for r in rows if r.method == "best_of_n_matched"}
    log.append([dataclasses.replace(r, method="best_of_n_matched") for r in rows
                if r.method == "best_of_n" and r.problem_id not in done])
