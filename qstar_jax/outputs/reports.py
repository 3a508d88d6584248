"""The reports of a run's results: summary.json (per-method statistics), summary.md (the
Markdown table and the paired comparisons) and the accuracy-against-tokens plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

from qstar_jax.outputs.results_log import ProblemResult
from qstar_jax.parallel import is_writer

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval
# Methods whose any-right ceiling gets its own row in the table, and what it counts.
CEILING_ROWS = {"best_of_n": "pass@N: any chain right", "mctsr": "pass@k: any node right"}

# Counters summed per method in summary.json.
COUNTERS = ("generated_tokens", "prefilled_tokens", "q_calls", "prm_calls", "expansions",
            "wall_s")


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
        if all(r.any_correct is not None for r in rows):
            hits = sum(r.any_correct for r in rows)
            entry["pass_at_n"] = {"accuracy": hits / len(rows),
                                  "ci95": list(wilson_interval(hits, len(rows)))}
        summary[method] = entry
    return {"methods": summary}


def markdown_table(summary: dict) -> str:
    lines = ["| method | accuracy (95% CI) | n | generated tok/problem | prefilled tok/problem "
             "| Q̂ calls/problem | PRM calls/problem | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for method, s in summary["methods"].items():
        n = s["n"]
        lo, hi = s["ci95"]
        lines.append(
            f"| {method} | {100 * s['accuracy']:.1f} ({100 * lo:.1f}–{100 * hi:.1f}) | {n} "
            f"| {s['generated_tokens'] / n:.1f} | {s['prefilled_tokens'] / n:.1f} "
            f"| {s['q_calls'] / n:.1f} | {s['prm_calls'] / n:.1f} | {s['wall_s']:.1f} |")
    for method, s in summary["methods"].items():
        if method in CEILING_ROWS and "pass_at_n" in s:
            ceiling = s["pass_at_n"]
            lo, hi = ceiling["ci95"]
            lines.append(f"| {method} {CEILING_ROWS[method]} (a ceiling read with the grader, "
                         f"not an answer) | {100 * ceiling['accuracy']:.1f} ({100 * lo:.1f}–"
                         f"{100 * hi:.1f}) | {s['n']} | | | | | |")
    return "\n".join(lines) + "\n"


def matched_samples(summary: dict, samples: int) -> int | None:
    """The smallest N whose best-of-N spends at least Q*'s generated tokens per problem,
    at the tokens per sample best-of-``samples`` spent; None when either method is
    missing or best-of-``samples`` already spent as much as Q*. With prefix sharing a
    chain costs less the more chains share it, so best-of-N may need a larger N."""
    methods = summary["methods"]
    if "best_of_n" not in methods or "qstar" not in methods:
        return None
    per_problem = {m: methods[m]["generated_tokens"] / methods[m]["n"]
                   for m in ("best_of_n", "qstar")}
    per_sample = per_problem["best_of_n"] / samples
    if per_sample <= 0 or per_problem["best_of_n"] >= per_problem["qstar"]:
        return None
    return math.ceil(per_problem["qstar"] / per_sample - 1e-9)


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
    with a 95% normal interval of the per-problem differences: (diff, lo, hi, n)."""
    return _difference(_pairs(results, first, second))


def _difference(pairs: list[Pair]) -> tuple[float, float, float, int] | None:
    if not pairs:
        return None
    diffs = [float(a.correct) - float(b.correct) for a, b in pairs]
    n, mean = len(diffs), sum(diffs) / len(diffs)
    variance = sum((d - mean) ** 2 for d in diffs) / max(1, n - 1)
    half = Z95 * math.sqrt(variance / n)
    return mean, mean - half, mean + half, n


