import dataclasses
import json
import math

import pytest
from matplotlib.figure import Figure

from qstar_jax.outputs import reports
from qstar_jax.outputs.reports import (MatchedN, matched_samples, paired_difference,
                                       summarize, wilson_interval, write_reports)
from tests.outputs.problem_results import result


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_summary_counts_and_reports(tmp_path):
    rows = [result("greedy", "a", True, 10), result("greedy", "b", False, 30),
            result("qstar", "a", True, 50)]
    summary = summarize(rows, ["greedy", "qstar", "beam"])
    assert summary["methods"]["greedy"]["accuracy"] == 0.5
    assert summary["methods"]["greedy"]["generated_tokens"] == 40
    assert summary["methods"]["qstar"]["n"] == 1
    assert "beam" not in summary["methods"]
    # Methods come in the configured order, whatever order their rows were logged in.
    assert list(summarize(rows[::-1], ["greedy", "qstar"])["methods"]) == ["greedy", "qstar"]
    write_reports(tmp_path, rows, ["greedy", "qstar"])
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    table = (tmp_path / "summary.md").read_text()
    assert "| greedy | 50.0 (" in table and "| 20.0 |" in table
    assert (tmp_path / "accuracy_vs_tokens.png").stat().st_size > 1000


def test_table_rows_give_per_problem_means_the_interval_and_total_wall_clock(tmp_path):
    def counted(pid, correct, tokens, prefilled, scorer, q_calls, prm_calls, wall):
        return dataclasses.replace(result("greedy", pid, correct, tokens, scorer),
                                   prefilled_tokens=prefilled, q_calls=q_calls,
                                   prm_calls=prm_calls, wall_s=wall)
    rows = [counted("a", True, 10, 7, (60, 6), 3, 1, 0.5),
            counted("b", False, 30, 13, (100, 0), 5, 4, 1.0)]
    write_reports(tmp_path, rows, ["greedy"])
    # Wilson's 95% interval for 1 of 2: 0.5 ± 1.96 sqrt(1/8 + 1.96²/16) / (1 + 1.96²/2)
    # = 0.5 ± 0.405; per problem 40/2 generated, 20/2 prefilled, 166/2 scorer tokens (Q̂'s
    # and the PRM's), 8/2 Q̂ and 5/2 PRM calls.
    assert "| greedy | 50.0 (9.5–90.5) | 2 | 20.0 | 10.0 | 83.0 | 4.0 | 2.5 | 1.5 |\n" in \
        (tmp_path / "summary.md").read_text()


def test_a_process_other_than_the_writer_summarizes_but_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(reports, "is_writer", lambda: False)
    rows = [result("greedy", "a", True), result("greedy", "b", False)]
    summary = write_reports(tmp_path, rows, ["greedy"], best_of_n_samples=6)
    assert summary == summarize(rows, ["greedy"]) and summary["methods"]["greedy"]["n"] == 2
    assert list(tmp_path.iterdir()) == []


def test_summary_says_which_best_of_n_would_spend_qstars_tokens(tmp_path):
    # best-of-6 spends 60 tokens per problem (10 a sample), Q* 410: N = 41 matches it.
    rows = [result("best_of_n", "a", False, 60), result("qstar", "a", True, 410)]
    write_reports(tmp_path, rows, ["best_of_n", "qstar"], best_of_n_samples=6)
    assert "best-of-N takes about N = 41" in (tmp_path / "summary.md").read_text()
    assert "eval.samples=41" in (tmp_path / "summary.md").read_text()
    # Q*'s tokens are per problem: 820 over problems a and b is 410 a problem, not 820.
    rows_of_two = rows + [result("best_of_n", "b", False, 60), result("qstar", "b", True, 410)]
    write_reports(tmp_path, rows_of_two, ["best_of_n", "qstar"], best_of_n_samples=6)
    assert (tmp_path / "summary.md").read_text().splitlines()[-1] == (
        f"Q* generated 410 tokens per problem and best-of-6 60: at equal generated tokens "
        f"best-of-N takes about N = 41, at best-of-6's tokens a chain (`python -m qstar_jax.run "
        f"{tmp_path}/config.yaml --reuse {tmp_path} --out NEW_DIR 'eval.methods=[best_of_n]' "
        "eval.samples=41`; best_of_n_matched in eval.methods searches for the smallest N "
        "that spends Q*'s tokens).")
    # Best-of-N spending more than Q*: a smaller N (600 / 6 = 100 a chain, 410 / 100).
    write_reports(tmp_path, [result("best_of_n", "a", False, 600), rows[1]],
                  ["best_of_n", "qstar"], best_of_n_samples=6)
    assert "best-of-N takes about N = 5," in (tmp_path / "summary.md").read_text()
    # Nothing to say at best-of-N's own N, or where one of them is absent.
    write_reports(tmp_path, [result("best_of_n", "a", False, 420), rows[1]],
                  ["best_of_n", "qstar"], best_of_n_samples=6)
    assert "best-of-N takes" not in (tmp_path / "summary.md").read_text()
    write_reports(tmp_path, rows[1:], ["qstar"], best_of_n_samples=6)
    assert "best-of-N takes" not in (tmp_path / "summary.md").read_text()


