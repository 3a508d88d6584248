"""summary.md's notes under the table: the scorer tokens column and what it counts, the
compiling in the wall-clock, and what the intervals cover."""

import json

from qstar_jax.outputs.report_notes import wall_clock_note
from qstar_jax.outputs.reports import write_reports
from tests.outputs.problem_results import result

CACHED = ("Q̂ or a learned PRM on the policy's own hidden states reads what the decoder "
          "computed, at no forward token of its own.")


def test_the_scorers_tokens_are_summed_per_method_shown_a_problem_and_named(tmp_path):
    rows = [result("best_of_n", "a", False, 60, (120, 0)),
            result("qstar", "a", True, 100, (300, 40)), result("qstar", "b", True, 100, (200, 60))]
    summary = write_reports(tmp_path, rows, ["best_of_n", "qstar"], uncached_scorers=(
        "Q̂'s second policy", "the Math-Shepherd PRM (models/shepherd)"))["methods"]
    assert json.loads((tmp_path / "summary.json").read_text())["methods"] == summary
    assert [(summary[m]["q_scorer_tokens"], summary[m]["prm_scorer_tokens"])
            for m in ("best_of_n", "qstar")] == [(120, 0), (500, 100)]
    text = (tmp_path / "summary.md").read_text()
    assert text.startswith(
        "| method | accuracy (95% CI) | n | generated tok/problem | prefilled tok/problem "
        "| scorer tok/problem | Q̂ calls/problem | PRM calls/problem | wall s |\n")
    assert "| qstar | 100.0 (34.2–100.0) | 2 | 100.0 | 5.0 | 300.0 | 2.0 | 0.0 | 1.0 |\n" in text
    assert ("\nScorer tokens are those Q̂'s second policy and the Math-Shepherd PRM "
            "(models/shepherd) read over each child scored (its prompt, steps and step) in "
            "forward passes of their own that no cache serves (the Q̂ and PRM calls columns "
            f"count the children); the wall-clock includes them. {CACHED}\n") in text
    assert "in no column" not in text
    write_reports(tmp_path, rows[:1], ["best_of_n"])
    assert (f"\nNo scorer here runs a forward pass of its own: {CACHED}\n"
            in (tmp_path / "summary.md").read_text())


def test_rows_logged_before_scorer_tokens_were_counted_show_none(tmp_path):
    rows = [result("greedy", "a", False, 20, None), result("qstar", "a", True, 100),
            result("qstar", "b", True, 100, None)]
    summary = write_reports(tmp_path, rows, ["greedy", "qstar"])["methods"]
    assert summary["qstar"]["q_scorer_tokens"] is None
    assert summary["qstar"]["prm_scorer_tokens"] is None
    text = (tmp_path / "summary.md").read_text()
    assert "| greedy | 0.0 (0.0–79.3) | 1 | 20.0 | 5.0 | – | 2.0 | 0.0 | 0.5 |\n" in text
    assert (f"{CACHED} greedy, qstar show – for them: logged before scorer tokens were "
            "counted.\n") in text
    assert ("generated tokens per problem 100 against 20, all forward tokens not counted "
            "(rows logged before the scorers' were), wall-clock") in text


def test_the_wall_clock_note_says_which_methods_compiling_falls_on(tmp_path):
    methods = ["greedy", "best_of_n", "qstar", "qstar_no_q", "best_of_n_matched"]
    write_reports(tmp_path, [result(m, "a", True) for m in methods], methods)
    assert ("\nWall-clock is each method's own searches, compiling included. The methods were "
            "evaluated in the table's order, and a program is compiled once, by the first "
            "method that runs it: a later method pays nothing for the programs an earlier one "
            "compiled (as best_of_n_matched after best_of_n and qstar_no_q after qstar, which "
            "search alike), and with the persistent compile cache (QSTAR_COMPILE_CACHE) a "
            "rerun reads the programs back and compiles little at all. Which programs each "
            "method shares is not recorded, so an unknown part of the earlier methods' "
            "wall-clock is compiling that the later ones are spared: a difference in "
            "wall-clock is not one of search time alone.\n") in (
        tmp_path / "summary.md").read_text()
    # Whichever of a pair comes first compiles for the other; without a pair, none is named.
    assert "(as qstar after qstar_no_q, which search alike)" in wall_clock_note(
        ["qstar_no_q", "greedy", "qstar"])
    assert "compiled, and with the persistent" in wall_clock_note(["greedy", "qstar"])
    # Self-consistency's rows come of best-of-N's search, whose wall-clock they share.
    assert ("evaluated in the table's order (self_consistency, voting on best_of_n's chains, "
            "with best_of_n), and") in wall_clock_note(["self_consistency", "best_of_n"])
    assert wall_clock_note(["qstar"]) == (
        "\nWall-clock is the searches', compiling included; with the persistent compile cache "
        "(QSTAR_COMPILE_CACHE) a rerun reads the programs back and compiles little at all.\n")


def test_the_intervals_are_said_to_be_over_problems_alone(tmp_path):
    write_reports(tmp_path, [result("greedy", "a", True)], ["greedy"])
    assert ("\nThe 95% intervals are over the evaluation problems alone (Wilson's score "
            "interval for each method's accuracy, Newcombe's paired interval for each qstar "
            "difference): they leave out what another training seed of the policy, Q̂ or the "
            "PRM, or other draws of the sampled steps, would change.\n"
            in (tmp_path / "summary.md").read_text())
