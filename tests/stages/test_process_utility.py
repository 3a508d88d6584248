"""The process utility evaluate's searches score steps with (search.utility): the code
rule on the task's code prefix and the steps so far, the Countdown rule from the task."""

from types import SimpleNamespace

import numpy as np

from qstar_jax.config import Utility
from qstar_jax.search.interface import QItem
from qstar_jax.search.process_utility import ZeroUtility
from qstar_jax.stages.evaluate import process_utility
from qstar_jax.tasks.base import Problem

PROBLEMS = [Problem(id="f", question='def f(x):\n    """Doc."""\n', reference=None),
            Problem(id="g", question="def g(s):\n", reference=None)]


def utility(kind, task=None):
    config = SimpleNamespace(search=SimpleNamespace(utility=kind))
    return process_utility(SimpleNamespace(config=config, task=task), PROBLEMS)


def item(problem_index, *steps):
    return QItem(problem_index=problem_index, prefix_steps=steps[:-1], step_text=steps[-1],
                 hidden=None)


def test_the_code_rule_reads_the_steps_after_each_problems_code_prefix():
    code = utility(Utility.code_rule, SimpleNamespace(code_prefix=lambda p: p.question))
    rewards = code.step_rewards([
        item(0, "    return x"),  # a body after f's docstring
        item(0, "    return x)"),  # a bracket that closes nothing
        item(0, "    y = (x", "    + 1)"),  # closes the bracket its earlier step opened
        item(1, "    return s"),  # g's body
        item(1, "return s"),  # g's def is still waiting for an indented body
    ])
    np.testing.assert_array_equal(rewards, [0.0, -0.5, 0.0, 0.0, -0.5])


def test_the_countdown_rule_is_the_tasks_step_reward_of_that_problem():
    asked = []

    def step_reward(problem, steps):
        asked.append((problem.id, steps))
        return 1.0
    countdown = utility(Utility.countdown_rule, SimpleNamespace(step_reward=step_reward))
    np.testing.assert_array_equal(countdown.step_rewards([item(1, "a", "b"), item(0, "c")]),
                                  [1.0, 1.0])
    assert asked == [("g", ("a", "b")), ("f", ("c",))]
    assert isinstance(utility(Utility.zero), ZeroUtility)
