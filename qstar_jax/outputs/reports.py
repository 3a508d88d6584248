"""The reports of a run's results: summary.json (per-method statistics), summary.md (the
Markdown table and the paired comparisons) and the accuracy-against-tokens plot."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

from qstar_jax.outputs.durable import write_text_atomically
from qstar_jax.outputs.report_notes import INTERVALS_NOTE, scorer_tokens_note, wall_clock_note
from qstar_jax.outputs.results_log import ProblemResult
from qstar_jax.parallel import is_writer

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval
# Methods whose any-right ceiling gets its own row in the table, and what it counts.
CEILING_ROWS = {"best_of_n": "pass@N: any chain right", "mctsr": "pass@k: any node right"}

# Counters summed per method in summary.json; the scorers' tokens are null where a row
# was logged before they were counted.
COUNTERS = ("generated_tokens", "prefilled_tokens", "q_calls", "prm_calls", "expansions",
            "wall_s")
SCORER_COUNTERS = ("q_scorer_tokens", "prm_scorer_tokens")


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(results: Iterable[ProblemResult], methods: Iterable[str]) -> dict:
    by_method: dict[str, list[ProblemResult]] = {m: [] for m in methods}
    for r in results:
        by_method.setdefault(r.method, []).append(r)
    summary = {}
    for method, rows in by_method.items():
        if not rows:
            continue
        correct = sum(r.correct for r in rows)
        lo, hi = wilson_interval(correct, len(rows))
        entry = {"accuracy": correct / len(rows), "n": len(rows), "ci95": [lo, hi]}
        for counter in COUNTERS:
            total = sum(getattr(r, counter) for r in rows)
            entry[counter] = round(total, 3) if counter == "wall_s" else int(total)
        for counter in SCORER_COUNTERS:
            counts = [getattr(r, counter) for r in rows]
            entry[counter] = None if None in counts else sum(counts)
        if all(r.pruned is not None for r in rows):
            entry["pruned"] = sum(r.pruned for r in rows)
            entry["pruned_empty_answers"] = sum(r.pruned > 0 and not r.completion
                                                for r in rows)
        if all(r.any_correct is not None for r in rows):
            hits = sum(r.any_correct for r in rows)
            entry["pass_at_n"] = {"accuracy": hits / len(rows),
                                  "ci95": list(wilson_interval(hits, len(rows)))}
        summary[method] = entry
    return {"methods": summary}


def markdown_table(summary: dict) -> str:
    lines = ["| method | accuracy (95% CI) | n | generated tok/problem | prefilled tok/problem "
             "| scorer tok/problem | Q̂ calls/problem | PRM calls/problem | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method, s in summary["methods"].items():
        n = s["n"]
        lo, hi = s["ci95"]
        scorer = _scorer_tokens(s)
        lines.append(
            f"| {method} | {100 * s['accuracy']:.1f} ({100 * lo:.1f}–{100 * hi:.1f}) | {n} "
            f"| {s['generated_tokens'] / n:.1f} | {s['prefilled_tokens'] / n:.1f} "
            f"| {'–' if scorer is None else f'{scorer / n:.1f}'} "
            f"| {s['q_calls'] / n:.1f} | {s['prm_calls'] / n:.1f} | {s['wall_s']:.1f} |")
    for method, s in summary["methods"].items():
        if method in CEILING_ROWS and "pass_at_n" in s:
            ceiling = s["pass_at_n"]
            lo, hi = ceiling["ci95"]
            lines.append(f"| {method} {CEILING_ROWS[method]} (a ceiling read with the grader, "
                         f"not an answer) | {100 * ceiling['accuracy']:.1f} ({100 * lo:.1f}–"
                         f"{100 * hi:.1f}) | {s['n']} | | | | | | |")
    lines += [f"\n{method} pruned {s['pruned'] / s['n']:.1f} states a problem below "
              f"eval.tot.threshold; on {s['pruned_empty_answers']} of {s['n']} problems it "
              "pruned states and answered no step." for method, s in summary["methods"].items()
              if "pruned" in s]
    return "\n".join(lines) + "\n"


def _scorer_tokens(entry: dict) -> int | None:
    """A summary entry's Q̂ and PRM scorer tokens together; None where not counted."""
    counts = [entry.get(counter) for counter in SCORER_COUNTERS]
    return None if None in counts else sum(counts)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MatchedN:
    """The N best_of_n_matched was evaluated at, and whether best-of-N spent at least Q*'s
    tokens there (``reached``); short of them, ``stalled`` says one more chain added no
    tokens, else N reached its limit."""
    samples: int
    reached: bool
    stalled: bool = False


