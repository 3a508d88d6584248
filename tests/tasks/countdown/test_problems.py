"""Countdown problem generation: seeded, solvable, in range, distinct, disjoint splits."""

import itertools

import pytest

from qstar_jax.tasks.countdown.problems import (
    GAME_OF_24, CountdownConfig, canonical_key, generate_problems, split_of)
from qstar_jax.tasks.countdown.rules import CountdownRules
from qstar_jax.tasks.countdown.solver import CountdownSolver

SMALL = CountdownConfig(num_count=3, number_range=(1, 9), target_range=(1, 30))


def generate(config, split, count, seed):
    return generate_problems(config, split, count, seed=seed,
                             solver=CountdownSolver(config.rules))


@pytest.fixture(scope="module")
def game_of_24_solver():
    return CountdownSolver(GAME_OF_24.rules)


def test_generation_is_reproducible_by_seed_and_prefix_stable():
    first = generate(SMALL, "train", 60, seed=3)
    assert generate(SMALL, "train", 60, seed=3) == first
    assert generate(SMALL, "train", 25, seed=3) == first[:25]
    assert generate(SMALL, "train", 60, seed=4) != first


def test_generated_problems_are_solvable_distinct_and_in_range():
    solver = CountdownSolver(SMALL.rules)
    problems = generate(SMALL, "train", 300, seed=0)
    assert len(set(problems)) == 300
    for numbers, target in problems:
        assert len(numbers) == 3 and list(numbers) == sorted(numbers)
        assert all(1 <= n <= 9 for n in numbers) and 1 <= target <= 30
        assert solver.count_solutions(numbers, target) > 0
        assert split_of(numbers, target, SMALL.test_fraction) == "train"


def test_splits_are_disjoint_whatever_the_seeds():
    train = set(generate(SMALL, "train", 700, seed=0))
    validation = set(generate(SMALL, "validation", 60, seed=0))
    test = set(generate(SMALL, "test", 80, seed=0)) | set(generate(SMALL, "test", 80, seed=9))
    assert not train & test and not train & validation and not validation & test
    assert all(split_of(n, t, SMALL.test_fraction) == "test" for n, t in test)


def test_a_validation_share_never_moves_a_test_problem():
    problems = list(itertools.product(itertools.combinations(range(1, 40), 2), range(10)))
    without = [split_of(n, t, 0.1) for n, t in problems]
    with_validation = [split_of(n, t, 0.1, 0.2) for n, t in problems]
    assert [s == "test" for s in without] == [s == "test" for s in with_validation]
    moved = [w for w, v in zip(without, with_validation) if v == "validation"]
    assert set(moved) == {"train"} and 0.17 < len(moved) / len(problems) < 0.23


def test_split_hash_is_stable_and_near_the_asked_fraction():
    assert canonical_key((8, 2, 5, 3), 24) == "2 3 5 8 -> 24"
    assert split_of((8, 2, 5, 3), 24, 0.5) == split_of((2, 3, 5, 8), 24, 0.5)
    problems = list(itertools.product(itertools.combinations(range(1, 40), 2), range(10)))
    share = sum(split_of(n, t, 0.1) == "test" for n, t in problems) / len(problems)
    assert 0.08 < share < 0.12


def test_game_of_24_splits_partition_every_solvable_hand(game_of_24_solver):
    """The whole space is small enough to enumerate: the three splits hold every solvable
    multiset exactly once, and asking for one problem more than a split holds fails."""
    solvable = {hand for hand in itertools.combinations_with_replacement(range(1, 14), 4)
                if game_of_24_solver.solvable_from(hand, 24)}
    sizes = {split: sum(split_of(hand, 24, GAME_OF_24.test_fraction,
                                 GAME_OF_24.validation_fraction) == split for hand in solvable)
             for split in ("train", "validation", "test")}
    splits = {split: generate_problems(GAME_OF_24, split, size, seed=0,
                                       solver=game_of_24_solver)
              for split, size in sizes.items()}
    # Of the 1820 hands, 1362 make 24 with rational arithmetic (1 5 5 5 needs 1/5);
    # 458 cannot (1 1 1 1).
    assert len(solvable) == 1362 and (1, 5, 5, 5) in solvable and (1, 1, 1, 1) not in solvable
    # The hash is part of the split: the same hands land in the same splits on any machine.
    assert sizes == {"train": 954, "validation": 135, "test": 273}
    assert split_of((1, 5, 5, 5), 24, 0.2, 0.1) == "test"
    assert split_of((6, 6, 6, 6), 24, 0.2, 0.1) == "validation"
    every = [problem for problems in splits.values() for problem in problems]
    assert {t for _, t in every} == {24}
    assert {n for n, _ in every} == solvable and len(every) == len(solvable)
    assert all(GAME_OF_24.split_size(split) <= sizes[split] for split in sizes)
    n_test = sizes["test"]
    with pytest.raises(ValueError, match=f"found only {n_test} distinct solvable test"):
        generate_problems(GAME_OF_24, "test", n_test + 1, seed=0, solver=game_of_24_solver)


