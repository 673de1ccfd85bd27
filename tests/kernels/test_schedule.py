"""Tile schedules: exact partitions, coverage of every allowed pair, and skipped tiles."""

from __future__ import annotations

import pytest
import torch

from kernels import ScaleMask
from kernels.schedule import (
    ITEM_FIELDS,
    SCHEDULE_BLOCKS,
    column_bounds,
    dense_tile_count,
    key_schedule,
    packed_schedule,
    query_schedule,
    row_groups,
    tile_phases,
    uniform_groups,
)

PYRAMIDS = [(1,), (1, 2, 3), (1, 2, 3, 4, 5), (1, 3, 7), (1, 2, 4, 9), (2, 5, 11, 12)]
PATTERNS = ["block_diagonal", "block_causal"]
PYRAMID_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PYRAMID_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


def test_row_groups_pack_small_scales_and_cut_large_ones():
    assert row_groups((1, 4, 9, 16, 25), 32) == [(0, 30), (30, 55)]
    assert row_groups((1, 100), 32) == [(0, 1), (1, 33), (33, 65), (65, 97), (97, 101)]
    assert row_groups((1, 4, 100, 4), 32) == [
        (0, 5), (5, 37), (37, 69), (69, 101), (101, 105), (105, 109)
    ]


@pytest.mark.parametrize("patch_nums", PYRAMIDS + [PYRAMID_256])
@pytest.mark.parametrize("block", SCHEDULE_BLOCKS)
def test_row_groups_partition_rows_without_splitting_a_scale_across_tiles(patch_nums, block):
    mask = ScaleMask(patch_nums)
    groups = row_groups(mask.scale_sizes, block)
    assert groups[0][0] == 0 and groups[-1][1] == mask.length
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:], strict=False))
    ids = mask.scale_ids().tolist()
    for start, end in groups:
        assert 0 < end - start <= block
        scales = set(ids[start:end])
        if len(scales) > 1:  # several scales share a tile only if each one is whole
            assert all(
                mask.scale_starts[s] >= start and mask.scale_starts[s] + mask.scale_sizes[s] <= end
                for s in scales
            )


