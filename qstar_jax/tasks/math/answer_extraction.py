"""Final answers out of model text and dataset fields: boxes, answer lines, ``#### N``.

Every function here scans with compiled regular expressions in linear time, so a
megabyte of text or a hundred thousand unclosed ``\\boxed{`` cost milliseconds, and
none of them raises on model text.
"""

from __future__ import annotations

import re

# A box opener, an escaped brace (literal in LaTeX, so it never opens or closes a group),
# or a plain brace.
_BRACE_TOKEN = re.compile(r"\\(?:boxed|fbox)\s*\{|\\[{}]|[{}]")
# ``\boxed 5``: LaTeX takes a single token as the argument; we take the run up to a space,
# ``$`` or a brace, which is what writers of that form mean (``\boxed 12`` is 12).
_SPACE_BOX = re.compile(r"\\(?:boxed|fbox)[ \t]+(?P<answer>[^\s${}]+)")
# Answers are captured to the end of their line and trimmed in Python: a lazy capture
# followed by optional trailing spaces backtracks quadratically on long runs of spaces.
_GSM8K_REFERENCE = re.compile(r"^[ \t]*####(?P<answer>[^\n]*)", re.MULTILINE)
# "**Final answer**: 5": emphasis may close between the words and the colon.
_ANSWER_PHRASE = re.compile(r"\banswer\s+is\b|\bfinal\s+answer(?:\*\*)?\s*:", re.IGNORECASE)
_HASH_LINE = re.compile(r"^[ \t]*####", re.MULTILINE)
# A full stop that ends a sentence ("... is 3.5. So" gives "3.5"), not a decimal point.
_SENTENCE_END = re.compile(r"\.(?=\s|$)")
# Markdown emphasis and code marks, which chat models put around an answer line or the
# answer ("**The answer is 5.**", "`5`"): never part of an answer at its ends.
_MARKS = "*_`"


def extract_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces
    kept), or of a ``\\boxed 5`` form if that comes later; None when there is none.

    "Last" is by where the box opens, so in ``\\boxed{\\boxed{5}}`` the inner ``5`` wins,
    and a box cut off before its closing brace is skipped in favour of an earlier one.
    """
    last = _last_box(text) if isinstance(text, str) else None
    return None if last is None else last[1]


def extract_gsm8k_reference(answer_field: str) -> str:
    """The answer on the last ``#### N`` line of a GSM8K ``answer`` field, stripped.

    Raises:
        ValueError: the field is not a string, or has no ``####`` line with an answer;
            the dataset loader reports it with the record index.
    """
    if not isinstance(answer_field, str):
        raise ValueError(f"a GSM8K answer field must be a string ending in a '#### <number>' "
                         f"line, got {type(answer_field).__name__}")
    answers = [answer.strip() for answer in _GSM8K_REFERENCE.findall(answer_field)]
    if not answers or not answers[-1]:
        raise ValueError("the GSM8K answer field has no '#### <number>' line; check that "
                         "the 'answer' column holds the full worked solution")
    return answers[-1]


def extract_final_answer(completion: str) -> str | None:
    """The final answer a model states in ``completion``, or None when it states none.

    Three markers are recognised: an answer phrase ("The answer is: X", "the answer is
    X", "Final Answer: X"; X runs to the end of its line or sentence), a ``#### X`` line,
    and a box (``extract_boxed``). Precedence is by position: the marker that starts
    last wins, because a model's latest statement is its answer. So with several boxes
    the last one wins, and in "The answer is: $\\boxed{5}$" the box (which starts after
    the phrase) gives ``5``. A marker with nothing after it is ignored; a trailing full
    stop and Markdown emphasis or code marks around the answer (``**5**``, ``__5__``) are
    dropped.
    """
    if not isinstance(completion, str):
        return None
    candidates = []
    for marker in (_ANSWER_PHRASE, _HASH_LINE):
        answer = _answer_after_last(marker, completion)
        if answer is not None:
            candidates.append(answer)
    box = _last_box(completion)
    if box is not None and box[1]:
        candidates.append(box)
    return max(candidates)[1] if candidates else None


def _last_box(text: str) -> tuple[int, str] | None:
    """(where it opens, stripped content) of the box ``extract_boxed`` picks, or None."""
    best: tuple[int, str] | None = None
    open_groups: list[tuple[int, int] | None] = []  # (box start, content start), or None
    for token in _BRACE_TOKEN.finditer(text):
        lexeme = token.group()
        if lexeme in ("\\{", "\\}"):
            continue
        if lexeme == "}":
            box = open_groups.pop() if open_groups else None
            if box is not None and (best is None or box[0] > best[0]):
                best = (box[0], text[box[1]:token.start()].strip())
        else:
            open_groups.append(None if lexeme == "{" else (token.start(), token.end()))
    for match in _SPACE_BOX.finditer(text):
        if best is None or match.start() > best[0]:
            best = (match.start(), match["answer"])
    return best


def _answer_after_last(marker: re.Pattern[str], text: str) -> tuple[int, str] | None:
    """(where the last ``marker`` starts, the answer after it on its line), or None."""
    last = None
    for last in marker.finditer(text):
        pass
    if last is None:
        return None
    line_end = text.find("\n", last.end())
    answer = _unmarked(text[last.end():line_end if line_end >= 0 else len(text)])
    answer = _unmarked(answer.removeprefix(":"))
    sentence_end = _SENTENCE_END.search(answer)
    if sentence_end is not None:
        answer = _unmarked(answer[:sentence_end.start()])
    return (last.start(), answer) if answer else None


def _unmarked(text: str) -> str:
    """``text`` without spaces and Markdown marks (``_MARKS``) at its ends."""
    return text.strip().strip(_MARKS).strip()