def matched_samples(summary: dict, samples: int) -> int | None:
    """The N estimated to spend Q*'s generated tokens per problem, at the tokens a chain
    of best-of-``samples`` spent: the smallest N whose chains at that rate spend at least
    Q*'s; None when either method is missing or best-of-N spent none. With prefix sharing
    a chain's tokens move with N, so the estimate is where a search for N begins."""
    methods = summary["methods"]
    if "best_of_n" not in methods or "qstar" not in methods:
        return None
    per_problem = {m: methods[m]["generated_tokens"] / methods[m]["n"]
                   for m in ("best_of_n", "qstar")}
    per_sample = per_problem["best_of_n"] / samples
    if per_sample <= 0:
        return None
    return max(1, math.ceil(per_problem["qstar"] / per_sample - 1e-9))


Pair = tuple[ProblemResult, ProblemResult]


def _pairs(results: Iterable[ProblemResult], first: str, second: str) -> list[Pair]:
    """(``first``'s result, ``second``'s) on each problem both were evaluated on."""
    rows: dict[str, dict[str, ProblemResult]] = {first: {}, second: {}}
    for r in results:
        if r.method in rows:
            rows[r.method][r.problem_id] = r
    shared = sorted(rows[first].keys() & rows[second].keys())
    return [(rows[first][p], rows[second][p]) for p in shared]


def paired_difference(results: Iterable[ProblemResult], first: str,
                      second: str) -> tuple[float, float, float, int] | None:
    """Accuracy of ``first`` minus ``second`` over the problems both were evaluated on,
    with a 95% interval: (diff, lo, hi, n); ``_difference`` says which."""
    return _difference(_pairs(results, first, second))


def _difference(pairs: list[Pair]) -> tuple[float, float, float, int] | None:
    """The paired difference of two accuracies with Newcombe's hybrid score interval
    (method 10 of Newcombe, Statistics in Medicine 17:2635, 1998): each accuracy's Wilson
    interval, joined through the correlation of the pairs. Unlike a normal interval of
    the per-problem differences it has width where every pair agrees and stays within
    [-1, 1]."""
    if not pairs:
        return None
    n = len(pairs)
    both = sum(a.correct and b.correct for a, b in pairs)
    first_only = sum(a.correct and not b.correct for a, b in pairs)
    second_only = sum(b.correct and not a.correct for a, b in pairs)
    neither = n - both - first_only - second_only
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    (l1, u1), (l2, u2) = wilson_interval(both + first_only, n), wilson_interval(
        both + second_only, n)
    margins = ((both + first_only) * (second_only + neither) * (both + second_only)
               * (first_only + neither))
    # The correlation of the pairs, with Newcombe's continuity correction of a positive one.
    cross = both * neither - first_only * second_only
    cross = max(0.0, cross - n / 2) if cross > 0 else cross
    phi = cross / math.sqrt(margins) if margins else 0.0
    diff = p1 - p2
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return diff, diff - below, diff + above, n