@pytest.mark.parametrize("patch_nums", PYRAMIDS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_column_bounds_match_the_dense_mask(patch_nums, pattern):
    mask = ScaleMask(patch_nums, pattern)
    dense = mask.dense()
    col_start, col_end = column_bounds(mask)
    for key in range(mask.length):
        expected = torch.zeros(mask.length, dtype=torch.bool)
        expected[col_start[key] : col_end[key]] = True
        assert torch.equal(dense[:, key], expected), key


def _coverage(schedule, dense, transpose):
    """How often each (query, key) pair is inside an item; and whether full regions are allowed."""
    allowed = dense.T if transpose else dense
    covered = torch.zeros_like(allowed, dtype=torch.int32)
    for row_start, row_end, col_start, col_end, full_start, full_end in schedule.items:
        covered[row_start:row_end, col_start:col_end] += 1
        assert col_start <= full_start <= full_end <= col_end
        assert allowed[row_start:row_end, full_start:full_end].all()
    return covered, allowed


@pytest.mark.parametrize("patch_nums", PYRAMIDS)
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("block", SCHEDULE_BLOCKS)
def test_schedules_cover_each_allowed_pair_once(patch_nums, pattern, block):
    mask = ScaleMask(patch_nums, pattern)
    dense = mask.dense()
    for schedule, transpose in ((query_schedule(mask, block), False),
                                (key_schedule(mask, block), True)):
        covered, allowed = _coverage(schedule, dense, transpose)
        assert covered.max() <= 1  # rows are partitioned, so no pair is visited twice
        assert bool((covered[allowed] == 1).all())  # every allowed pair is visited


@pytest.mark.parametrize("patch_nums", PYRAMIDS + [PYRAMID_256])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_visited_tile_holds_allowed_pairs(patch_nums, pattern):
    """No wasted tiles beyond boundary tiles: each visited tile has work in it."""
    mask = ScaleMask(patch_nums, pattern)
    dense = mask.dense()
    for row_block in (32, 64, 128):
        for col_block in (16, 32, 64):
            for schedule, allowed in ((query_schedule(mask, row_block), dense),
                                      (key_schedule(mask, row_block), dense.T)):
                for row_start, row_end, col_start, col_end, *_ in schedule.items:
                    for tile_start in range(col_start, col_end, col_block):
                        tile = allowed[row_start:row_end, tile_start : tile_start + col_block]
                        assert bool(tile.any())


def test_tile_counts_on_a_toy_pyramid():
    mask = ScaleMask((1, 2, 3, 4), "block_diagonal")  # scale sizes 1, 4, 9, 16; L = 30
    schedule = query_schedule(mask, 16)
    assert [item[:4] for item in schedule.items] == [(14, 30, 14, 30), (0, 14, 0, 14)]
    assert schedule.visited_tiles(16) == 2
    assert dense_tile_count(mask.length, 16, 16) == 4
    assert schedule.masked_tiles(16) == 1  # the packed tile; scale 3 is one whole tile
    causal = query_schedule(ScaleMask((1, 2, 3, 4), "block_causal"), 16)
    assert [item[2:] for item in causal.items] == [(0, 30, 0, 30), (0, 14, 0, 1)]


@pytest.mark.parametrize(
    ("patch_nums", "pattern", "max_fraction"),
    [
        (PYRAMID_256, "block_diagonal", 0.45),
        (PYRAMID_256, "block_causal", 0.72),
        (PYRAMID_512, "block_diagonal", 0.35),
        (PYRAMID_512, "block_causal", 0.75),
    ],
)
def test_tiles_outside_the_pattern_are_skipped(patch_nums, pattern, max_fraction):
    mask = ScaleMask(patch_nums, pattern)
    dense = dense_tile_count(mask.length, 64, 64)
    for schedule in (query_schedule(mask, 64), key_schedule(mask, 64)):
        visited = schedule.visited_tiles(64)
        assert visited <= max_fraction * dense
        assert visited * 64 * 64 >= mask.allowed_pairs()  # cannot beat the useful work


def test_packed_schedule_layout():
    mask = ScaleMask((1, 2, 3, 4, 5), "block_causal")
    table, counts, offsets = packed_schedule(mask, "query", torch.device("cpu"))
    assert table.dtype == torch.int32
    for block in SCHEDULE_BLOCKS:
        offset, count = table[2 * (block // 16)].item(), table[2 * (block // 16) + 1].item()
        assert offset == offsets[block]
        assert count == counts[block] == len(query_schedule(mask, block).items)
        items = table[offset : offset + ITEM_FIELDS * count].view(count, ITEM_FIELDS).tolist()
        assert [tuple(item) for item in items] == list(query_schedule(mask, block).items)


@pytest.mark.parametrize("patch_nums", PYRAMIDS + [PYRAMID_256])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("block", SCHEDULE_BLOCKS)
def test_unmasked_tiles_hold_only_allowed_pairs(patch_nums, pattern, block):
    """The kernel's own phase arithmetic: a tile it runs without a mask has every row in range
    and every pair allowed; query schedules never have a masked head."""
    mask = ScaleMask(patch_nums, pattern)
    dense = mask.dense()
    for col_block in (16, 32, 64, 128):
        for schedule, allowed in ((query_schedule(mask, block), dense),
                                  (key_schedule(mask, block), dense.T)):
            for item in schedule.items:
                row_start, row_end, col_start, col_end, full_start, _ = item
                if schedule is query_schedule(mask, block):
                    assert full_start == col_start
                for tile, masked in enumerate(tile_phases(item, col_block)):
                    if not masked:
                        lo = col_start + tile * col_block
                        assert lo + col_block <= col_end
                        assert allowed[row_start:row_end, lo : lo + col_block].all()


@pytest.mark.parametrize("patch_nums", PYRAMIDS)
def test_block_causal_key_tiles_are_uniform(patch_nums):
    mask = ScaleMask(patch_nums, "block_causal")
    for block in SCHEDULE_BLOCKS:
        rows = sorted(item[:2] for item in key_schedule(mask, block).items)
        assert rows == uniform_groups(mask.length, block)


def test_block_causal_key_schedule_visits_fewer_tiles_than_per_scale_tiles():
    """Uniform key tiles avoid short tail tiles that sweep long query ranges (512px: ~11 %)."""
    mask = ScaleMask(PYRAMID_512, "block_causal")
    schedule = key_schedule(mask, 64)
    assert schedule.visited_tiles(64) == 806 < 904  # 904 with per-scale key tiles
    assert schedule.masked_tiles(64) == 16


def test_straddling_key_tile_has_a_masked_head():
    mask = ScaleMask((1, 2, 3, 4, 5), "block_causal")  # scale starts 0, 1, 5, 14, 30; L = 55
    items = {item[:2]: item[2:] for item in key_schedule(mask, 32).items}
    assert items[(0, 32)] == (0, 55, 30, 55)  # keys 30, 31 are seen from query 30 on
    assert tile_phases((0, 32, 0, 55, 30, 55), 16) == [True, True, False, True]


def test_packed_schedule_is_cached_per_mask_and_device_and_equals_a_fresh_build():
    mask = ScaleMask((1, 2, 3, 4, 5), "block_causal")
    first = packed_schedule(mask, "key", torch.device("cpu"))
    again = packed_schedule(ScaleMask((1, 2, 3, 4, 5), "block_causal"), "key",
                            torch.device("cpu"))
    assert again.table is first.table  # equal masks share one device table
    fresh = packed_schedule.__wrapped__(mask, "key", torch.device("cpu"))
    assert fresh.table is not first.table
    assert torch.equal(fresh.table, first.table)
    assert fresh.counts == first.counts and fresh.offsets == first.offsets
