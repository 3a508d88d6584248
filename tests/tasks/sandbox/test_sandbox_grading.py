"""run_program on honest programs: each form of test is judged on its values, errors and
output come back as details, and bad arguments are clear errors; bubblewrap falls back to
limits where it does not work."""

from __future__ import annotations

import os
import textwrap
import warnings
from pathlib import Path

import pytest

from qstar_jax.tasks.sandbox import sandbox_isolation
from qstar_jax.tasks.sandbox.sandbox import run_program
from qstar_jax.tasks.sandbox.sandbox_isolation import BubblewrapProbe, probe_bubblewrap
from tests.tasks.sandbox.programs import REMOVE_ODD, REMOVE_ODD_TESTS, WRONG_REMOVE_ODD, grade


def test_correct_program_passes(isolation: str) -> None:
    result = grade(REMOVE_ODD, isolation=isolation)
    assert (result.passed, result.status, result.detail) == (True, "passed", "all 3 tests passed")


def test_incorrect_program_fails_naming_the_test_and_value(isolation: str) -> None:
    result = grade(WRONG_REMOVE_ODD, isolation=isolation)
    assert (result.passed, result.status) == (False, "failed")
    assert result.detail.startswith("test 1 failed: assert remove_odd([1,2,3]) == [2]\n"
                                    "  remove_odd([1,2,3]) returned [1, 2, 3]")


def test_exception_in_a_test_fails_with_its_traceback() -> None:
    program = ("def remove_odd(l):\n"
               "    return [x for x in l if x % 2 == 0] if l[0] != 10 else 1 / 0\n")
    result = grade(program)
    assert result.status == "failed"
    assert result.detail.startswith("test 3 failed: assert remove_odd([10,20,3]) == [10,20]")
    assert "ZeroDivisionError: division by zero" in result.detail
    assert 'File "<program>", line 2, in remove_odd' in result.detail


def test_a_value_of_up_to_a_mebibyte_of_literal_comes_back() -> None:
    program = "def text(short):\n    return 'a' * ((1 << 20) - short)\n"
    # Quoted, 2 ** 20 - 2 characters make a literal of exactly 2 ** 20.
    assert grade(program, ["assert text(2) != ''"]).status == "passed"
    result = grade(program, ["assert text(1) != ''"])
    assert (result.status, result.detail) == (
        "failed", "test 1 failed: assert text(1) != ''\n"
        "text(1) returned a value whose literal exceeds 1048576 characters")


def test_a_long_error_keeps_its_last_4000_characters() -> None:
    # The end of a traceback says what was raised and why.
    result = grade("def remove_odd(l):\n    raise ValueError('x' * 5000 + ' <- why')\n")
    assert (result.status, result.detail) == (
        "failed", "test 1 failed: assert remove_odd([1,2,3]) == [2]\n" + "x" * 3992 + " <- why\n")


def test_setup_does_not_run_after_the_program_raised() -> None:
    result = grade("raise ValueError('at load')\n" + REMOVE_ODD, setup="import math\n")
    assert (result.status, result.detail) == (
        "error", "the program (or setup) raised before the tests ran:\n"
        "Traceback (most recent call last):\n  File \"<program>\", line 1, in <module>\n"
        "    raise ValueError('at load')\nValueError: at load\n")


def test_syntax_error_is_an_error() -> None:
    result = grade("def remove_odd(l)\n    return l\n")
    assert result.status == "error" and "SyntaxError" in result.detail


def test_setup_code_and_test_imports_run_before_the_tests() -> None:
    program = "def half(n):\n    return n / 2\n"
    tests = ["assert math.floor(half(5)) == 2",
             "assert as_sorted(half(x) for x in (4, 2)) == [1, 2]"]
    setup = "import math\ndef as_sorted(values):\n    return sorted(values)\n"
    assert grade(program, tests, setup=setup).status == "passed"
    without = grade(program, tests)
    assert without.status == "failed" and "NameError: name 'math' is not defined" in without.detail


def test_tests_of_several_statements_are_judged_on_their_values() -> None:
    tests = ["result = remove_odd([1, 2, 3, 4])\nassert result == [2, 4]"]
    assert grade(REMOVE_ODD, tests).status == "passed"
    failed = grade(WRONG_REMOVE_ODD, tests)
    assert failed.status == "failed" and "result returned [1, 2, 3, 4]" in failed.detail


def test_statement_tests_run_in_the_child() -> None:
    tests = ["for n in [1, 2]:\n    assert remove_odd([n]) == [n] * (n % 2 == 0)"]
    assert grade(REMOVE_ODD, tests).status == "passed"
    failed = grade(WRONG_REMOVE_ODD, tests)
    assert failed.status == "failed" and "AssertionError" in failed.detail


