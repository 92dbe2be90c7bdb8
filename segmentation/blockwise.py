"""Block decomposition of z, y, x volumes, shared by every bulk step."""

from __future__ import annotations

import itertools
from typing import Iterator, Sequence

Block = tuple[slice, slice, slice]


def iter_blocks(shape: Sequence[int], block: Sequence[int]) -> Iterator[Block]:
    """Aligned blocks covering ``shape``; the last block along an axis may be smaller."""
    ranges = [range(0, int(n), int(b)) for n, b in zip(shape, block)]
    for corner in itertools.product(*ranges):
        yield tuple(slice(c, min(c + int(b), int(n))) for c, b, n in zip(corner, block, shape))


def block_count(shape: Sequence[int], block: Sequence[int]) -> int:
    count = 1
    for n, b in zip(shape, block):
        count *= -(-int(n) // int(b))
    return count
