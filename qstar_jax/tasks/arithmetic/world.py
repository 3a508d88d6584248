"""Arithmetic-chain problems: difficulty knobs, seeded sampling, disjoint splits.

A problem is a start number and a list of operations applied left to right; every
intermediate value stays in ``[0, max_value]``. Which split a chain belongs to is a
stable hash of its question, so no test problem can be drawn for train or validation,
whatever the seeds and sizes (the lowest ``test_fraction`` of the hash range is test,
the next ``validation_fraction`` validation, the rest train).
"""

from __future__ import annotations

import dataclasses
import random

from qstar_jax.tasks.arithmetic.steps import OPERATORS, Operation, format_question
from qstar_jax.tasks.base import int_range
from qstar_jax.tasks.hashed_splits import HashedSplits, hashed_split
from qstar_jax.tasks.hashed_splits import check_split as check_hashed_split

_MAX_DRAWS_PER_PROBLEM = 1000


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArithmeticConfig(HashedSplits):
    """Ranges are inclusive. ``operations``: how many operations a chain has;
    ``add_range`` bounds the operand of + and -, ``multiply_range`` that of *. The split
    fractions and sizes are ``HashedSplits``'.

    The defaults are the default experiment's world, chosen on the validation split: two-
    digit additions and subtractions, which the default from-scratch policy gets right
    end to end about a quarter of the time (greedy), leaving room for a search to help
    (docs/default_experiment.md)."""

    operations: tuple[int, int] = (3, 5)
    start_range: tuple[int, int] = (2, 60)
    add_range: tuple[int, int] = (1, 30)
    multiply_range: tuple[int, int] = (2, 9)
    operators: str = "+-"
    max_value: int = 99
    train_size: int = 50_000

    def __post_init__(self):
        for name in ("operations", "start_range", "add_range", "multiply_range"):
            object.__setattr__(self, name, int_range(f"ArithmeticConfig.{name}",
                                                     getattr(self, name), lowest=0))
        if self.operations[0] < 1:
            raise ValueError("ArithmeticConfig.operations: a chain needs at least 1 operation")
        if not self.operators or set(self.operators) - set(OPERATORS):
            raise ValueError(f"ArithmeticConfig.operators={self.operators!r}: choose from "
                             f"{''.join(OPERATORS)}")
        if self.start_range[1] > self.max_value or self.max_value >= 10 ** 9:
            raise ValueError(f"ArithmeticConfig.max_value={self.max_value}: must be at least "
                             "start_range's high end and below 10^9")
        super().__post_init__()


@dataclasses.dataclass(frozen=True)
class Chain:
    start: int
    operations: tuple[Operation, ...]

    @property
    def values(self) -> list[int]:
        """The start and every intermediate value, the answer last."""
        values = [self.start]
        for operation in self.operations:
            values.append(operation.apply(values[-1]))
        return values

    @property
    def question(self) -> str:
        return format_question(self.start, self.operations)


def check_split(split: str) -> str:
    return check_hashed_split(split, "arithmetic")


def split_of(question: str, config: ArithmeticConfig) -> str:
    return hashed_split(question, config.test_fraction, config.validation_fraction)


def _draw_chain(config: ArithmeticConfig, rng: random.Random) -> Chain | None:
    value = rng.randint(*config.start_range)
    start, operations = value, []
    for _ in range(rng.randint(*config.operations)):
        choices = [op for op in config.operators if _operand_range(config, op, value)]
        if not choices:
            return None
        op = rng.choice(choices)
        operation = Operation(op, rng.randint(*_operand_range(config, op, value)))
        value = operation.apply(value)
        operations.append(operation)
    return Chain(start, tuple(operations))


def _operand_range(config: ArithmeticConfig, op: str, value: int) -> tuple[int, int] | None:
    """The operands of ``op`` that keep ``value`` within [0, max_value], or None."""
    if op == "*":
        lo, hi = config.multiply_range
        hi = min(hi, config.max_value // max(value, 1))
    else:
        lo, hi = config.add_range
        hi = min(hi, config.max_value - value if op == "+" else value)
    return (lo, hi) if lo <= hi else None


def generate_chains(config: ArithmeticConfig, split: str, count: int, *, seed: int
                    ) -> list[Chain]:
    """``count`` distinct chains of ``split``, a fixed sequence for each seed (the first
    k of a longer call are the same k chains)."""
    check_split(split)
    rng = random.Random(f"arithmetic/{split}/{seed}")
    chains: list[Chain] = []
    seen: set[str] = set()
    draws = 0
    while len(chains) < count:
        draws += 1
        if draws > _MAX_DRAWS_PER_PROBLEM * (count + 10):
            raise ValueError(f"arithmetic: found only {len(chains)} distinct {split} chains "
                             f"for {config}; ask for fewer or widen the ranges")
        chain = _draw_chain(config, rng)
        if chain is None or chain.question in seen or split_of(chain.question, config) != split:
            continue
        seen.add(chain.question)
        chains.append(chain)
    return chains