def test_mbpp_test_forms_pass_and_fail_correctly() -> None:
    program = textwrap.dedent("""\
        import math
        def volume_cone(r, h):
            return math.pi * r * r * h / 3
        def similar_elements(a, b):
            return tuple(set(a) & set(b))
        def is_not_prime(n):
            return any(n % d == 0 for d in range(2, n))
        def nothing():
            return None
        """)
    tests = ["assert math.isclose(volume_cone(5,12), 314.15926535897927, rel_tol=0.001)",
             "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
             "assert is_not_prime(10)", "assert not is_not_prime(7)", "assert nothing() is None",
             "assert is_not_prime(2) == False"]
    assert grade(program, tests).status == "passed"
    wrong = grade(program.replace("/ 3", "/ 2"), tests)
    assert wrong.status == "failed" and wrong.detail.startswith("test 1 failed")


def test_output_is_captured_in_the_detail() -> None:
    result = grade("print('hello from the program')\n" + REMOVE_ODD)
    assert result.detail == "all 3 tests passed\n--- program output ---\nhello from the program\n"


def test_large_but_finite_output_is_truncated_and_the_program_still_passes() -> None:
    result = grade("import sys\nsys.stdout.write('y' * (20 << 20))\n" + REMOVE_ODD)
    assert result.status == "passed"
    header = f"--- program output (truncated to its first 4096 of {20 << 20} bytes) ---\n"
    assert header in result.detail
    assert result.detail.endswith("y" * 4096)


def test_output_of_exactly_the_cap_is_whole_and_one_byte_more_is_truncated() -> None:
    whole = grade("import sys\nsys.stdout.write('z' * 4096)\n", ["assert True"])
    assert whole.detail == "all 1 tests passed\n--- program output ---\n" + "z" * 4096
    cut = grade("import sys\nsys.stdout.write('z' * 4096 + 'Z')\n", ["assert True"])
    assert cut.detail == ("all 1 tests passed\n--- program output (truncated to its first "
                          "4096 of 4097 bytes) ---\n" + "z" * 4096)


def test_values_without_a_short_literal_come_back_as_themselves() -> None:
    # A one-element tuple, an empty set and infinities each need their own literal form.
    program = ("def one():\n    return (5,)\ndef empty():\n    return set()\n"
               "def low():\n    return float('-inf')\ndef high():\n    return float('inf')\n")
    tests = ["assert one() == (5,)", "assert empty() == set()", "assert low() == -1e999",
             "assert high() == 1e999"]
    assert grade(program, tests).detail == "all 4 tests passed"
    wrong = grade(program.replace("(5,)", "5"), tests)
    assert wrong.detail == "test 1 failed: assert one() == (5,)\n  one() returned 5"


def test_every_plain_type_comes_back_as_itself() -> None:
    # A dict (keys and values in place), bytes, None, a bool, a complex and a set.
    program = "def data():\n    return {'a': (1, b'x\\x00'), 2: [None, True, 1.5, 2-3j, {3}]}\n"
    tests = ["assert data() == {'a': (1, b'x\\x00'), 2: [None, True, 1.5, 2-3j, {3}]}"]
    assert grade(program, tests).detail == "all 1 tests passed"
    wrong = grade(program.replace("b'x", "b'y"), tests)
    assert wrong.detail == (f"test 1 failed: {tests[0]}\n  data() returned "
                            "{'a': (1, b'y\\x00'), 2: [None, True, 1.5, (2-3j), {3}]}")


def test_a_value_nested_past_64_levels_fails_its_test() -> None:
    # nest(65)'s innermost list is 64 levels below the outermost: the deepest allowed.
    program = ("def nest(levels):\n    value = []\n    for _ in range(levels - 1):\n"
               "        value = [value]\n    return value\n")
    tests = [f"assert nest({n}) == {'[' * n + ']' * n}" for n in (65, 66)]
    assert grade(program, tests).detail == (
        f"test 2 failed: {tests[1]}\nnest(66) returned a value nested deeper than 64")


def test_an_int_too_long_to_print_fails_its_test() -> None:
    result = grade("def big():\n    return 10 ** 5000\n", ["assert big() > 0"])
    assert result.status == "failed"
    # The rest of the line is Python's own wording.
    assert result.detail.startswith("test 1 failed: assert big() > 0\nbig() returned an int "
                                    "too long to print: Exceeds the limit (4300 digits)")


# ---------------------------------------------------------------- arguments and fallback

@pytest.mark.parametrize(("arguments", "error", "message"), [
    ({"program": b"x = 1"}, TypeError, "program must be Python source as str"),
    ({"tests": "assert True"}, TypeError, "tests must be a list"),
    ({"setup": None}, TypeError, "setup must be Python source"),
    ({"tests": []}, ValueError, "tests is empty: a program with no tests cannot be graded"),
    ({"timeout_s": 0}, ValueError, "timeout_s must be a positive number"),
    ({"timeout_s": float("inf")}, ValueError, "timeout_s must be a positive number"),
    ({"memory_mb": 8}, ValueError, "memory_mb must be an int >= 64"),
    ({"memory_mb": 512.0}, ValueError, "memory_mb must be an int >= 64"),
    ({"tests": ["assert f(1) =="]}, ValueError, "test 1 is not valid Python"),
    ({"isolation": "docker"}, ValueError, "isolation must be one of"),
])
def test_bad_arguments_are_clear_errors(arguments: dict, error: type, message: str) -> None:
    call = {"program": REMOVE_ODD, "tests": REMOVE_ODD_TESTS, **arguments}
    with pytest.raises(error, match=message):
        run_program(call.pop("program"), call.pop("tests"), **call)


