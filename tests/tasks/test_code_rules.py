"""python_tokenizes: the MBPP rule utility on complete, unfinished and broken prefixes."""

from __future__ import annotations

import sys

import pytest

from qstar_jax.tasks.code_rules import python_tokenizes

# (prefix, accepted, why)
CASES = [
    ("", True, "empty program"),
    ("def remove_odd(l):\n", True, "block opener waiting for its body"),
    ("def remove_odd(l):", True, "unfinished block opener line"),
    ("def remove_odd(l):\n    return [x for x in l if x % 2 == 0]\n", True, "finished function"),
    ("def f(x):\n    # the body comes next\n", True, "comment after a block opener"),
    ("def f(x):\n    if x:", True, "nested opener at the end (dedents at EOF are fine)"),
    ("def f(x):\n    return (x +", True, "open bracket on the last line"),
    ("x = [1,\n     2,\n", True, "open bracket continued over finished lines"),
    ("x = {'a': (1,\n", True, "nested open brackets"),
    ("x = 1 + \\", True, "backslash continuation on the last line"),
    ("x = 1 + \\\n", True, "backslash continuation then newline"),
    ("s = 'hello wor", True, "unterminated string on the last line"),
    ('s = "hello wor', True, "unterminated double-quoted string on the last line"),
    ('s = f"{x} and', True, "unterminated f-string on the last line"),
    ('doc = """first line\nsecond', True, "triple-quoted string spanning lines"),
    ('x = 1\ndoc = f"""{x}\nsecond', True, "triple-quoted f-string spanning lines"),
    ('s = f"{x} and\nt = 1\n', False, "unterminated f-string on an earlier line"),
    ("import math\nimport re\n", True, "imports"),
    ("class A:\n    def f(self):\n        pass\n    def g(self):", True, "methods"),
    ("if x:\n    y = 1\nelse:\n", True, "else waiting for its body"),
    ("x = {1: 2}\ny = x[1:]\n", True, "colons inside brackets open no block"),
    ("total: int\nf = lambda: total\ng = 1\n", True, "annotation and lambda colons end no line"),
    ("s = 'hello\n", False, "unterminated string on a finished line"),
    ("s = 'hello\nt = 1\n", False, "unterminated string on an earlier line"),
    ("x = 1)\n", False, "closing bracket matching nothing"),
    ("x = [1, 2)", False, "mismatched bracket on the last line"),
    ("x = (1]\ny = 2\n", False, "mismatched bracket on an earlier line"),
    ("x = (1}\n", False, "a brace closing a parenthesis"),
    ("d = {1: [2}]\n", False, "a brace closing a square bracket"),
    ("def f():\n        x = 1\n    y = 2\n", False, "dedent to a level never opened"),
    ("x = 1\n    y = 2\n", False, "indent where no block starts"),
    ("    x = 1", False, "indented first line"),
    ("def f(x):\nreturn x\n", False, "block opener not followed by an indented line"),
    ("if x:\n\ny = 2", False, "blank line, then an unindented body"),
    ("def f(x):\n    if x:\ny = 2\n", False, "a nested opener, then a dedent past its body"),
    ("x = 1 $ 2\n", False, "a character that is no Python token"),
    ("x = 1\x00\n", False, "a NUL byte (3.12+: a tokenizer error of its own)"),
    ("x = 5 ? 3 : 2", False, "not a Python operator, even on the last line"),
    ("if x: y = 1\n    z = 2\n", False, "one-line block, then an indent"),
]


@pytest.mark.parametrize(("prefix", "accepted", "why"), CASES, ids=[c[2] for c in CASES])
def test_python_tokenizes(prefix: str, accepted: bool, why: str) -> None:
    assert python_tokenizes(prefix) is accepted, why


def test_every_prefix_of_a_valid_program_is_accepted() -> None:
    program = (
        "import re\n"
        "def text_match(text: str) -> str:\n"
        "    patterns = 'ab*?'\n"
        "    if re.search(patterns, text):\n"
        "        return ('Found a match!')\n"
        "    else:\n"
        '        return """Not matched!"""\n'
    )
    rejected = [i for i in range(len(program) + 1) if not python_tokenizes(program[:i])]
    assert rejected == []


@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason="the 3.11 tokenizer ignores tab/space mixing")
def test_inconsistent_tabs_are_rejected_on_312() -> None:
    assert python_tokenizes("if x:\n  a = 1\n\tb = 2\n") is False


def test_non_string_input_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="code_prefix must be str"):
        python_tokenizes(b"x = 1")  # type: ignore[arg-type]