def test_matched_best_of_n_spends_at_least_qstars_tokens():
    def summary(best_of_n_tokens, qstar_tokens):
        return summarize([result("best_of_n", "a", False, best_of_n_tokens),
                          result("qstar", "a", True, qstar_tokens)], ["best_of_n", "qstar"])
    assert matched_samples(summary(60, 410), 6) == 41  # 10 tokens a sample
    assert matched_samples(summary(60, 411), 6) == 42  # 41 samples would spend 410 < 411
    assert matched_samples(summary(60, 60), 6) == 6
    assert matched_samples(summary(600, 410), 6) == 5  # 100 a sample: 5 spend 500 >= 410
    assert matched_samples(summary(600, 10), 6) == 1
    assert matched_samples(summary(0, 410), 6) is None  # no tokens a sample: no N matches
    # 21 / (7 / 10) is 30.000000000000004 in floating point: 30 samples spend exactly 21.
    assert matched_samples(summary(7, 21), 10) == 30
    assert matched_samples(summarize([result("qstar", "a", True)], ["qstar"]), 6) is None


def test_paired_difference_over_shared_problems():
    rows = [result("qstar", p, c) for p, c in zip("abcd", (True, True, False, True))]
    rows += [result("best_of_n_matched", p, c) for p, c in zip("abce", (True, False, False, True))]
    diff, lo, hi, n = paired_difference(rows, "qstar", "best_of_n_matched")
    # Shared: a (both right), b (Q* alone), c (neither): 2/3 against 1/3.
    assert n == 3 and diff == pytest.approx(1 / 3)
    assert (lo, hi) == pytest.approx((-0.3158, 0.7178), abs=1e-4)
    assert paired_difference(rows, "qstar", "beam") is None


def _paired_rows(both, first_only, second_only, neither):
    outcomes = ([(True, True)] * both + [(True, False)] * first_only
                + [(False, True)] * second_only + [(False, False)] * neither)
    return [result(method, str(k), right) for k, pair in enumerate(outcomes)
            for method, right in zip(("qstar", "greedy"), pair)]


def test_the_paired_interval_is_newcombes_with_width_where_every_pair_agrees():
    # Newcombe (1998) method 10 on the worked example of Altman et al. (2000, Table 6.2):
    # 14 pairs both right, 5 the first alone, 22 neither: 0.122 (0.0115 to 0.2265).
    diff, lo, hi, n = paired_difference(_paired_rows(14, 5, 0, 22), "qstar", "greedy")
    assert (diff, lo, hi, n) == pytest.approx((5 / 41, 0.0115, 0.2265, 41), abs=1e-4)
    # Every pair alike: 0 with each side's Wilson half-width, not a zero-width interval.
    diff, lo, hi, _ = paired_difference(_paired_rows(0, 0, 0, 6), "qstar", "greedy")
    assert (diff, lo, hi) == pytest.approx((0, -wilson_interval(0, 6)[1],
                                            wilson_interval(0, 6)[1]))
    # Right on every problem against wrong on every one: within [-1, 1], not past 100 points.
    diff, lo, hi, _ = paired_difference(_paired_rows(0, 5, 0, 0), "qstar", "greedy")
    assert diff == 1 and hi == pytest.approx(1) and 0 < lo < 1
    # No pair disagrees the other way, so no correlation: the two Wilson bounds add.
    assert lo == pytest.approx(1 - math.hypot(1 - wilson_interval(5, 5)[0],
                                              wilson_interval(0, 5)[1]))


