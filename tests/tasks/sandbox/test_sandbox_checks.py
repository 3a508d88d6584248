"""How tests are split between child and parent, and how the parent judges values."""

from __future__ import annotations

import pytest

from qstar_jax.tasks.sandbox.sandbox_checks import check_failure, parse_check

# (test, what the child evaluates, None when the child runs the test as a statement)
SPLITS = [
    ("assert remove_odd([1,2,3]) == [2]", ["remove_odd([1,2,3])"]),
    ("assert [2] == remove_odd([1,2,3])", ["remove_odd([1,2,3])"]),
    ("assert set(f((3, 4), (4, 5))) == set((4,))", ["set(f((3, 4), (4, 5)))", "set((4,))"]),
    ("assert 1 < f(2) <= 3", ["f(2)"]),
    ("assert f(1) in [1, 2]", ["f(1)"]),
    ("assert not is_prime(4)", ["is_prime(4)"]),
    ("assert is_prime(5)", ["is_prime(5)"]),
    ("assert f(None) is None", ["f(None)"]),
    ("assert f(0) is False", ["f(0)"]),
    ("assert math.isclose(area(2), 12.566, rel_tol=0.001)", ["area(2)"]),
    ("assert f(1) == 2 and g(2) == 3", ["f(1)", "g(2)"], [1]),
    ("assert f(1) is g(1)", None),
    ("assert math.isclose(f(1), 2, tol=3)", None),
    # A tolerance the child would compute, or another module's isclose (numpy's defaults
    # are not math's): the parent cannot judge them as math.isclose.
    ("assert math.isclose(f(1), 2, rel_tol=tol)", None),
    ("assert np.isclose(f(1), 2.0)", ["np.isclose(f(1), 2.0)"]),
    ("assert not (f(1) is g(1))", None),
    ("assert f(1) == 2 or g(2) == 3", ["f(1)", "g(2)"], [1]),
    # A comparison against True/False: the inner comparison is judged in the parent.
    ("assert (f(1) == 2) is True", ["f(1)"]),
    ("assert False == (f(1) in [1, 2])", ["f(1)"]),
    # abs, + and - are applied by the parent to the values of their operands.
    ("assert abs(f(2) - 4) < 1e-9", ["f(2)"]),
    ("assert -f(2) + g(1) <= 0.5", ["f(2)", "g(1)"]),
    ("assert 0 < f(1) < g(2)", ["f(1)", "g(2)"], [1]),
    ("print(f(1))", None),
    ("for x in [1, 2]:\n    assert f(x) == x", None),
]


@pytest.mark.parametrize("split", SPLITS, ids=[s[0] for s in SPLITS])
def test_split_between_child_and_parent(split: tuple) -> None:
    # A third item: positions of expressions Python might not evaluate (after a
    # short-circuit), whose errors the child sends for the parent to weigh.
    test, child, *lazy = split
    check = parse_check(test, 1)
    if child is None:
        assert check.condition is None
        assert check.child_job() == {"steps": [{"statement": test}]}
    elif lazy:
        assert check.child_job() == {"steps": [{"exprs": child, "lazy": lazy[0]}]}
    else:
        assert check.child_job() == {"steps": [{"exprs": child}]}


# Tests of several statements: the child runs the statements and evaluates each top-level
# assert's expressions where it stands; undecidable asserts stay statements.
STEPS = [
    ("x = f(1)\nassert x == 2", [{"statement": "x = f(1)"}, {"exprs": ["x"]}]),
    ("r = f(1)\nassert r == 2\nr = f(2)\nassert r > 3 and g(r)",
     [{"statement": "r = f(1)"}, {"exprs": ["r"]}, {"statement": "r = f(2)"},
      {"exprs": ["r", "g(r)"], "lazy": [1]}]),
    ("import math\nassert f(1) is g(1)\nassert f(1) == 2 and h() is f",
     [{"statement": "import math\nassert f(1) is g(1)\nassert f(1) == 2 and h() is f"}]),
    ("assert f(1) == 2\nprint('done')", [{"exprs": ["f(1)"]}, {"statement": "print('done')"}]),
]


@pytest.mark.parametrize(("test", "steps"), STEPS, ids=[s[0] for s in STEPS])
def test_several_statements_are_judged_in_the_parent(test: str, steps: list[dict]) -> None:
    assert parse_check(test, 1).child_job() == {"steps": steps}


