"""What the evaluate stage records of grading: a test-running task's status (a timeout is
recorded as ``timeout`` and counts as wrong); a comparison-graded task's status is None."""

from types import SimpleNamespace

from qstar_jax.search.planner import Outcome, ScoredTrajectory, SearchCounters, SearchResult
from qstar_jax.stages.evaluate import _grade, _graded
from qstar_jax.tasks.base import join_steps


class TaskThatRunsTests:
    def __init__(self, status):
        self.status, self.runs = status, 0

    def grade_status(self, problem, completion):
        self.runs += 1
        return self.status


class ComparedTask:
    def grade(self, problem, completion):
        return completion == "42"


def test_a_timeout_is_recorded_and_counts_as_wrong():
    assert _grade(TaskThatRunsTests("timeout"), None, "code", True) == (False, "timeout")
    assert _grade(TaskThatRunsTests("passed"), None, "code", True) == (True, "passed")


def test_an_unfinished_answer_is_wrong_and_never_run():
    task = TaskThatRunsTests("passed")
    assert _grade(task, None, "code", False) == (False, None) and task.runs == 0


def test_a_compared_answer_has_no_status():
    assert _grade(ComparedTask(), None, "42", True) == (True, None)
    assert _grade(ComparedTask(), None, "41", True) == (False, None)


class AnswerGrader:
    """Compared by the answer after the last space; records every text it grades."""

    def __init__(self):
        self.graded = []

    def grade(self, problem, completion):
        self.graded.append(completion)
        return completion.endswith("right")

    def extract_answer(self, completion):
        return completion.split()[-1] if completion else None


def _result(index, steps, outcome, chains=()):
    return SearchResult(
        problem_index=index, steps=steps, node_id=7, outcome=outcome, score=0.5,
        trajectories=tuple(ScoredTrajectory(node_id=k, steps=t, score=0.0)
                           for k, t in enumerate(chains)),
        counters=SearchCounters(generated_tokens=11, prefilled_tokens=5, q_calls=3,
                                prm_calls=2, expansions=4, wall_s=9.0))


def test_an_answer_is_graded_as_the_method_chose_it_and_the_ceiling_only_for_chains():
    """A chain method answers its ranked chain, wrong here though another chain is right:
    correct is that answer's grade, any_correct the ceiling; an unfinished answer is wrong
    without grading it; each distinct text is graded once."""
    task = AnswerGrader()
    problems = [SimpleNamespace(id="p0"), SimpleNamespace(id="p1")]
    chains = [("x", "so wrong"), ("y", "so right"), ("x", "so wrong")]
    results = [_result(0, chains[0], Outcome.complete, chains),
               _result(1, ("y", "so right"), Outcome.partial, chains)]
    ctx = SimpleNamespace(task=task)
    best_of_n = list(_graded(ctx, "best_of_n", problems, results[:1], 0.123456))
    assert [(r.problem_id, r.correct, r.any_correct, r.answer, r.completed) for r in best_of_n] \
        == [("p0", False, True, "wrong", True)]
    assert task.graded == [join_steps(chains[0]), join_steps(chains[1])]
    r = best_of_n[0]
    assert (r.method, r.completion, r.generated_tokens, r.prefilled_tokens, r.q_calls,
            r.prm_calls, r.expansions, r.wall_s) == (
        "best_of_n", join_steps(chains[0]), 11, 5, 3, 2, 4, 0.1235)
    task.graded.clear()
    [unfinished] = _graded(ctx, "qstar", problems, results[1:], 0.0)
    assert (unfinished.correct, unfinished.any_correct, unfinished.grade_status,
            unfinished.answer, unfinished.completed) == (False, None, None, "right", False)
    assert task.graded == []  # neither the unfinished answer nor any chain is graded


def test_a_test_running_tasks_status_is_logged_with_its_answer():
    task = TaskThatRunsTests("timeout")
    task.extract_answer = lambda completion: None
    [row] = _graded(SimpleNamespace(task=task), "greedy", [SimpleNamespace(id="p0")],
                    [_result(0, ("while True: pass",), Outcome.complete)], 0.0)
    assert (row.correct, row.grade_status, row.any_correct, task.runs) == (
        False, "timeout", None, 1)


def test_every_chain_method_and_mctsr_log_the_any_right_ceiling_and_no_other_method_does():
    chains = [("x", "so wrong"), ("y", "so right")]
    results = [_result(0, chains[0], Outcome.complete, chains)]
    ctx, problems = SimpleNamespace(task=AnswerGrader()), [SimpleNamespace(id="p0")]
    ceilings = {method: [(r.correct, r.any_correct)
                         for r in _graded(ctx, method, problems, results, 0.0)]
                for method in ("self_consistency", "best_of_n", "best_of_n_matched", "mctsr",
                               "greedy", "beam", "tot_bfs", "qstar_no_q")}
    assert ceilings == {"self_consistency": [(False, True)], "best_of_n": [(False, True)],
                        "best_of_n_matched": [(False, True)], "mctsr": [(False, True)],
                        "greedy": [(False, None)], "beam": [(False, None)],
                        "tot_bfs": [(False, None)], "qstar_no_q": [(False, None)]}


def test_a_terminal_generated_after_the_budget_ran_out_is_graded_as_answered():
    """Q* answers the best terminal it generated when its budget ran out before it popped
    one: the method chose that answer without the grader, so it is graded like any other."""
    task = AnswerGrader()
    [row] = _graded(SimpleNamespace(task=task), "qstar", [SimpleNamespace(id="p0")],
                    [_result(0, ("y", "so right"), Outcome.terminal_over_budget)], 0.0)
    assert (row.correct, row.completed, row.answer) == (True, True, "right")
    assert task.graded == [join_steps(("y", "so right"))]
