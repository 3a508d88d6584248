"""Train, validation and test splits of a generated world, decided by a stable hash of a
problem's canonical text: no test problem can ever be drawn for train or validation,
whatever the seeds and sizes, as long as the fractions are the same. The lowest
``test_fraction`` of the hash range is test, the next ``validation_fraction`` validation
(for choosing settings without looking at test), the rest train; changing
``validation_fraction`` never moves a test problem."""

from __future__ import annotations

import hashlib

SPLITS = ("train", "validation", "test")


def check_split(split: str, world: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"{world} has splits {SPLITS}, not {split!r}")
    return split


def hashed_split(key: str, test_fraction: float, validation_fraction: float = 0.0) -> str:
    """The split of the problem whose canonical text is ``key``."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    position = int.from_bytes(digest, "big") / 2 ** 64
    if position < test_fraction:
        return "test"
    return "validation" if position < test_fraction + validation_fraction else "train"
