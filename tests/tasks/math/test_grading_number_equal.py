"""number_equal: GSM8K answers compared as exact numbers, table-driven."""

from __future__ import annotations

import pytest

from qstar_jax.tasks.math.grading import number_equal

# (prediction, reference, verdict)
CASES = [
    # Plain spellings of the same number.
    ("18", "18", True),
    ("18.0", "18", True),
    ("18.00", "18", True),
    ("18", "18.000", True),
    ("007", "7", True),
    ("+7", "7", True),
    ("4.20", "4.2", True),
    (".5", "0.5", True),
    ("0.50", "0.5", True),
    ("0", "0", True),
    ("-0", "0", True),
    ("0.0", "0", True),
    ("  42  ", "42", True),
    ("42\n", "42", True),
    # Thousands separators.
    ("1,000", "1000", True),
    ("1000", "1,000", True),
    ("1,000,000", "1000000", True),
    ("1,234,567.00", "1234567", True),
    ("2,500.50", "2500.5", True),
    ("10,\\!000", "10000", True),
    # Currency, before or after, with or without a sign.
    ("$18", "18", True),
    ("$18.00", "18", True),
    ("\\$18", "18", True),
    ("$ 42", "42", True),
    ("$1,000,000", "1000000", True),
    ("\\$1,200", "1200", True),
    ("€20", "20", True),
    ("20€", "20", True),
    ("£3.50", "3.5", True),
    ("¥500", "500", True),
    ("₹500", "500", True),
    ("-$5", "-5", True),
    ("$-5", "-5", True),
    ("$18$", "18", True),
    # Trailing full stop and unit words.
    ("18.", "18", True),
    ("$18.", "18", True),
    ("18 dollars", "18", True),
    ("18 dollars.", "18", True),
    ("$18 per hour", "18", True),
    ("18 apples", "18", True),
    ("12 square feet", "12", True),
    ("12 sq. ft.", "12", True),
    ("5 hours.", "5", True),
    ("12\\text{ dollars}", "12", True),
    ("\\boxed{18}", "18", True),
    # Negatives, including the Unicode minus.
    ("-5", "-5", True),
    ("\u22125", "-5", True),
    ("-12.5", "-12.50", True),
    # Fractions are numbers too.
    ("1/2", "0.5", True),
    ("\\frac{1}{2}", "0.5", True),
    ("3/4", "0.75", True),
    ("-3/4", "-0.75", True),
    ("3/-4", "-0.75", True),
    # Percent is a unit: the number before it is the answer.
    ("50%", "50", True),
    ("50\\%", "50", True),
    ("50 percent", "50", True),
    ("50", "50%", True),
    # The right-hand side of an equation is the answer.
    ("x = 18", "18", True),
    ("5 + 13 = 18", "18", True),
    # Of a chain of equations, the last side: a model working to its answer on the line.
    ("3 * 4 = 12 + 6 = 18", "18", True),
    ("3 * 4 = 12 + 6 = 18", "12", False),
    # Exact comparison: no float tolerance, however close.
    ("100000", "100001", False),
    ("100001", "100000", False),
    ("17.999999999999", "18", False),
    ("18.01", "18", False),
    ("999999999999999999999", "1000000000000000000000", False),
    # Numerals of up to MAX_NUMERAL_CHARS = 100 characters are read, also as the two sides
    # of a fraction (201 characters with its bar).
    ("9" * 100, "9" * 100, True),
    ("1" + "0" * 99, "1" + "0" * 98 + "1", False),
    ("9" * 100 + "/" + "9" * 100, "1", True),
    (f"\\frac{{{'9' * 100}}}{{{'3' * 100}}}", "3", True),
    ("0.333", "1/3", False),
    ("1/3", "0.33", False),
    # The known traps.
    ("50", "0.5", False),
    ("0.5", "50", False),
    ("50%", "0.5", False),
    ("1/2", "2", False),
    ("2", "1/2", False),
    # Different numbers.
    ("18", "-18", False),
    ("-18", "18", False),
    ("18", "180", False),
    ("1,000", "100", False),
    ("2 + 2 = 5", "4", False),
    # Malformed numerals are not numbers.
    ("1,00", "100", False),
    ("10,0000", "100000", False),
    ("5,5", "5.5", False),
    ("1.2.3", "1.2", False),
    ("2.5e3", "2500", False),
    ("1e3", "1000", False),
    ("18/0", "18", False),
    ("0/0", "0", False),
    ("3:00", "3", False),
    # Not a single number.
    ("five", "5", False),
    ("five", "five", False),  # two non-numbers are not equal numbers
    ("2.5e3", "2.5e3", False),
    ("3 hours and 20 minutes", "3", False),
    ("18 or 19", "18", False),
    ("18, 19", "18", False),
    ("about 18", "18", False),
    ("18?", "18", False),
    ("2 pi", "2", False),
    ("18x", "18", False),
    ("x", "18", False),
    # Empty and non-string input.
    ("", "5", False),
    ("   ", "5", False),
    ("18", "", False),
    ("$", "0", False),
    ("-", "0", False),
    (".", "0", False),
    (None, "18", False),
    (18, "18", False),
    ("18", None, False),
    # Spaces between digits: SI thousands join, a mixed number is one, anything else is
    # two numbers.
    ("1 000", "1000", True),
    ("1 000 000", "1000000", True),
    ("10 000.5", "10000.5", True),
    ("3 1/2", "7/2", True),
    ("-3 1/2", "-3.5", True),
    ("3 1/2", "31/2", False),
    ("18 19", "1819", False),
    ("18 19", "342", False),
    ("0.123 456", "0.123456", False),  # digits after a decimal point are not thousands
    ("1234 567", "1234567", False),  # nor is a group of four, before or after
    ("12 3456", "123456", False),
]

