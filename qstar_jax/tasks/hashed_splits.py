"""Train, validation and test splits of a generated world, decided by a stable hash of a
problem's canonical text: no test problem can ever be drawn for train or validation,
whatever the seeds and sizes, as long as the fractions are the same. The lowest
``test_fraction`` of the hash range is test, the next ``validation_fraction`` validation
(for choosing settings without looking at test), the rest train; changing
``validation_fraction`` never moves a test problem."""

from __future__ import annotations

import dataclasses
import hashlib

from qstar_jax.tasks.base import SIZED_SPLITS as SPLITS
from qstar_jax.tasks.base import SplitSizes


def check_split(split: str, world: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"{world} has splits {SPLITS}, not {split!r}")
    return split


@dataclasses.dataclass(frozen=True, kw_only=True)
class HashedSplits(SplitSizes):
    """A generated world's split fractions (of the hash range) and sizes (problems per
    split); a world's config inherits them, so they are keys of that config."""

    test_fraction: float = 0.1
    validation_fraction: float = 0.1

    def __post_init__(self):
        name = type(self).__name__
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"{name}.test_fraction={self.test_fraction}: give a fraction "
                             "strictly between 0 and 1")
        if not 0 <= self.validation_fraction < 1 - self.test_fraction:
            raise ValueError(f"{name}.validation_fraction={self.validation_fraction}: give a "
                             "fraction in [0, 1 - test_fraction) so train keeps a share")
        super().__post_init__()


def hashed_split(key: str, test_fraction: float, validation_fraction: float = 0.0) -> str:
    """The split of the problem whose canonical text is ``key``."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    position = int.from_bytes(digest, "big") / 2 ** 64
    if position < test_fraction:
        return "test"
    return "validation" if position < test_fraction + validation_fraction else "train"
