"""The STaR experiment's hints: a solution trace written as one expression."""

import random
import re
import runpy
from fractions import Fraction
from pathlib import Path

from qstar_jax.tasks.countdown.task import CountdownTask

SCRIPT = runpy.run_path(str(Path(__file__).parents[1] / "experiments" / "star_countdown.py"))


def evaluate(expression: str) -> Fraction:
    """The expression's exact value (numbers as Fractions, Python's precedence)."""
    return eval(re.sub(r"(\d+)", r"Fraction(\1)", expression), {"Fraction": Fraction})


def test_a_hint_is_the_solution_as_one_expression_and_no_step_can_quote_it():
    task = CountdownTask({"num_count": 3, "number_range": [1, 15], "target_range": [10, 60]})
    rng = random.Random(0)
    for problem in task.load("train", limit=40, seed=0):
        steps = task.solution_steps(problem, rng)
        expression = SCRIPT["solution_expression"](steps)
        assert evaluate(expression) == problem.metadata["target"], (steps, expression)
        # Every given number used once, none other.
        assert sorted(map(int, re.findall(r"\d+", expression))) == \
            sorted(problem.metadata["numbers"])
        star = SCRIPT["star_problem"](problem, "as " + expression)
        assert star.prompt == task.prompt(problem)
        assert star.hinted_prompt.startswith(problem.question.removesuffix("."))
        assert set(star.hinted_prompt) <= set(task.alphabet)  # the policy can read it
        assert not any(star.hint in step for step in steps)


def test_an_operand_made_twice_takes_the_latest_expression():
    steps = ["2 + 2 = 4 (left: 4 4)", "4 * 4 = 16 (left: 16)"]  # 4 given, 4 made
    assert SCRIPT["solution_expression"](steps) == "(2+2)*4"
