"""The Countdown text format: canonical numbers, the strict step parser, the alphabet."""

import random
from fractions import Fraction

import pytest

from qstar_jax.tasks.countdown.steps import (
    COUNTDOWN_ALPHABET, Step, format_number, format_question, format_step, parse_number,
    parse_step)


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("7", 7), ("28561", 28561), ("-3", -3), ("8/3", Fraction(8, 3)),
    ("-8/3", Fraction(-8, 3)), ("1/13", Fraction(1, 13)),
])
def test_canonical_numbers_round_trip(text, value):
    assert parse_number(text) == value
    # A whole number is an int, never Fraction(n, 1): exact division checks for ints.
    assert type(parse_number(text)) is type(value)
    assert format_number(value) == text


@pytest.mark.parametrize("text", [
    "07", "-0", "+3", "4/2", "8/1", "0/5", "3/0", "8/-3", "2.5", "", " 3", "3 ", "٣", "1e3",
    "9" * 31,
])
def test_non_canonical_numbers_are_rejected(text):
    assert parse_number(text) is None


def test_numbers_of_thirty_digits_are_read_in_full():
    assert parse_number("9" * 30) == 10 ** 30 - 1
    assert parse_number("-" + "9" * 30) == 1 - 10 ** 30
    assert parse_number("1/" + "9" * 30) == Fraction(1, 10 ** 30 - 1)
    assert parse_number("9" * 30 + "/" + "7" * 29 + "3") == Fraction(
        10 ** 30 - 1, int("7" * 29 + "3"))
    assert parse_number("1/" + "9" * 31) is None
    big = "9" * 30
    assert parse_step(f"{big} - 1 = {big[:-1]}8 (left: {big})") == Step(
        left=10 ** 30 - 1, op="-", right=1, result=10 ** 30 - 2, remaining=(10 ** 30 - 1,))


def test_whole_fraction_formats_as_integer():
    assert format_number(Fraction(12, 4)) == "3"


def test_parse_step_reads_every_field():
    step = parse_step("8 / 1/3 = 24 (left: 24)")
    assert step == Step(left=8, op="/", right=Fraction(1, 3), result=24, remaining=(24,))
    done = parse_step("5 - -3 = 8 (left: 2 8) done")
    assert done == Step(left=5, op="-", right=-3, result=8, remaining=(2, 8), done=True)
    assert format_step(step) == "8 / 1/3 = 24 (left: 24)"
    assert format_step(done) == "5 - -3 = 8 (left: 2 8) done"


@pytest.mark.parametrize("line", [
    "8 * 3 = 24 (left: 24 5) ",        # trailing space
    " 8 * 3 = 24 (left: 24 5)",        # leading space
    "8*3 = 24 (left: 24 5)",
    "8 * 3 = 24 (left:  24 5)",
    "8 * 3 = 24 (left:24 5)",
    "8 * 3 = 24 (left: 24 5",
    "8 * 3 = 24 (left: )",
    "8 * 3 = 24",
    "8 x 3 = 24 (left: 24 5)",
    "8 * 3 = 024 (left: 24 5)",
    "8 * 3 = 24 (left: 24 5) Done",
    "8 * 3 = 24 (left: 24 5)done",
    "8 * 3 = 24 (left: 24 5) done done",
    "8 * 3 = 24 (left: 24 5)\n",
    "8 * 3 = 24 (Left: 24 5)",
    "(8 * 3) = 24 (left: 24 5)",
    "",
])
def test_parse_step_is_strict(line):
    assert parse_step(line) is None


def _garbage_lines(rng: random.Random, count: int) -> list[str]:
    valid = "10 * 10 = 100 (left: 4 4 100)"
    symbols = COUNTDOWN_ALPHABET + "\t\r\x00é٣½"
    lines = []
    for _ in range(count):
        kind = rng.randrange(3)
        if kind == 0:  # noise over the format's own symbols
            lines.append("".join(rng.choice(symbols) for _ in range(rng.randrange(60))))
        elif kind == 1:  # one edit to a valid step
            i = rng.randrange(len(valid))
            lines.append(valid[:i] + rng.choice(["", rng.choice(symbols)])
                         + valid[i + rng.randrange(2):])
        else:  # number-shaped text, some of it huge
            digits = "".join(rng.choice("0123456789/-") for _ in range(rng.randrange(1, 80)))
            lines.append(f"{digits} + {digits} = {digits} (left: {digits})")
    return lines


def test_parser_never_raises_and_only_accepts_canonical_text():
    accepted = 0
    for line in _garbage_lines(random.Random(0), 600) + ["9" * 5000 + " + 1 = 2 (left: 2)"]:
        step = parse_step(line)
        if step is not None:
            accepted += 1
            assert format_step(step) == line
    # Some single edits keep a step well formed (e.g. another digit), and are accepted.
    assert 0 < accepted < 600


def test_alphabet_covers_the_question_and_steps():
    text = (format_question([2, 3, 5, 8], 24) + "\n"
            + format_step(Step(left=Fraction(-8, 3), op="*", right=9, result=-24,
                               remaining=(-24,), done=True)))
    assert set(text) <= set(COUNTDOWN_ALPHABET)
    assert COUNTDOWN_ALPHABET == "".join(sorted(set(COUNTDOWN_ALPHABET)))
    # Its characters, in order, are the char tokenizer's vocabulary: nothing else.
    assert COUNTDOWN_ALPHABET == "\n ()*+-./0123456789:=Uadefklmnost"
    assert format_question([2, 3, 5, 8], 24) == "Use 2 3 5 8 to make 24."