# HumanEval's shape: a test function called once on the entry point is inlined, in a
# namespace of its own, and its asserts are judged in the parent like top-level ones.
HUMANEVAL_CHECK = ("METADATA = {}\n\n\ndef check(candidate):\n"
                   "    assert candidate([1, 2]) == 3\n"
                   "    assert abs(candidate([0.5]) - 0.5) < 1e-6, 'message'\n\n"
                   "check(total)\n")
INLINED = [
    (HUMANEVAL_CHECK,
     [{"statement": "METADATA = {}\ncandidate = total"}, {"exprs": ["candidate([1, 2])"]},
      {"exprs": ["candidate([0.5])"]}]),
    ("def check(f):\n    import math\n    x = f(2)\n    assert math.isclose(x, 4.0)\n"
     "    for n in [1, 2]:\n        assert f(n) == 2 * n\ncheck(double)",
     [{"statement": "f = double\nimport math\nx = f(2)"}, {"exprs": ["x"]},
      {"statement": "for n in [1, 2]:\n    assert f(n) == 2 * n"}]),
]


@pytest.mark.parametrize(("test", "steps"), INLINED, ids=["humaneval", "statements and loop"])
def test_a_test_function_called_once_is_inlined(test: str, steps: list[dict]) -> None:
    assert parse_check(test, 1).child_job() == {"steps": steps, "own_scope": True}


def test_inlined_asserts_are_judged_on_their_values() -> None:
    check = parse_check(HUMANEVAL_CHECK, 1)
    assert check_failure(check, ["3", "0.5"]) is None
    assert check_failure(check, ["3", "0.25"]) is not None
    assert check_failure(check, ["4", "0.5"]) is not None


# Shapes that cannot run inlined stay one statement, run (and only run) by the child.
NOT_INLINED = [
    "def check(c):\n    assert c(1) == 2\n    return 5\ncheck(f)",
    "def check(c):\n    if c(0) == 0:\n        return\n    assert c(1) == 2\ncheck(f)",
    "def check(c):\n    yield c(1)\ncheck(f)",
    "def check(c):\n    global g\n    g = c(1)\ncheck(f)",
    "def check(c):\n    assert c(1) == 2\ncheck(f)\ncheck(g)",
    "def check(c):\n    assert c(1) == 2\nx = check\ncheck(f)",
    "def check(c, d=1):\n    assert c(1) == d\ncheck(f)",
    "@decorate\ndef check(c):\n    assert c(1) == 2\ncheck(f)",
    "def check(c):\n    assert c(1) == 2\ncheck(*f)",
    "def check(c):\n    assert c(1) == 2\ncheck(f, strict=True)",
    "def check(c, *rest):\n    assert c(1) == len(rest)\ncheck(f)",
    "def check(c, *, d=1):\n    assert c(1) == d\ncheck(f)",
    "def check(c, **options):\n    assert c(1) == len(options)\ncheck(f)",
    "def check(c):\n    assert c(1) == 2\ndef check(c):\n    assert c(1) == 3\ncheck(f)",
]


@pytest.mark.parametrize("test", NOT_INLINED)
def test_other_function_shapes_stay_statements(test: str) -> None:
    check = parse_check(test, 1)
    assert check.child_job() == {"steps": [{"statement": test}]} and check.condition is None


def test_a_returning_helper_inside_the_test_function_is_still_inlined() -> None:
    test = ("def check(candidate):\n    def expected(n):\n        return n + 1\n"
            "    assert candidate(1) == expected(1)\ncheck(inc)")
    assert parse_check(test, 1).child_job()["steps"][-1] == {
        "exprs": ["candidate(1)", "expected(1)"]}


def test_each_assert_of_several_is_judged_on_its_own_values() -> None:
    check = parse_check("r = f(1)\nassert r == 2\nr = f(2)\nassert r in (5, 6)", 1)
    assert check_failure(check, ["2", "5"]) is None
    assert check_failure(check, ["2", "4"]) is not None
    assert check_failure(check, ["3", "5"]) is not None