def budget_match_note(summary: dict, results: list[ProblemResult], samples: int,
                      out_dir: Path, matched: MatchedN | None = None) -> str:
    """Q* against best-of-N at equal generated tokens: which N best_of_n_matched was
    evaluated at and whether it spent Q*'s tokens there, or, where the run did not
    evaluate it, the N estimated to match and the command that evaluates it ("" where
    that is best-of-N's own N)."""
    methods = summary["methods"]
    if "qstar" not in methods:
        return ""
    qstar_tokens = methods["qstar"]["generated_tokens"] / methods["qstar"]["n"]
    if "best_of_n_matched" not in methods or matched is None:
        estimate = matched_samples(summary, samples)
        if estimate is None or estimate == samples:
            return ""
        spent = methods["best_of_n"]["generated_tokens"] / methods["best_of_n"]["n"]
        # The run's resolved config.yaml holds its file and overrides alike.
        return (f"\nQ* generated {qstar_tokens:.0f} tokens per problem and best-of-{samples} "
                f"{spent:.0f}: at equal generated tokens best-of-N takes about N = {estimate}, at "
                f"best-of-{samples}'s tokens a chain (`python -m qstar_jax.run "
                f"{out_dir / 'config.yaml'} --reuse {out_dir} --out NEW_DIR "
                f"'eval.methods=[best_of_n]' eval.samples={estimate}`; best_of_n_matched in "
                "eval.methods searches for the smallest N that spends Q*'s tokens).\n")
    n = matched.samples
    entry = methods["best_of_n_matched"]
    spent = entry["generated_tokens"] / entry["n"]
    if matched.reached:
        below = f"; best-of-{n - 1} spent fewer" if n > 1 else ""
        return (f"\nbest_of_n_matched is best-of-{n}, the smallest N whose chains spend at "
                f"least Q*'s {qstar_tokens:.0f} generated tokens per problem (it spent "
                f"{spent:.0f}{below}). {MATCHED_ON}\n")
    why = ("one more chain added no tokens (equal chains, as temperature 0 with prefix "
           "sharing samples)" if matched.stalled else "N stopped at its limit")
    return (f"\nbest_of_n_matched is best-of-{n} and spent {spent:.0f} generated tokens per "
            f"problem, short of Q*'s {qstar_tokens:.0f}: {why}. Its comparison below is at "
            f"fewer tokens than Q*'s. {MATCHED_ON}\n")


# What best_of_n_matched's N leaves unmatched.
MATCHED_ON = ("Its N matches generated tokens alone, not prefilled tokens, the scorers' "
              "tokens or wall-clock: the comparison below sets those side by side.")


# Greedy decoding of the second policy (q_train.second_opinion): the evaluate stage adds
# it beside greedy, so Q* is measured against the better of the two models it consults.
SECOND_POLICY_GREEDY = "greedy_second_policy"


def qstar_comparisons_note(summary: dict, results: list[ProblemResult],
                           matched: MatchedN | None = None) -> str:
    """Q* against greedy decoding (of the policy, and of the second policy where Q̂ reads
    one), what Q̂ adds (qstar − qstar_no_q) and the planning against sampling more (qstar −
    best_of_n_matched): paired differences with 95% intervals, each side's generated
    tokens, all its forward tokens (generated, prefilled and the scorers') and wall-clock,
    and whether best_of_n_matched's equal generated tokens and equal forward tokens or
    equal wall-clock disagree. Both sides' costs are taken over the problems the
    difference is paired over, so a method evaluated on more problems is not charged for
    them."""
    methods = summary["methods"]
    lines = []
    for other, what in (("greedy", "against one greedy chain of the policy it searches"),
                        (SECOND_POLICY_GREEDY, "against greedy decoding of the second policy "
                                               "whose opinion Q̂ reads"),
                        ("qstar_no_q", "what Q̂ adds: the same search with λ = 0"),
                        ("best_of_n_matched", "planning against sampling more, at "
                         + ("fewer generated tokens than Q*'s" if matched and not
                            matched.reached else "no fewer generated tokens"))):
        if "qstar" not in methods or other not in methods:
            continue
        pairs = _pairs(results, "qstar", other)
        diff, lo, hi, n = _difference(pairs)
        qstar, rival = (Costs.of([pair[side] for pair in pairs]) for side in (0, 1))
        forward = ("all forward tokens (generated + prefilled + scorer) "
                   f"{qstar.forward:.0f} against {rival.forward:.0f}" if qstar.counted
                   and rival.counted else
                   "all forward tokens not counted (rows logged before the scorers' were)")
        line = (f"- qstar − {other} ({what}): {100 * diff:+.1f} points (95% CI {100 * lo:+.1f} "
                f"to {100 * hi:+.1f}, paired over {n} problems); generated tokens per problem "
                f"{qstar.generated:.0f} against {rival.generated:.0f}, {forward}, wall-clock "
                f"{_seconds(qstar.wall_s)} s against {_seconds(rival.wall_s)} s.")
        lines.append(line + (_disagreements(qstar, rival) if other == "best_of_n_matched"
                             else ""))
    return "".join(f"\n{line}" for line in lines) + "\n" if lines else ""


