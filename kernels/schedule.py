"""Tile schedules: which (row tile, column range) pairs a block-sparse kernel visits.

Shape legend: L = total tokens of the pyramid, S = number of scales.

The Triton kernel (:mod:`kernels.triton_backend`) gives every program one *item*: a tile of
consecutive rows and the contiguous column range that those rows may attend to. Rows are
grouped per scale, never across a scale boundary, except that consecutive whole scales that fit
together into one tile share it (the smallest scales of a pyramid are a few tokens each). The
column range of a tile is then exactly the union of its rows' allowed ranges, so the kernel
loads no key tile outside it; the only waste is the rounding of each range up to whole tiles.
One exception: the block-causal *key* schedule cuts the keys into uniform tiles across scale
boundaries. There every key sees all queries from its scale's start to L, so a tile of few keys
(the tail of a scale) would sweep a long query range for little work; a uniform tile instead
costs a few masked query tiles at its start (the queries of its earlier scales).

Two schedules exist per mask, both built from :meth:`ScaleMask.row_bounds`:

* the *query* schedule (forward, dQ): rows are queries, columns are keys;
* the *key* schedule (dK, dV): rows are keys, columns are the queries that may see each key.

Each item is ``(row_start, row_end, col_start, col_end, col_full_start, col_full_end)``.
Columns in ``[col_full_start, col_full_end)`` are allowed for every row of the item, so the
kernel sweeps the whole tiles inside it without a mask and masks only the tiles before and after
it. Query schedules always have ``col_full_start == col_start`` (a full prefix, possibly empty).

Everything here is pure Python on CPU; :func:`packed_schedule` turns the schedules for all tile
sizes into one int32 tensor that the kernels read.
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from .mask import ScaleMask

__all__ = [
    "SCHEDULE_BLOCKS",
    "PackedSchedule",
    "TileSchedule",
    "column_bounds",
    "dense_tile_count",
    "key_schedule",
    "packed_schedule",
    "query_schedule",
    "row_groups",
    "tile_phases",
    "uniform_groups",
]

ScheduleKind = Literal["query", "key"]

#: Row-tile sizes a packed schedule holds; a kernel's row tile must be one of them.
SCHEDULE_BLOCKS = (16, 32, 64, 128)
#: Ints per item in a packed schedule.
ITEM_FIELDS = 6
#: Header of a packed schedule: (offset, count) for slots ``block // 16`` = 0..8.
HEADER_INTS = 2 * (max(SCHEDULE_BLOCKS) // 16 + 1)


@dataclass(frozen=True)
class TileSchedule:
    """Work items of one kernel for one mask and one row-tile size.

    Args:
        block: rows per tile.
        items: ``(row_start, row_end, col_start, col_end, col_full_start, col_full_end)`` per
            program, most columns first (the longest programs start first).
    """

    block: int
    items: tuple[tuple[int, int, int, int, int, int], ...]

    def visited_tiles(self, col_block: int) -> int:
        """Number of (row tile, column tile) pairs the kernel computes with this column tile."""
        return sum(math.ceil((item[3] - item[2]) / col_block) for item in self.items)

    def masked_tiles(self, col_block: int) -> int:
        """How many of :meth:`visited_tiles` need the per-row mask (boundary tiles)."""
        total = 0
        for item in self.items:
            total += sum(1 for tile in tile_phases(item, col_block) if tile)
        return total


def tile_phases(item: tuple[int, ...], col_block: int) -> list[bool]:
    """Per column tile of an item, whether the kernel masks it (the kernel's own arithmetic:
    the unmasked tiles are those wholly inside ``[col_full_start, col_full_end)``)."""
    _, _, start, end, full_start, full_end = item
    n_tiles = math.ceil((end - start) / col_block)
    n_head = math.ceil((full_start - start) / col_block)
    n_full = max((full_end - start) // col_block, n_head)
    return [not (n_head <= tile < n_full) for tile in range(n_tiles)]


def dense_tile_count(length: int, row_block: int, col_block: int) -> int:
    """Tiles a dense kernel computes over an (L, L) score matrix with these tile sizes."""
    return math.ceil(length / row_block) * math.ceil(length / col_block)


def row_groups(scale_sizes: tuple[int, ...], block: int) -> list[tuple[int, int]]:
    """Partition the rows ``[0, L)`` into tiles of at most ``block`` rows.

    A scale larger than ``block`` is cut into tiles that start at the scale's first row; runs of
    consecutive whole scales whose total fits in ``block`` share one tile.

    Returns:
        ``[(row_start, row_end), ...]`` covering ``[0, L)`` in order, without overlap.
    """
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    groups: list[tuple[int, int]] = []
    pending_start, pending_end = 0, 0  # a run of small whole scales not yet emitted
    start = 0
    for size in scale_sizes:
        end = start + size
        if size > block:
            if pending_end > pending_start:
                groups.append((pending_start, pending_end))
            groups.extend((row, min(row + block, end)) for row in range(start, end, block))
            pending_start = pending_end = end
        elif pending_end - pending_start + size <= block:
            pending_end = end
        else:
            groups.append((pending_start, pending_end))
            pending_start, pending_end = start, end
        start = end
    if pending_end > pending_start:
        groups.append((pending_start, pending_end))
    return groups


def uniform_groups(length: int, block: int) -> list[tuple[int, int]]:
    """Rows ``[0, L)`` cut into consecutive tiles of ``block`` rows (the last one shorter)."""
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    return [(row, min(row + block, length)) for row in range(0, length, block)]


def column_bounds(mask: ScaleMask) -> tuple[list[int], list[int]]:
    """Per key column, the range ``[start, end)`` of query rows that may attend to it.

    Both patterns have non-decreasing row bounds, so the queries seeing key ``j`` are the rows
    from the first one whose range ends after ``j`` up to the last one whose range starts at or
    before ``j``.
    """
    row_start, row_end = (bound.tolist() for bound in mask.row_bounds("cpu"))
    col_start = [bisect.bisect_right(row_end, j) for j in range(mask.length)]
    col_end = [bisect.bisect_right(row_start, j) for j in range(mask.length)]
    return col_start, col_end


def _schedule(
    starts: list[int], ends: list[int], groups: list[tuple[int, int]], block: int
) -> TileSchedule:
    items = []
    for row_start, row_end in groups:
        lo = min(starts[row_start:row_end])
        hi = max(ends[row_start:row_end])
        full_start = max(starts[row_start:row_end])  # columns every row sees
        full_end = min(ends[row_start:row_end])
        if full_start >= full_end:
            full_start = full_end = lo
        items.append((row_start, row_end, lo, hi, full_start, full_end))
    items.sort(key=lambda item: item[3] - item[2], reverse=True)  # stable: ties keep row order
    return TileSchedule(block=block, items=tuple(items))


@functools.lru_cache(maxsize=128)
def query_schedule(mask: ScaleMask, block: int) -> TileSchedule:
    """Items of the forward and dQ kernels: query tiles and the key range each one sees."""
    row_start, row_end = (bound.tolist() for bound in mask.row_bounds("cpu"))
    return _schedule(row_start, row_end, row_groups(mask.scale_sizes, block), block)


@functools.lru_cache(maxsize=128)
def key_schedule(mask: ScaleMask, block: int) -> TileSchedule:
    """Items of the dK/dV kernel: key tiles and the query range that sees each one.

    Block-causal key tiles are uniform (see the module docstring); block-diagonal ones follow
    :func:`row_groups`.
    """
    col_start, col_end = column_bounds(mask)
    if mask.pattern == "block_causal":
        groups = uniform_groups(mask.length, block)
    else:
        groups = row_groups(mask.scale_sizes, block)
    return _schedule(col_start, col_end, groups, block)


class PackedSchedule(NamedTuple):
    """All row-tile sizes of one schedule: the int32 table on the device, and per tile size the
    offset (in ints) of its first item in the table and its number of items."""

    table: torch.Tensor
    counts: dict[int, int]
    offsets: dict[int, int]


@functools.lru_cache(maxsize=64)
def packed_schedule(mask: ScaleMask, kind: ScheduleKind, device: torch.device) -> PackedSchedule:
    """All row-tile sizes of one schedule in one int32 tensor on ``device``.

    Layout: ``HEADER_INTS`` ints, where slot ``block // 16`` holds (offset of the block's first
    item in ints, number of items), then the items, ``ITEM_FIELDS`` ints each. The kernels get
    the offset and count of their tile size as scalar arguments (no dependent load).
    """
    build = query_schedule if kind == "query" else key_schedule
    header = [0] * HEADER_INTS
    body: list[int] = []
    counts: dict[int, int] = {}
    offsets: dict[int, int] = {}
    for block in SCHEDULE_BLOCKS:
        schedule = build(mask, block)
        slot = block // 16
        offsets[block] = header[2 * slot] = HEADER_INTS + len(body)
        counts[block] = header[2 * slot + 1] = len(schedule.items)
        for item in schedule.items:
            body.extend(item)
    table = torch.tensor(header + body, dtype=torch.int32).to(device)
    return PackedSchedule(table, counts, offsets)
