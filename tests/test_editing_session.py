"""Incremental re-edits: a resumed run equals the from-scratch run with the same settings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from nudged import nudged

from hmar_core import EditOptions, EditSession, Pipeline


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    """The tiny random pipeline, nudged so that the class matters (AdaLN starts at zero)."""
    return nudged(Pipeline.random(seed=0))


@pytest.fixture(scope="module")
def inputs() -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:24, 0:24]
    image = np.stack([x * 10, y * 10, (x * y) % 255], axis=-1).astype(np.uint8)
    mask = np.zeros((24, 24), bool)
    mask[3:15, 2:20] = True
    return image, mask


def _same(a, b) -> bool:
    return (all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens))
            and all(np.array_equal(np.asarray(x), np.asarray(y))
                    for x, y in zip(a.images, b.images)))


@pytest.mark.parametrize("change,resumed", [
    ({"fine_from": 2, "fine_seed": 9}, 1),                 # re-roll the details
    ({"fine_from": 3, "fine_seed": 9, "fine_steps": 6}, 2),  # and refine them more
    ({"fine_from": 1, "fine_steps": 1}, 0),                # fewer steps from scale 1
    ({"strength": 2}, 0),                                  # keep one more coarse scale
    ({"class_id": 5}, -1),                                 # new class: nothing reusable
    ({}, 3),                                               # same edit: everything cached
])
def test_resume_equals_from_scratch(pipe, inputs, change, resumed):
    image, mask = inputs
    base = EditOptions(seed=3, strength=1, steps=3, num_variants=2)
    session = EditSession()
    first = pipe.edit(image, mask, base, session=session)
    assert first.resumed_from == -1
    options = dataclasses.replace(base, **change)
    previews = []
    again = pipe.edit(image, mask, options, session=session, on_preview=previews.append)
    scratch = pipe.edit(image, mask, options)
    assert again.resumed_from == resumed
    assert _same(again, scratch)
    assert [p.restored for p in previews] == [s <= resumed for s in range(4)]
    assert all(t == 0.0 for t in again.scale_seconds[:resumed + 1])
    if change:
        assert not _same(again, first)


def test_session_follows_the_last_run_and_caches_encodings(pipe, inputs):
    image, mask = inputs
    session = EditSession()
    a = pipe.edit(image, mask, EditOptions(seed=1), session=session)
    pipe.edit(image, mask, EditOptions(seed=2), session=session)  # replaces the cached run
    back = pipe.edit(image, mask, EditOptions(seed=1), session=session)
    assert back.resumed_from == -1 and _same(a, back)
    shifted = np.roll(image, 1, axis=1)
    tokens = session.encode(pipe, torch.zeros(1, 3, 16, 16))
    assert all(torch.equal(x, y) for x, y in
               zip(tokens, session.encode(pipe, torch.zeros(1, 3, 16, 16))))
    moved = pipe.edit(shifted, mask, EditOptions(seed=1), session=session)
    assert moved.resumed_from < 3
    session.clear()
    assert pipe.edit(image, mask, EditOptions(seed=1), session=session).resumed_from == -1