@dataclasses.dataclass(frozen=True)
class Costs:
    """One side of a comparison, over the problems it pairs: generated tokens and all
    forward tokens per problem (None where a row's scorer tokens were not counted), and
    the wall-clock summed."""

    generated: float
    forward: float | None
    wall_s: float

    @classmethod
    def of(cls, rows: list[ProblemResult]) -> "Costs":
        forward = [r.forward_tokens for r in rows]
        return cls(sum(r.generated_tokens for r in rows) / len(rows),
                   None if None in forward else sum(forward) / len(rows),
                   round(sum(r.wall_s for r in rows), 3))

    @property
    def counted(self) -> bool:
        return self.forward is not None


def _disagreements(qstar: Costs, matched: Costs) -> str:
    """Where Q* against best_of_n_matched, matched on generated tokens, comes out another
    way counting every forward token, or by wall-clock."""
    text = ""
    if qstar.counted and matched.counted and (
            (qstar.generated > matched.generated) != (qstar.forward > matched.forward)):
        text += (" Generated tokens and all forward tokens disagree here: counting every "
                 + ("forward token Q* spent more, so at equal forward tokens best-of-N could "
                    "have sampled more." if qstar.forward > matched.forward else
                    "forward token best_of_n_matched spent no fewer than Q*."))
    if qstar.wall_s > matched.wall_s:
        text += (" Equal generated tokens and equal wall-clock disagree here: Q* took longer, "
                 "so at equal wall-clock best-of-N could have sampled more.")
    return text


def _seconds(wall_s: float) -> str:
    """Whole seconds, or tenths under 10 s (half a second is not 0 s)."""
    return f"{wall_s:.0f}" if wall_s >= 10 else f"{wall_s:.1f}"


def plot_accuracy_vs_tokens(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, s in summary["methods"].items():
        x = s["generated_tokens"] / s["n"]
        lo, hi = s["ci95"]
        ax.errorbar([x], [100 * s["accuracy"]], yerr=[[100 * (s["accuracy"] - lo)],
                                                      [100 * (hi - s["accuracy"])]],
                    fmt="o", capsize=4, label=method)
    ax.set_xlabel("generated tokens per problem")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(out_dir: Path, results: list[ProblemResult], methods: Iterable[str], *,
                  best_of_n_samples: int | None = None, matched: MatchedN | None = None,
                  uncached_scorers: Sequence[str] = ()) -> dict:
    """summary.json, summary.md (with the budget-match note when ``best_of_n_samples``,
    eval.samples, is given; ``matched``: best_of_n_matched's N; ``uncached_scorers``: the
    models that run uncached over each child scored, whose tokens the scorer column
    counts) and the plot, each written whole or not at all; process 0 alone writes them
    in a multi-process run."""
    summary = summarize(results, methods)
    if not is_writer():
        return summary
    write_text_atomically(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    note = (budget_match_note(summary, results, best_of_n_samples, out_dir, matched)
            if best_of_n_samples else "")
    methods = summary["methods"]
    uncounted = [m for m, entry in methods.items() if _scorer_tokens(entry) is None]
    notes = (scorer_tokens_note(uncached_scorers, uncounted) + wall_clock_note(list(methods))
             + INTERVALS_NOTE)
    write_text_atomically(out_dir / "summary.md", markdown_table(summary) + notes + note
                          + qstar_comparisons_note(summary, results, matched))
    if summary["methods"]:
        plot_accuracy_vs_tokens(summary, out_dir / "accuracy_vs_tokens.png")
    return summary