def test_an_undecidable_assert_leaves_no_expression_to_the_next_one() -> None:
    # Its 'f(1) == 2' part was read before 'h() is f' made it undecidable.
    check = parse_check("assert f(1) == 2 and h() is f\nassert g(1) == 3", 1)
    assert check.child_job() == {"steps": [{"statement": "assert f(1) == 2 and h() is f"},
                                           {"exprs": ["g(1)"]}]}
    assert check_failure(check, ["3"]) is None
    assert check_failure(check, ["4"]) == "  g(1) returned 4"


def test_expected_values_never_go_to_the_child() -> None:
    job = parse_check("assert remove_odd([1, 2, 3]) == [2, 'secret-expected']", 1).child_job()
    assert "secret-expected" not in repr(job)


# (test, child values as literals, passes)
JUDGEMENTS = [
    ("assert remove_odd([1,2,3]) == [2]", ["[2]"], True),
    ("assert remove_odd([1,2,3]) == [2]", ["[1, 3]"], False),
    ("assert f(1) == (1, 2)", ["[1, 2]"], False),  # a list is not a tuple, as in Python
    ("assert f(1) == 1", ["1.0"], True),  # 1.0 == 1, as in Python
    ("assert f(1) == True", ["1"], True),
    ("assert f(1) is True", ["1"], False),
    ("assert f(1) is None", ["None"], True),
    ("assert f() == float('inf')", ["1e999", "1e999"], True),
    ("assert set(f()) == set((4, 5))", ["{4, 5}", "{5, 4}"], True),
    ("assert 1 < f(2) <= 3", ["3"], True),
    ("assert 1 < f(2) <= 3", ["4"], False),
    ("assert not is_prime(4)", ["False"], True),
    ("assert not is_prime(4)", ["[0]"], False),
    ("assert math.isclose(area(2), 12.566, rel_tol=0.001)", ["12.5664"], True),
    ("assert math.isclose(area(2), 12.566, rel_tol=0.001)", ["12.7"], False),
    ("assert f(1) == 2 and g(2) == 3", ["2", "3"], True),
    ("assert f(1) == 2 and g(2) == 3", ["2", "4"], False),
    ("assert f(1) in 'abc'", ["'b'"], True),
    ("assert f(1) == {'a': (1, b'x')}", ["{'a': (1, b'x')}"], True),
    ("assert f(1) != 2", ["3"], True),
    ("assert f(1) != 2", ["2"], False),
    ("assert f(1) not in [1, 2]", ["3"], True),
    ("assert f(1) not in [1, 2]", ["1"], False),
    ("assert f(1) is not None", ["0"], True),
    ("assert f(1) is not None", ["None"], False),
    ("assert f(0) is False", ["False"], True),
    ("assert f(0) is False", ["0"], False),
    # Each order comparison at its boundary: > and >= differ only at equality.
    ("assert f(1) > 2", ["3"], True),
    ("assert f(1) > 2", ["2"], False),
    ("assert f(1) >= 2", ["2"], True),
    ("assert f(1) >= 2", ["1"], False),
    ("assert f(1) < 2", ["2"], False),
    ("assert f(1) <= 2", ["2"], True),
    # Near zero only abs_tol can pass: rel_tol scales with |0|.
    ("assert math.isclose(f(0), 0.0, abs_tol=1e-09)", ["1e-12"], True),
    ("assert math.isclose(f(0), 0.0, abs_tol=1e-09)", ["1e-06"], False),
    # Without tolerances, math.isclose's own: rel_tol 1e-09, abs_tol 0.
    ("assert math.isclose(f(1), 1.0)", ["1.0000000001"], True),
    ("assert math.isclose(f(1), 1.0)", ["1.000001"], False),
    ("assert math.isclose(f(0), 0.0)", ["1e-12"], False),
]


@pytest.mark.parametrize(("test", "values", "passes"), JUDGEMENTS)
def test_check_failure(test: str, values: list[str], passes: bool) -> None:
    failure = check_failure(parse_check(test, 1), values)
    assert (failure is None) is passes, failure


@pytest.mark.parametrize("literal", [
    "Ellipsis", "...", "__import__('os')", "[1, 2", "x", "[1, ...]", "{'a': (1, ...)}",
    "{...: 1}", "{2, ...}", "frozenset([1])", "frozenset({1}, 2)", "Fraction(1, 0)",
    "Fraction(1.5, 2)", "set({1})", "{**x}", "nan()", "inf"])