def test_two_number_splits_hold_every_problem_of_both_ranges_ends_included():
    """2 numbers from 1..4 and targets 1..8: every solvable problem (a + b, b - a, a * b or
    an exact b / a, written by hand) is drawn into exactly one split, the targets 1 and 8
    and the numbers 1 and 4 among them."""
    config = CountdownConfig(num_count=2, number_range=(1, 4), target_range=(1, 8))
    solver = CountdownSolver(config.rules)
    space = {((a, b), target)
             for a, b in itertools.combinations_with_replacement(range(1, 5), 2)
             for target in {a + b, b - a, a * b} | ({b // a} if b % a == 0 else set())
             if 1 <= target <= 8}
    sizes = {split: sum(split_of(n, t, 0.1, 0.1) == split for n, t in space)
             for split in ("train", "validation", "test")}
    assert len(space) == 25 and sizes == {"train": 19, "validation": 3, "test": 3}
    drawn = [problem for split, size in sizes.items()
             for problem in generate_problems(config, split, size, seed=0, solver=solver)]
    assert len(drawn) == 25 and set(drawn) == space
    assert {((2, 4), 8), ((4, 4), 8), ((1, 1), 1), ((4, 4), 1)} <= set(drawn)


def test_any_step_and_signed_rules_generate_solvable_problems():
    config = CountdownConfig(rules=CountdownRules(must_use_all=False, allow_negatives=True),
                             num_count=4, number_range=(1, 6), target_range=(-10, 50))
    solver = CountdownSolver(config.rules)
    problems = generate_problems(config, "test", 40, seed=0, solver=solver)
    assert len(set(problems)) == 40
    assert all(solver.solvable_from(n, t) for n, t in problems)
    assert any(t < 0 for _, t in problems)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_count": 1}, "at least 2"),
    ({"number_range": (0, 5)}, "1 <= low <= high"),
    ({"number_range": (6, 5)}, "1 <= low <= high"),
    ({"target_range": (9, 1)}, "low <= high"),
    ({"target_range": (1, 5, 9)}, "two integers"),
    ({"number_range": (1.5, 9)}, "two integers"),
    ({"num_count": 12, "number_range": (1, 999)}, "digits"),
    ({"num_count": 10, "number_range": (1, 1000)}, "digits"),  # 1000 ** 10 has 31 digits
    ({"test_fraction": 1.0}, "strictly between"),
    ({"test_fraction": 0.0}, "strictly between"),
    ({"test_fraction": 0.5, "validation_fraction": 0.5}, "train keeps a share"),
    ({"train_size": -1}, ">= 0"),
])
def test_bad_configs_say_what_to_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CountdownConfig(**kwargs)


def test_config_accepts_lists_from_yaml_and_rejects_unknown_splits():
    config = CountdownConfig(number_range=[1, 9], target_range=[2, 20],
                             rules=CountdownRules(operations=["+", "*"]))
    assert config.number_range == (1, 9) and config.target_range == (2, 20)
    assert config.rules.operations == ("+", "*")
    # 999 ** 10 has 30 digits, the most a step spells: the widest config allowed.
    assert CountdownConfig(num_count=10, number_range=(1, 999)).num_count == 10
    with pytest.raises(ValueError, match="splits"):
        generate(config, "dev", 1, seed=0)
    with pytest.raises(ValueError, match="different rules"):
        generate_problems(config, "train", 1, seed=0, solver=CountdownSolver(CountdownRules()))
