"""Final answers out of model text and dataset fields: boxes, answer lines, ``#### N``.

Every function here scans with compiled regular expressions in linear time, so a
megabyte of text or a hundred thousand unclosed ``\\boxed{`` cost milliseconds, and
none of them raises on model text.
"""

from __future__ import annotations

import bisect
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
# Answer phrases, by how much they take. "The answer is X" (also "the answer to the
# question is X") and "Final answer: X" take any X, words too: MATH has text answers.
# "**Final answer**: 5": emphasis may close between the words and the colon.
_ANSWER_IS = re.compile(r"\b(?:(?:the|this|my|our|final)\s+){0,2}answer\s+(?:to\s+(?:the|this)\s+"
                        r"(?:[a-z]+\s+){0,2}?(?:question|problem)\s+)?is\b"
                        r"|\bfinal\s+answer(?:\*\*)?\s*:", re.IGNORECASE)
# What joins an answer to a later phrase on its line ("18 and the answer is correct").
_JOINING_TAIL = re.compile(r"\b(?:and|but|so|then|while)\s*[,;]?$", re.IGNORECASE)
# Labels ("Answer: 18" opening a line, "Final answer - 18") take X only when it starts
# like an answer, so "Answer: let's compute" states none.
_ANSWER_LABEL = re.compile(r"^[ \t*_#>]*answer(?:\*\*)?\s*:|\bfinal\s+answer(?:\*\*)?\s*"
                           r"[-\u2013\u2014]", re.IGNORECASE | re.MULTILINE)
_STARTS_LIKE_AN_ANSWER = re.compile(r"[-+\u2212]?(?:[$\\(\[{.\d\u03c0\u221a\u221e]"
                                    r"|[A-Za-z](?:$|[).,;]|\s*=))")
# Of several phrases on a line, the last whose answer holds a digit or maths wins over a
# later remark ("The answer is 18. This answer is reasonable."); a lone letter (a choice,
# a variable) counts as maths.
_MATHS_LIKE = re.compile(r"[\d$\\^_=+*/<>|{}()\[\]\u03c0\u221a\u221e\u00b1]|^[A-Za-z]$")
# What an answer with nothing in it is made of: math delimiters and empty groups.
_EMPTY_GROUP = re.compile(r"\\[A-Za-z]+\s*\{\s*\}|\{\s*\}")
_DELIMITER = re.compile(r"\\[\[\]()]|\$")
_BLANK_CHARS = " \t.,:;*_`"
# An answer longer than this is not blank; it bounds the blank test's work.
_BLANK_MAX_CHARS = 200
# A display opened at the end of an answer line (or alone on the next line) and closed on
# a later line: "So the answer is $$" / "18" / "$$".
_DISPLAY_OPENING = re.compile(r"[ \t:*_`]*(?:\n[ \t]*)?(?P<opener>\$\$|\\\[|\\\(|\$)[ \t]*\n")
_DISPLAY_CLOSER = {"$$": "$$", "\\[": "\\]", "\\(": "\\)", "$": "$"}
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

    Markers: an answer phrase ("The answer is: X", "the answer to the question is X",
    "Final Answer: X"; X runs to the end of its line or sentence, or to the next phrase),
    a label that X must start like an answer after ("Answer: 18", "**Answer:** 18",
    "Final answer - 18"), a ``#### X`` line, and a box (``extract_boxed``). The latest
    line holding a marker with an answer gives it, because a model's latest statement is
    its answer; on that line a box wins (the last one, as in Hendrycks' and Qwen's
    graders), then the last phrase whose X holds a digit or maths, then the last phrase:
    "The answer is 18. This answer is reasonable." gives ``18``, "The answer is 3...
    wait, the answer is 5" gives ``5``. An X with nothing in it (only math delimiters,
    ``\\text{}``, an empty box: "So the answer is \\[") or with a box that never closes
    (cut off by the token cap) is no answer; nor is an empty box. A trailing full stop and
    Markdown emphasis or code marks around X (``**5**``, ``__5__``) are dropped.
    """
    if not isinstance(completion, str):
        return None
    newlines = [match.start() for match in re.finditer("\n", completion)]
    candidates = []  # (line, is a box, holds maths, position, answer)
    for start, answer, strict in _marked_answers(completion):
        if not strict or _STARTS_LIKE_AN_ANSWER.match(answer):
            candidates.append((bisect.bisect(newlines, start), False,
                               bool(_MATHS_LIKE.search(answer)), start, answer))
    box = _last_box(completion, skip_blank=True)
    if box is not None:
        candidates.append((bisect.bisect(newlines, box[0]), True, True, box[0], box[1]))
    return max(candidates)[-1] if candidates else None


def extract_display_answer(completion: str) -> str | None:
    """The answer of the first display that an answer line opens and a later line closes
    ("So the answer is $$" / "18" / "$$" gives ``18``), or None. Such an answer line
    states no answer itself (``extract_final_answer``), so a trace goes on past it; a task
    reads this only when no step states an answer."""
    if not isinstance(completion, str):
        return None
    for marker in _ANSWER_IS.finditer(completion):
        opening = _DISPLAY_OPENING.match(completion, marker.end())
        if opening is None:
            continue
        close = completion.find(_DISPLAY_CLOSER[opening["opener"]], opening.end())
        if close < 0:
            return None  # a later display could only close at the same missing closer
        answer = _unmarked(completion[opening.end():close]).rstrip(".").strip()
        if not _is_blank(answer):
            return answer
    return None


def _marked_answers(text: str):
    """(where the marker starts, the answer after it, whether it is a label) for every
    answer phrase, label and ``####`` line with an answer; see ``extract_final_answer``."""
    markers = sorted([(m.start(), m.end(), False) for m in _ANSWER_IS.finditer(text)]
                     + [(m.start(), m.end(), True) for m in _ANSWER_LABEL.finditer(text)]
                     + [(m.start(), m.end(), False) for m in _HASH_LINE.finditer(text)])
    for index, (start, end, strict) in enumerate(markers):
        if index and start < markers[index - 1][1]:
            continue  # inside the marker before it
        bound = markers[index + 1][0] if index + 1 < len(markers) else len(text)
        line_end = text.find("\n", end, bound)
        answer = _answer_text(text[end:line_end if line_end >= 0 else bound])
        if line_end < 0 and bound < len(text):  # cut where the next phrase starts
            tail = _JOINING_TAIL.search(answer)
            if tail is not None:
                answer = _unmarked(answer[:tail.start()].rstrip(" \t,;"))
        if answer and not _is_blank(answer) and not _has_open_box(answer):
            yield start, answer, strict