def test_summary_reports_qstar_against_the_matched_best_of_n(tmp_path):
    rows = [result("best_of_n", "a", False, 60), result("best_of_n", "b", False, 60),
            result("qstar", "a", True, 400), result("qstar", "b", True, 420),
            result("best_of_n_matched", "a", True, 410),
            result("best_of_n_matched", "b", False, 430)]
    methods = ["best_of_n", "qstar", "best_of_n_matched"]
    write_reports(tmp_path, rows, methods, best_of_n_samples=6,
                  matched=MatchedN(samples=43, reached=True))
    note = (tmp_path / "summary.md").read_text()
    assert ("best_of_n_matched is best-of-43, the smallest N whose chains spend at least Q*'s "
            "410 generated tokens per problem (it spent 420; best-of-42 spent fewer). Its N "
            "matches generated tokens alone, not prefilled tokens, the scorers' tokens or "
            "wall-clock: the comparison below sets those side by side.\n") in note
    assert ("qstar − best_of_n_matched (planning against sampling more, at no fewer generated "
            "tokens): +50.0 points") in note and "paired over 2 problems" in note
    assert "generated tokens per problem 410 against 420" in note
    # Short of Q*'s tokens, the note and the comparison say so.
    write_reports(tmp_path, rows, methods, best_of_n_samples=6,
                  matched=MatchedN(samples=43, reached=False, stalled=True))
    note = (tmp_path / "summary.md").read_text()
    assert ("best_of_n_matched is best-of-43 and spent 420 generated tokens per problem, short "
            "of Q*'s 410: one more chain added no tokens (equal chains, as temperature 0 with "
            "prefix sharing samples). Its comparison below is at fewer tokens than Q*'s. Its N "
            "matches generated tokens alone") in note
    assert "(planning against sampling more, at fewer generated tokens than Q*'s)" in note
    write_reports(tmp_path, rows, methods, best_of_n_samples=6,
                  matched=MatchedN(samples=1, reached=True))
    assert "(it spent 420)." in (tmp_path / "summary.md").read_text()


def test_summary_ends_with_what_q_hat_adds_and_says_when_wall_clock_disagrees(tmp_path):
    def timed(method, problem, correct, tokens, wall):
        return dataclasses.replace(result(method, problem, correct, tokens), wall_s=wall)
    rows = [timed("qstar", "a", True, 100, 5.0), timed("qstar", "b", True, 100, 5.0),
            timed("qstar_no_q", "a", False, 80, 1.0), timed("qstar_no_q", "b", True, 80, 1.0),
            timed("best_of_n_matched", "a", True, 120, 2.0),
            timed("best_of_n_matched", "b", False, 120, 2.0)]
    write_reports(tmp_path, rows, ["qstar", "qstar_no_q", "best_of_n_matched"])
    lines = (tmp_path / "summary.md").read_text().splitlines()
    assert lines[-2].startswith("- qstar − qstar_no_q (what Q̂ adds: the same search with λ = 0): "
                                "+50.0 points")
    assert ("generated tokens per problem 100 against 80, all forward tokens (generated + "
            "prefilled + scorer) 105 against 85, wall-clock 10 s against 2.0 s." in lines[-2])
    assert lines[-1].startswith("- qstar − best_of_n_matched")
    assert lines[-1].endswith(" Equal generated tokens and equal wall-clock disagree here: Q* "
                              "took longer, so at equal wall-clock best-of-N could have sampled "
                              "more.")
    # Q* faster than the matched best-of-N: equal tokens and wall-clock agree.
    slow = [dataclasses.replace(r, wall_s=10.0) for r in rows[4:]]
    write_reports(tmp_path, rows[:4] + slow, ["qstar", "qstar_no_q", "best_of_n_matched"])
    lines = (tmp_path / "summary.md").read_text().splitlines()
    assert "wall-clock 10 s against 20 s." in lines[-1]
    assert "disagree" not in "\n".join(lines)
    # Equal wall-clock: best-of-N could not have sampled more in Q*'s time.
    even = [dataclasses.replace(r, wall_s=5.0) for r in rows[4:]]
    write_reports(tmp_path, rows[:4] + even, ["qstar", "qstar_no_q", "best_of_n_matched"])
    assert "disagree" not in (tmp_path / "summary.md").read_text()
    # Without the other method there is nothing to compare.
    write_reports(tmp_path, rows[:2], ["qstar"])
    assert "qstar −" not in (tmp_path / "summary.md").read_text()