def budget_match_note(summary: dict, results: list[ProblemResult], samples: int,
                      out_dir: Path, matched: int | None = None) -> str:
    """Q* against best-of-N at equal generated tokens: the paired accuracy difference
    when the run evaluated ``best_of_n_matched`` (at N = ``matched``), else the N that
    would match and the command that evaluates it; "" when best-of-N already spent at
    least Q*'s tokens."""
    methods = summary["methods"]
    if "qstar" not in methods:
        return ""
    qstar_tokens = methods["qstar"]["generated_tokens"] / methods["qstar"]["n"]
    if "best_of_n_matched" not in methods or matched is None:
        estimate = matched_samples(summary, samples)
        if estimate is None:
            return ""
        # The run's resolved config.yaml holds its file and overrides alike.
        return (f"\nQ* generated {qstar_tokens:.0f} tokens per problem: at equal tokens "
                f"best-of-N takes N = {estimate} or more (`python -m qstar_jax.run "
                f"{out_dir / 'config.yaml'} --reuse {out_dir} --out NEW_DIR "
                f"'eval.methods=[best_of_n]' eval.samples={estimate}`).\n")
    entry = methods["best_of_n_matched"]
    return (f"\nbest_of_n_matched is best-of-{matched}, the smallest N found to spend at least "
            f"Q*'s {qstar_tokens:.0f} generated tokens per problem (it spent "
            f"{entry['generated_tokens'] / entry['n']:.0f}).\n")


# Greedy decoding of the second policy (q_train.second_opinion): the evaluate stage adds
# it beside greedy, so Q* is measured against the better of the two models it consults.
SECOND_POLICY_GREEDY = "greedy_second_policy"


def qstar_comparisons_note(summary: dict, results: list[ProblemResult]) -> str:
    """Q* against greedy decoding (of the policy, and of the second policy where Q̂ reads
    one), what Q̂ adds (qstar − qstar_no_q) and the planning against sampling more (qstar −
    best_of_n_matched): paired differences with 95% intervals, each side's generated
    tokens and wall-clock, and whether equal tokens and equal wall-clock disagree. Both
    sides' costs are taken over the problems the difference is paired over, so a method
    evaluated on more problems is not charged for them."""
    methods = summary["methods"]
    lines = []
    for other, what in (("greedy", "against one greedy chain of the policy it searches"),
                        (SECOND_POLICY_GREEDY, "against greedy decoding of the second policy "
                                               "whose opinion Q̂ reads"),
                        ("qstar_no_q", "what Q̂ adds: the same search with λ = 0"),
                        ("best_of_n_matched", "planning against sampling more, at no fewer "
                                              "generated tokens")):
        if "qstar" not in methods or other not in methods:
            continue
        pairs = _pairs(results, "qstar", other)
        diff, lo, hi, n = _difference(pairs)
        (q_tokens, q_wall), (o_tokens, o_wall) = (
            (sum(pair[side].generated_tokens for pair in pairs) / n,
             sum(pair[side].wall_s for pair in pairs)) for side in (0, 1))
        line = (f"- qstar − {other} ({what}): {100 * diff:+.1f} points (95% CI {100 * lo:+.1f} "
                f"to {100 * hi:+.1f}, paired over {n} problems); generated tokens per problem "
                f"{q_tokens:.0f} against {o_tokens:.0f}, wall-clock {_seconds(q_wall)} s "
                f"against {_seconds(o_wall)} s.")
        if other == "best_of_n_matched" and q_wall > o_wall:
            line += (" Equal tokens and equal wall-clock disagree here: Q* took longer, so at "
                     "equal wall-clock best-of-N could have sampled more.")
        lines.append(line)
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


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
                  best_of_n_samples: int | None = None, matched: int | None = None) -> dict:
    """summary.json, summary.md (with the budget-match note when ``best_of_n_samples``,
    eval.samples, is given; ``matched``: best_of_n_matched's N) and the plot; process 0
    alone writes them in a multi-process run."""
    summary = summarize(results, methods)
    if not is_writer():
        return summary
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    note = (budget_match_note(summary, results, best_of_n_samples, out_dir, matched)
            if best_of_n_samples else "")
    (out_dir / "summary.md").write_text(markdown_table(summary) + note
                                        + qstar_comparisons_note(summary, results))
    if summary["methods"]:
        plot_accuracy_vs_tokens(summary, out_dir / "accuracy_vs_tokens.png")
    return summary
