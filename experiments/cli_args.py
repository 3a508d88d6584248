"""Argument types the experiment scripts share, so that a count of zero, a negative one or
more cores than this process may use is refused by argparse, naming the option, before
anything loads, where it was met later as a median of nothing, a division by zero, a
reduction over an empty array or a figure reporting what was asked rather than what ran."""

from __future__ import annotations

import argparse
import os
from typing import Callable


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


positive_int = at_least(1)


def cpu_threads(text: str) -> int:
    """An argparse type: how many of the cores this process may use to pin it to, 1 to
    all of them (``os.sched_setaffinity`` takes the first that many)."""
    cores = len(os.sched_getaffinity(0))
    value = positive_int(text)
    if value > cores:
        raise argparse.ArgumentTypeError(f"this process may use {cores} cores, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number > 0 (a temperature, a time)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value