def test_best_of_n_pass_at_n_is_a_separate_ceiling_row(tmp_path):
    rows = [dataclasses.replace(result("best_of_n", p, c), any_correct=a)
            for p, c, a in (("a", False, True), ("b", True, True), ("c", False, False))]
    summary = write_reports(tmp_path, rows, ["best_of_n"])
    assert summary["methods"]["best_of_n"]["accuracy"] == pytest.approx(1 / 3)
    assert summary["methods"]["best_of_n"]["pass_at_n"]["accuracy"] == pytest.approx(2 / 3)
    table = (tmp_path / "summary.md").read_text()
    # Wilson's interval for 2 of 3: 0.573 ± 0.365 (centre (2/3 + 1.96²/6) / (1 + 1.96²/3)).
    assert "| best_of_n pass@N: any chain right (a ceiling read with the grader, not an answer) " \
           "| 66.7 (20.8–93.9) | 3 | | | | | | |\n" in table
    # Methods that log no any_correct get no such entry.
    assert "pass_at_n" not in summarize([result("qstar", "a", True)], ["qstar"])["methods"]["qstar"]


def test_mctsr_pass_at_k_is_a_separate_ceiling_row_named_for_its_nodes(tmp_path):
    rows = [dataclasses.replace(result("mctsr", p, c), any_correct=a)
            for p, c, a in (("a", False, True), ("b", False, False))]
    summary = write_reports(tmp_path, rows, ["mctsr"])
    assert summary["methods"]["mctsr"]["accuracy"] == 0
    assert "| mctsr pass@k: any node right (a ceiling read with the grader, not an answer) " \
           "| 50.0 (" in (tmp_path / "summary.md").read_text()


def test_summary_sets_qstar_against_greedy_decoding_of_each_policy(tmp_path):
    rows = [result("qstar", "a", True, 100), result("qstar", "b", True, 100),
            result("greedy", "a", False, 20), result("greedy", "b", True, 20),
            result("greedy_second_policy", "a", False, 30),
            result("greedy_second_policy", "b", False, 30)]
    write_reports(tmp_path, rows, ["greedy", "greedy_second_policy", "qstar"])
    lines = (tmp_path / "summary.md").read_text().splitlines()
    # Newcombe's intervals: one pair alike and one apart, then both apart (within ±100).
    assert lines[-2:] == [
        "- qstar − greedy (against one greedy chain of the policy it searches): +50.0 points "
        "(95% CI -27.3 to +90.5, paired over 2 problems); generated tokens per problem 100 "
        "against 20, all forward tokens (generated + prefilled + scorer) 105 against 25, "
        "wall-clock 1.0 s against 1.0 s.",
        "- qstar − greedy_second_policy (against greedy decoding of the second policy whose "
        "opinion Q̂ reads): +100.0 points (95% CI +7.0 to +100.0, paired over 2 problems); "
        "generated tokens per problem 100 against 30, all forward tokens (generated + "
        "prefilled + scorer) 105 against 35, wall-clock 1.0 s against 1.0 s."]


def test_only_best_of_n_and_mctsr_ceilings_get_a_row_and_wall_clock_keeps_milliseconds(
        tmp_path):
    rows = [dataclasses.replace(result("self_consistency", p, False), any_correct=True,
                                wall_s=wall) for p, wall in (("a", 0.1234), ("b", 0.5))]
    summary = write_reports(tmp_path, rows, ["self_consistency"])["methods"]
    assert summary["self_consistency"]["pass_at_n"]["accuracy"] == 1.0
    assert summary["self_consistency"]["wall_s"] == 0.623
    table = (tmp_path / "summary.md").read_text().split("\n\n")[0].splitlines()
    assert len(table) == 3 and table[2].startswith("| self_consistency | 0.0 (")


def test_the_plot_puts_each_method_at_its_tokens_per_problem_and_accuracy_with_its_interval(
        tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **_: saved.append(fig))
    rows = [result("greedy", "a", True, 10), result("greedy", "b", False, 30),
            result("qstar", "a", True, 50)]
    summary = summarize(rows, ["greedy", "qstar"])
    reports.plot_accuracy_vs_tokens(summary, tmp_path / "plot.png")
    ax, = saved[0].axes
    points = {}
    for bars in ax.containers:
        line, _, (segments,) = bars.lines
        (x, y), = zip(line.get_xdata(), line.get_ydata())
        (bar_x, low), (_, high) = segments.get_segments()[0]
        points[bars.get_label()] = (x, y, bar_x, low, high)
    greedy_low, greedy_high = (100 * v for v in wilson_interval(1, 2))
    qstar_low, qstar_high = (100 * v for v in wilson_interval(1, 1))
    assert points == {"greedy": pytest.approx((20, 50, 20, greedy_low, greedy_high)),
                      "qstar": pytest.approx((50, 100, 50, qstar_low, qstar_high))}
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("generated tokens per problem",
                                                  "accuracy (%)")


