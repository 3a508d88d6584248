"""Arithmetic chains: apply a list of operations left to right, one computation per line.

The default experiment's world. A wrong line dooms the answer (every later line builds
on its result), nothing in the question reveals which sampled line is wrong without
doing the arithmetic, and a learned value model can learn to do that check.
"""

from qstar_jax.tasks.arithmetic.steps import ARITHMETIC_ALPHABET, Operation, format_question, \
    format_step, parse_answer, parse_step
from qstar_jax.tasks.arithmetic.task import ArithmeticTask
from qstar_jax.tasks.arithmetic.world import ArithmeticConfig, Chain, generate_chains

__all__ = ["ARITHMETIC_ALPHABET", "ArithmeticConfig", "ArithmeticTask", "Chain", "Operation",
           "format_question", "format_step", "generate_chains", "parse_answer", "parse_step"]
