"""What the evaluate stage records of grading: a test-running task's status (a timeout is
recorded as ``timeout`` and counts as wrong); a comparison-graded task's status is None."""

from qstar_jax.stages.evaluate import _grade


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