def test_both_sides_of_a_comparison_are_costed_over_the_problems_it_pairs(tmp_path):
    # Q* over a (100 tokens) and b (300), greedy over a alone (20): over a, 100 against 20
    # and 0.5 s against 0.5 s (not 200 tokens and 1.0 s for Q*, nor 10 tokens for greedy).
    rows = [result("qstar", "a", True, 100), result("qstar", "b", False, 300),
            result("greedy", "a", False, 20)]
    write_reports(tmp_path, rows, ["greedy", "qstar"])
    assert (tmp_path / "summary.md").read_text().splitlines()[-1] == (
        "- qstar − greedy (against one greedy chain of the policy it searches): +100.0 points "
        "(95% CI -12.2 to +100.0, paired over 1 problems); generated tokens per problem 100 "
        "against 20, all forward tokens (generated + prefilled + scorer) 105 against 25, "
        "wall-clock 0.5 s against 0.5 s.")


def test_tree_of_thoughts_dfs_says_how_much_it_pruned_and_where_it_answered_nothing(tmp_path):
    rows = [dataclasses.replace(result("tot_dfs", p, False), completion=text, pruned=pruned)
            for p, text, pruned in (("a", "", 5), ("b", "12", 2), ("c", "", 0))]
    summary = write_reports(tmp_path, rows, ["tot_dfs"])["methods"]["tot_dfs"]
    assert (summary["pruned"], summary["pruned_empty_answers"]) == (7, 1)
    assert ("|\n\ntot_dfs pruned 2.3 states a problem below eval.tot.threshold; on 1 of 3 "
            "problems it pruned states and answered no step.\n" in
            (tmp_path / "summary.md").read_text())
    # Rows logged before the count (or of other methods) carry none: no line.
    write_reports(tmp_path, [result("tot_dfs", "a", False)], ["tot_dfs"])
    assert "pruned" not in (tmp_path / "summary.md").read_text()




def test_the_matched_comparison_says_where_generated_and_all_forward_tokens_disagree(
        tmp_path):
    """best_of_n_matched is matched on generated tokens; counting the prefilled and the
    scorers' tokens too, Q* may spend more: the comparison gives both and says so."""
    def row(method, problem, correct, generated, scorer):
        return result(method, problem, correct, generated, (scorer, 0))
    rows = [row("qstar", "a", True, 100, 300), row("qstar", "b", True, 100, 300),
            row("best_of_n_matched", "a", True, 110, 200),
            row("best_of_n_matched", "b", False, 110, 200)]
    methods = ["qstar", "best_of_n_matched"]
    write_reports(tmp_path, rows, methods, matched=MatchedN(samples=6, reached=True))
    assert (tmp_path / "summary.md").read_text().splitlines()[-1] == (
        "- qstar − best_of_n_matched (planning against sampling more, at no fewer generated "
        "tokens): +50.0 points (95% CI -27.3 to +90.5, paired over 2 problems); generated "
        "tokens per problem 100 against 110, all forward tokens (generated + prefilled + "
        "scorer) 405 against 315, wall-clock 1.0 s against 1.0 s. Generated tokens and all "
        "forward tokens disagree here: counting every forward token Q* spent more, so at "
        "equal forward tokens best-of-N could have sampled more.")
    # Short of Q*'s generated tokens but not of its forward tokens: said the other way.
    write_reports(tmp_path, [dataclasses.replace(r, generated_tokens=90) if r.method ==
                             "best_of_n_matched" else dataclasses.replace(r, q_scorer_tokens=0)
                             for r in rows], methods, matched=MatchedN(samples=6, reached=False))
    assert (tmp_path / "summary.md").read_text().endswith(
        "all forward tokens (generated + prefilled + scorer) 105 against 295, wall-clock 1.0 s "
        "against 1.0 s. Generated tokens and all forward tokens disagree here: counting every "
        "forward token best_of_n_matched spent no fewer than Q*.\n")
    # Both counts agree: nothing to say.
    write_reports(tmp_path, [dataclasses.replace(r, q_scorer_tokens=0) for r in rows], methods,
                  matched=MatchedN(samples=6, reached=True))
    assert "disagree" not in (tmp_path / "summary.md").read_text()