def test_auto_falls_back_to_limits_when_bubblewrap_does_not_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    broken = BubblewrapProbe(works=False, reason="broken for this test")
    monkeypatch.setattr(sandbox_isolation, "probe_bubblewrap", lambda *_: broken)
    repository_tests = str(Path(__file__).resolve().parent)
    # Visible only without bubblewrap's private filesystem.
    result = grade("import os\n", [f"assert os.path.isdir({repository_tests!r})"])
    assert result.status == "passed", result.detail
    with pytest.raises(RuntimeError, match="bubblewrap does not work here: broken for this test"):
        grade("import os\n", ["assert True"], isolation="bubblewrap")


def test_unusable_bubblewrap_is_probed_once_with_one_warning() -> None:
    missing = "/nonexistent/python3"
    with pytest.warns(RuntimeWarning, match="falling back to resource limits alone"):
        probe = probe_bubblewrap(missing, os.geteuid() == 0)
    assert not probe.works and probe.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert probe_bubblewrap(missing, os.geteuid() == 0) is probe


def test_the_program_does_not_run_as_main() -> None:
    # Its `if __name__ == "__main__":` block stays out of grading, as under exec in a
    # plain namespace (this one would wait on stdin, which is /dev/null: EOFError).
    program = REMOVE_ODD + "if __name__ == '__main__':\n    input()\n"
    result = grade(program)
    assert result.status == "passed", result.detail


# Correct answers returned as builtin subclasses and numeric types Python compares with
# the expected value as their content: (program, test).
CONTENT_COMPARED = {
    "Counter": ("import collections\ndef f(xs):\n    return collections.Counter(xs)\n",
                "assert f([10, 10, 20]) == {10: 2, 20: 1}"),
    "defaultdict": ("from collections import defaultdict\ndef f(pairs):\n"
                    "    d = defaultdict(list)\n    for k, v in pairs:\n        d[k].append(v)\n"
                    "    return d\n", "assert f([('a', 1), ('b', 2), ('a', 3)]) == "
                                      "{'a': [1, 3], 'b': [2]}"),
    "OrderedDict": ("from collections import OrderedDict\ndef f(x):\n    return OrderedDict(x)\n",
                    "assert f([(1, 2)]) == {1: 2}"),
    "namedtuple": ("from collections import namedtuple\nP = namedtuple('P', 'x y')\n"
                   "def f():\n    return [P(1, 2)]\n", "assert f() == [(1, 2)]"),
    "Fraction": ("from fractions import Fraction\ndef f():\n    return Fraction(1, 2)\n",
                 "assert f() == 0.5 and f() != 0.25"),
    "frozenset": ("def f():\n    return frozenset({1, 2})\n",
                  "assert f() == {1, 2} and f() != frozenset()"),
    "numpy scalars": ("import numpy as np\ndef f(xs):\n    return np.mean(xs), np.int64(3)\n",
                      "assert f([1, 2, 3]) == (2.0, 3)"),
    "NaN in a list": ("def f():\n    return [float('nan'), 1]\n",
                      "assert f()[1] == 1 and len(f()) == 2 and f() != [0, 1]"),
    "plain subclass": ("class L(list):\n    pass\ndef f():\n    return L([1, 2])\n",
                       "assert f() == [1, 2]"),
}


@pytest.mark.parametrize("case", CONTENT_COMPARED.values(), ids=CONTENT_COMPARED.keys())
def test_builtin_subclasses_and_numeric_types_are_compared_by_content(case) -> None:
    program, test = case
    namespace: dict = {}
    exec(program + test, namespace)  # Python passes it
    result = grade(program, [test])
    assert result.status == "passed", result.detail


def test_a_subclass_that_decides_its_own_comparisons_stays_untrusted() -> None:
    program = ("class L(list):\n    def __eq__(self, other):\n        return True\n"
               "    __hash__ = None\ndef f():\n    return L([1, 2])\n")
    result = grade(program, ["assert f() == [1, 2]"])
    assert result.status == "failed" and "not plain" in result.detail


@pytest.mark.parametrize("test", ["assert not (len(f()) > 5 and f()[5] == 'x')",
                                  "assert f() is None or f().upper() == 'ABC'",
                                  "assert len(f()) == 3 or f()[7] == 'x'",
                                  "assert not (5 < len(f()) < f()[9])"])
def test_parts_python_would_not_evaluate_cannot_fail_the_test(test: str) -> None:
    program = "def f():\n    return 'abc'\n"
    namespace: dict = {}
    exec(program + test, namespace)  # Python passes it
    result = grade(program, [test])
    assert result.status == "passed", result.detail


def test_a_needed_part_that_raises_fails_the_test() -> None:
    result = grade("def f():\n    return 'abc'\n", ["assert len(f()) == 4 or f()[7] == 'x'"])
    assert result.status == "failed" and "IndexError: string index out of range" in result.detail
