"""Reading a dataset record's fields as the types a task needs.

A local file can hold anything a user's script wrote: a number where a question belongs,
one assert string where a list of them belongs. Read loosely, the first becomes a prompt
``Question: 5`` and the second a list of one-character "tests"; read here, each is a
``ValueError`` naming the column and what it held, which ``load_problems`` turns into an
error naming the record (or a skipped record, with ``skip_malformed``).
"""

from __future__ import annotations

from typing import Any

from qstar_jax.values import is_integer


def held(value: Any) -> str:
    """What a field held, for a message: its type and the start of its repr."""
    return "nothing" if value is None else f"the {type(value).__name__} {value!r:.60}"


def record_text(record: dict[str, Any], column: str) -> str:
    """The record's ``column`` as text that is not blank."""
    value = record.get(column)
    if not isinstance(value, str) or not value.strip():
        what = "blank text" if isinstance(value, str) else held(value)
        raise ValueError(f"its {column!r} holds {what}, where the task needs text")
    return value


def record_texts(record: dict[str, Any], column: str, *, required: bool = True) -> list[str]:
    """The record's ``column`` as a list of non-blank strings; an optional column may be
    missing or empty (an empty list)."""
    value = record.get(column)
    if value is None and not required:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"its {column!r} holds {held(value)}, where the task needs a list "
                         "of strings")
    if required and not value:
        raise ValueError(f"its {column!r} is an empty list")
    bad = [item for item in value if not (isinstance(item, str) and item.strip())]
    if bad:
        raise ValueError(f"its {column!r} holds {held(bad[0])} among its items, where each "
                         "must be text that is not blank")
    return list(value)


def record_id(record: dict[str, Any], column: str, default: str) -> str:
    """The record's own id (text or an integer, kept as text), or ``default`` when the
    record has none (or a blank one)."""
    value = record.get(column)
    if value is None or isinstance(value, str) and not value.strip():
        return default
    if not isinstance(value, str) and not is_integer(value):
        raise ValueError(f"its {column!r} holds {held(value)}, where an id is text or an "
                         "integer")
    return str(value)