def _answer_text(text: str) -> str:
    """What follows a marker, up to the end of its sentence, without marks or a colon."""
    answer = _unmarked(_unmarked(text).removeprefix(":"))
    sentence_end = _SENTENCE_END.search(answer)
    return answer if sentence_end is None else _unmarked(answer[:sentence_end.start()])


def _is_blank(answer: str) -> bool:
    """Whether ``answer`` holds nothing but math delimiters and empty groups."""
    if len(answer) > _BLANK_MAX_CHARS:
        return False
    for _ in range(_BLANK_MAX_CHARS):
        emptied = _EMPTY_GROUP.sub("", answer)
        if emptied == answer:
            break
        answer = emptied
    return not _DELIMITER.sub("", answer).strip(_BLANK_CHARS)


def _has_open_box(text: str) -> bool:
    """Whether a box in ``text`` never closes (cut off by the token cap)."""
    open_groups: list[bool] = []  # whether each open group is a box
    for token in _BRACE_TOKEN.finditer(text):
        lexeme = token.group()
        if lexeme == "}":
            if open_groups:
                open_groups.pop()
        elif lexeme not in ("\\{", "\\}"):
            open_groups.append(lexeme != "{")
    return any(open_groups)


def _last_box(text: str, *, skip_blank: bool = False) -> tuple[int, str] | None:
    """(where it opens, stripped content) of the box ``extract_boxed`` picks, or None;
    with ``skip_blank``, of the last box with something in it (``_is_blank``)."""
    best: tuple[int, str] | None = None
    open_groups: list[tuple[int, int] | None] = []  # (box start, content start), or None
    for token in _BRACE_TOKEN.finditer(text):
        lexeme = token.group()
        if lexeme in ("\\{", "\\}"):
            continue
        if lexeme == "}":
            box = open_groups.pop() if open_groups else None
            if box is not None and (best is None or box[0] > best[0]):
                content = text[box[1]:token.start()].strip()
                if not (skip_blank and _is_blank(content)):
                    best = (box[0], content)
        else:
            open_groups.append(None if lexeme == "{" else (token.start(), token.end()))
    for match in _SPACE_BOX.finditer(text):
        if best is None or match.start() > best[0]:
            best = (match.start(), match["answer"])
    return best


def _unmarked(text: str) -> str:
    """``text`` without spaces and Markdown marks (``_MARKS``) at its ends."""
    return text.strip().strip(_MARKS).strip()