def test_non_plain_child_values_fail(literal: str) -> None:
    failure = check_failure(parse_check("assert f(1) == 1", 1), [literal])
    assert failure is not None and failure.startswith("f(1) returned")


def test_failure_message_shows_the_returned_value() -> None:
    failure = check_failure(parse_check("assert remove_odd([1,2,3]) == [2]", 1), ["[1, 3]"])
    assert failure == "  remove_odd([1,2,3]) returned [1, 3]"


def test_a_long_value_is_shown_cut_to_300_characters() -> None:
    failure = check_failure(parse_check("assert f(1) == 'b'", 1), [repr("a" * 400)])
    assert failure == "  f(1) returned '" + "a" * 299 + "..."


def test_type_errors_in_comparison_fail_the_test() -> None:
    failure = check_failure(parse_check("assert f(1) < 3", 1), ["'a'"])
    assert failure is not None and failure.startswith("TypeError: '<' not supported")


def test_wrong_number_of_values_fails() -> None:
    failure = check_failure(parse_check("assert f(1) == 3", 1), ["3", "3"])
    assert failure == "the sandbox returned 2 values for 1 expressions"


def test_statement_checks_have_no_value_verdict() -> None:
    with pytest.raises(ValueError, match="decided by the child"):
        check_failure(parse_check("for x in [1]:\n    assert f(x)", 1), [])


def test_invalid_test_source_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="test 4 is not valid Python"):
        parse_check("assert f(1) ==", 4)
    with pytest.raises(TypeError, match="test 2 must be a string"):
        parse_check(b"assert True", 2)  # type: ignore[arg-type]


# Values beyond Python literals the child writes, read back as data: (test, values, passes).
READ_BACK = [
    ("assert f(1) == {1, 2}", ["frozenset({1, 2})"], True),
    ("assert not f(1)", ["frozenset()"], True),
    ("assert f(1) == 0.5", ["Fraction(1, 2)"], True),
    ("assert f(1) == -0.75", ["Fraction(-3, 4)"], True),
    ("assert f(1) != f(1)", ["nan", "nan"], True),
    ("assert f(1) == [1e999, 2]", ["[1e999, nan]"], False),
]


@pytest.mark.parametrize(("test", "values", "passes"), READ_BACK)
def test_frozensets_fractions_and_nan_are_read_back(test: str, values: list[str],
                                                   passes: bool) -> None:
    assert (check_failure(parse_check(test, 1), values) is None) is passes


LAZY_ERROR = {"error": "Traceback ...\nIndexError: string index out of range",
              "kind": "exception"}


def test_a_lazy_part_that_raised_fails_the_test_only_when_needed() -> None:
    either = parse_check("assert f(1) == 2 or g(1) == 3", 1)
    assert check_failure(either, ["2", LAZY_ERROR]) is None
    assert check_failure(either, ["1", LAZY_ERROR]) == LAZY_ERROR["error"]
    neither = parse_check("assert not (f(1) == 2 and g(1) == 3)", 1)
    assert check_failure(neither, ["1", LAZY_ERROR]) is None
    chain = parse_check("assert 5 < f(1) < g(1)", 1)
    # False before g(1) is needed: the values are shown, g(1)'s error among them.
    assert check_failure(chain, ["3", LAZY_ERROR]).startswith("  f(1) returned 3\n  g(1) failed")


@pytest.mark.parametrize(("test", "value", "passes"), [
    ("assert (f(1) == 2) is True", "2", True), ("assert (f(1) == 2) is True", "3", False),
    ("assert (f(1) == 2) == False", "3", True), ("assert True != (f(1) == 2)", "2", False),
    ("assert (f(1) == 2 or f(1) == 3) is not False", "3", True),
    ("assert abs(f(1) - 0.3) < 1e-9", "0.30000000000000004", True),
    ("assert abs(f(1) - 0.3) < 1e-9", "0.31", False),
    ("assert -f(1) + 1 == 0", "1", True),
])
def test_comparisons_with_bools_and_arithmetic_are_judged_in_the_parent(
        test: str, value: str, passes: bool) -> None:
    check = parse_check(test, 1)
    assert check.child_expressions == ("f(1)",) * len(check.child_expressions)
    assert (check_failure(check, [value] * len(check.child_expressions)) is None) is passes
