"""Rule-based process utility for partial Python code (Q*'s MBPP R_P).

Q* scores a code prefix −0.5 when it fails Python's tokenizer. A prefix is cut at a step
boundary, so its final line may be unfinished: an open bracket, a backslash continuation,
an unterminated string, or a ``def ...:`` still waiting for its body can all be completed
by later steps and are accepted. What no continuation can repair is rejected: a closing
bracket that matches nothing, an unterminated single-quoted string on a line that is
already finished, a character that is no Python token, and bad indentation (a dedent to a
level that was never opened, an indent where no block starts, a block opener whose next
line is not indented).

The stdlib tokenizer changed in Python 3.12 (pure Python before, the C tokenizer after);
both report the same verdicts for everything above, except that only 3.12+ rejects
inconsistent tabs and spaces.
"""

from __future__ import annotations

import io
import tokenize

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = frozenset(_OPENERS.values())
_OPERATORS = frozenset(tokenize.EXACT_TOKEN_TYPES)
# Token types that carry no code: they neither end a block opener nor start its body.
_LAYOUT = frozenset({tokenize.NL, tokenize.COMMENT})
# Python <= 3.11 reports an unterminated single-quoted string as an ERRORTOKEN on its
# opening quote, and a trailing backslash as one on the backslash; both are unfinished
# when they are on the last, still open, line.
_CONTINUABLE_ERROR_TOKENS = frozenset({"'", '"', "\\"})


def python_tokenizes(code_prefix: str) -> bool:
    """True when ``code_prefix`` tokenizes as Python up to a possibly unfinished last line.

    ``code_prefix`` is the program text so far (steps joined by newlines). A prefix that
    ends with a newline has no unfinished line: everything in it must be complete.
    """
    if not isinstance(code_prefix, str):
        raise TypeError(f"code_prefix must be str, got {type(code_prefix).__name__}")
    open_line = None if code_prefix.endswith("\n") else code_prefix.count("\n") + 1
    brackets: list[str] = []
    awaiting_block = False  # the last logical line ended with ':'
    previous = None  # the last token that carries code
    tokens = tokenize.generate_tokens(io.StringIO(code_prefix).readline)
    try:
        for token in tokens:
            kind, text, (row, _) = token.type, token.string, token.start
            if kind in _LAYOUT or kind == tokenize.DEDENT:
                continue  # a DEDENT is judged by the token after it
            if kind == tokenize.ERRORTOKEN:
                if text.isspace():
                    continue
                return row == open_line and text in _CONTINUABLE_ERROR_TOKENS
            if kind == tokenize.OP:
                if text not in _OPERATORS:
                    return False
                if text in _OPENERS:
                    brackets.append(_OPENERS[text])
                elif text in _CLOSERS:
                    if not brackets or brackets.pop() != text:
                        return False
            if kind == tokenize.NEWLINE:
                awaiting_block = previous is not None and previous.exact_type == tokenize.COLON
            elif kind == tokenize.INDENT:
                if not awaiting_block:
                    return False  # unexpected indent
                awaiting_block = False
            elif kind == tokenize.ENDMARKER:
                return True
            elif awaiting_block:
                return False  # a block opener followed by an unindented line
            previous = token
    except IndentationError:
        return False
    except tokenize.TokenError as error:
        return _continues_past_end(error, open_line)
    return True


def _continues_past_end(error: tokenize.TokenError, open_line: int | None) -> bool:
    """Whether a tokenizer error is only "the text stopped early".

    Open brackets, backslash continuations and triple-quoted strings can run past the
    end of any line (``EOF in multi-line ...``, 3.12+ ``unterminated triple-quoted
    f-string literal``); a single-quoted string or f-string (3.12+ ``unterminated
    string literal``, ``unterminated f-string literal``) only past the end of the
    unfinished last line.
    """
    message, position = error.args
    if "EOF in multi-line" in message or message.startswith("unterminated triple-quoted"):
        return True
    if message.startswith("unterminated"):
        return position[0] == open_line
    return False