# Units written any way after the number, counts, magnitude words, and the clause an
# answer phrase ends with (what GSM8K answers write, each once graded wrong).
UNIT_CASES = [
    ("4 times", "4", True),  # "How many times ...?"
    ("18 m", "18", True),
    ("18 h", "18", True),
    ("18m", "18", True),
    ("18cm", "18", True),
    ("18kg", "18", True),
    ("18 ft\u00b2", "18", True),
    ("18 m^2", "18", True),
    ("18 \u00b0F", "18", True),
    ("$18/hour", "18", True),
    ("18 km/h", "18", True),
    ("18 (dollars)", "18", True),
    ("(18)", "18", True),
    ("18, which is the total", "18", True),
    ("18 (eighteen)", "18", True),
    ("18 dollars!", "18", True),
    ("**18** apples", "18", True),
    # A magnitude word multiplies; it is no unit.
    ("3 dozen", "3", False),
    ("3 dozen", "36", True),
    ("5 hundred", "5", False),
    ("5 hundred", "500", True),
    ("1.5 million", "1500000", True),
    ("$1.5 million", "1,500,000", True),
    ("2 thousand dollars", "2000", True),
    ("1.5 million", "1.5", False),
    # Still refused: two numbers, a time, a product, a letter after the number.
    ("18 or 19", "18", False),
    ("18 and 19", "18", False),
    ("1 or 234", "1234", False),
    ("1, 234", "1234", False),
    ("7:30", "7", False),
    ("7:30", "730", False),
    ("3 x 6", "3", False),
    ("3 x 6", "18", False),
    ("18 x", "18", False),
    ("18e", "18", False),
    ("1.234", "1234", False),  # a decimal point, never a thousands separator
    ("18 (19)", "18", False),
    ("18 (or 19)", "18", False),
    # The answer is the phrase's first value: a reason after it is not the answer...
    ("20, since 9 + 9 = 18", "18", False),
    ("20, since 9 + 9 = 18", "20", True),
    ("20 because 9 + 9 = 18", "18", False),
    ("20; 9 + 9 = 18", "18", False),
    ("18 (3 * 6 = 18)", "18", True),
    ("20 (3 * 6 = 18)", "18", False),
    ("18 = 3 * 6", "18", True),  # the number first, its working after
    ("18 = 3 * 6", "3", False),
    # ... and an equation chain gives its last side only when the phrase is the chain.
    ("Total = 18", "18", True),
    ("3 apples * 6 = 18", "18", True),
    ("20 and 9 + 9 = 18", "18", False),
]

# A word of maths after a number is no unit: "2 times 3" is not 2. ("4 times" alone is a
# count, the answer to "how many times": tested in UNIT_CASES.)
MATH_WORDS = ["pi", "sqrt", "sin", "cos", "tan", "log", "ln", "exp", "cdot", "over",
              "plus", "minus"]


def test_table_is_large_and_balanced():
    verdicts = [verdict for _, _, verdict in CASES]
    assert len(CASES) >= 80
    assert verdicts.count(True) >= 30 and verdicts.count(False) >= 30


@pytest.mark.parametrize(("pred", "ref", "verdict"), CASES)
def test_number_equal(pred, ref, verdict):
    assert number_equal(pred, ref) is verdict


@pytest.mark.parametrize(("pred", "ref", "verdict"), UNIT_CASES)
def test_units_counts_magnitudes_and_clauses(pred, ref, verdict):
    assert number_equal(pred, ref) is verdict


@pytest.mark.parametrize("word", MATH_WORDS)
def test_a_maths_word_after_a_number_is_no_unit(word):
    assert not number_equal(f"2 {word} 3", "2")
    assert not number_equal(f"2 {word}", "2")


def test_times_between_numbers_is_a_product_and_after_one_a_count():
    assert not number_equal("2 times 3", "2")
    assert not number_equal("2 times 3", "6")
    assert number_equal("2 times", "2")
