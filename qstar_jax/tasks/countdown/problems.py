"""Countdown problem generation: difficulty knobs, seeded sampling, disjoint splits.

A problem is a multiset of numbers (written in ascending order) and an integer target.
Which split a problem belongs to is a stable hash of that canonical pair, so no test
problem can ever be drawn for train or validation, whatever the seeds and sizes (as long
as the fractions are the same): the lowest ``test_fraction`` of the hash range is test,
the next ``validation_fraction`` validation (for choosing settings without looking at
test), the rest train. Changing ``validation_fraction`` never moves a test problem.
Sampling draws the multiset uniformly (each multiset equally likely, not each ordered
tuple) and the target uniformly from its range, and keeps solvable, unseen problems of
the asked split: the result is a uniform random sequence of the split's distinct problems.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any, Mapping, Sequence

from qstar_jax.tasks.base import int_range
from qstar_jax.tasks.countdown.rules import CountdownRules
from qstar_jax.tasks.countdown.solver import CountdownSolver
from qstar_jax.tasks.countdown.steps import MAX_DIGITS, format_numbers
from qstar_jax.tasks.hashed_splits import HashedSplits, hashed_split
from qstar_jax.tasks.hashed_splits import check_split as check_hashed_split


# Draws in a row without a new problem before a split counts as exhausted: 20 draws
# per problem in the space leave a missed problem a chance of about e^-20.
_STALE_DRAWS_PER_PROBLEM = 20
_MAX_STALE_DRAWS = 200_000


def from_fields(cls: type, value: Any) -> Any:
    """``value`` if it is a ``cls``, else a ``cls`` built from a mapping of its fields
    (as a YAML config gives them)."""
    if isinstance(value, cls):
        return value
    names = sorted(field.name for field in dataclasses.fields(cls))
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a {cls.__name__} or a mapping of its fields "
                         f"({', '.join(names)}), got {value!r}")
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; its fields are: "
                         f"{', '.join(names)}")
    return cls(**value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CountdownConfig(HashedSplits):
    """The game's rules and the problem distribution; ranges are inclusive. The split
    fractions and sizes (train_size / validation_size / test_size: how many problems
    ``load`` gives when no limit is asked) are ``HashedSplits``'.
    """

    rules: CountdownRules = dataclasses.field(default_factory=CountdownRules)
    num_count: int = 4
    number_range: tuple[int, int] = (1, 13)
    target_range: tuple[int, int] = (1, 100)
    train_size: int = 20_000

    def __post_init__(self):
        object.__setattr__(self, "rules", from_fields(CountdownRules, self.rules))
        for name, lowest in (("number_range", 1), ("target_range", None)):
            object.__setattr__(self, name, int_range(f"CountdownConfig.{name}",
                                                     getattr(self, name), lowest=lowest))
        hi = self.number_range[1]
        if self.num_count < 2:
            raise ValueError(f"CountdownConfig.num_count={self.num_count}: a step combines "
                             "two numbers, so give at least 2")
        if hi ** self.num_count >= 10 ** MAX_DIGITS:
            raise ValueError(f"CountdownConfig: {self.num_count} numbers up to {hi} can "
                             f"make values past {MAX_DIGITS} digits, which the step format "
                             "does not spell; lower num_count or number_range")
        super().__post_init__()


# The classic: four numbers from 1..13 (a card deck), make 24, fractions allowed on the way
# (1 5 5 5: 5 * (5 - 1/5)).
GAME_OF_24 = CountdownConfig(rules=CountdownRules(allow_fractions=True), num_count=4,
                             number_range=(1, 13), target_range=(24, 24),
                             test_fraction=0.2, validation_fraction=0.1, train_size=900,
                             validation_size=120, test_size=250)


def check_split(split: str) -> str:
    return check_hashed_split(split, "Countdown")


def canonical_key(numbers: Sequence[int], target: int) -> str:
    """``"2 3 5 8 -> 24"``: the problem with its numbers sorted."""
    return f"{format_numbers(sorted(numbers))} -> {target}"


def split_of(numbers: Sequence[int], target: int, test_fraction: float,
             validation_fraction: float = 0.0) -> str:
    return hashed_split(canonical_key(numbers, target), test_fraction, validation_fraction)


def generate_problems(config: CountdownConfig, split: str, count: int, *, seed: int,
                      solver: CountdownSolver) -> list[tuple[tuple[int, ...], int]]:
    """``count`` distinct solvable (numbers, target) problems of ``split``, a fixed
    sequence for each seed (the first k of a longer call are the same k problems)."""
    check_split(split)
    if solver.rules != config.rules:
        raise ValueError("generate_problems: the solver plays different rules from config")
    rng = random.Random(f"countdown/{split}/{seed}")
    lo, hi = config.number_range
    k = config.num_count
    slots = hi - lo + k  # stars and bars: a k-subset of these is a k-multiset of lo..hi
    target_lo, target_hi = config.target_range
    space = math.comb(slots, k) * (target_hi - target_lo + 1)
    stale_limit = min(_STALE_DRAWS_PER_PROBLEM * space, _MAX_STALE_DRAWS)
    problems, seen, stale = [], set(), 0
    while len(problems) < count:
        picks = sorted(rng.sample(range(slots), k))
        numbers = tuple(lo + pick - index for index, pick in enumerate(picks))
        target = rng.randint(target_lo, target_hi)
        if ((numbers, target) not in seen
                and split_of(numbers, target, config.test_fraction,
                             config.validation_fraction) == split
                and solver.solvable_from(numbers, target)):
            seen.add((numbers, target))
            problems.append((numbers, target))
            stale = 0
            continue
        stale += 1
        if stale > stale_limit:
            raise ValueError(
                f"Countdown: found only {len(problems)} distinct solvable {split} problems "
                f"for {config} ({stale} draws in a row gave nothing new); ask for at most "
                f"{len(problems)}, or widen number_range, target_range or num_count")
    return problems
