"""Countdown: reach a target from given numbers with + - * /; Game of 24 is its
4-number case. The synthetic task on which the whole Q* pipeline runs on a CPU."""

from qstar_jax.tasks.countdown.grader import StepCheck, can_still_succeed, check_step, \
    check_trace, grade_trace, step_legality, step_reward
from qstar_jax.tasks.countdown.problems import GAME_OF_24, CountdownConfig, canonical_key, \
    generate_problems, split_of
from qstar_jax.tasks.countdown.rules import OPERATIONS, CountdownRules, StepError, \
    apply_operation
from qstar_jax.tasks.countdown.solver import CountdownSolver, SolveResult, solve
from qstar_jax.tasks.countdown.steps import COUNTDOWN_ALPHABET, Step, format_step, parse_step
from qstar_jax.tasks.countdown.task import CountdownTask
from qstar_jax.tasks.hashed_splits import SPLITS

__all__ = [
    "COUNTDOWN_ALPHABET", "GAME_OF_24", "OPERATIONS", "SPLITS", "CountdownConfig",
    "CountdownRules", "CountdownSolver", "CountdownTask", "SolveResult", "Step", "StepCheck",
    "StepError", "apply_operation", "can_still_succeed", "canonical_key", "check_step",
    "check_trace", "format_step", "generate_problems", "grade_trace", "parse_step", "solve",
    "split_of", "step_legality", "step_reward",
]
