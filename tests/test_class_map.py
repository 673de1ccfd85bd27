"""The benchmarks' map between the data's classes and a model's finer ones
(:mod:`benchmarks.class_map`, issue 16)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.class_map import ClassMap

DATA = ["s/face", "s/object", "t/face"]
FINE = ["s/face/smile", "s/face/other", "s/object/pen", "t/face/cry"]


def test_same_classes_map_to_themselves():
    same = ClassMap(DATA, DATA)
    labels = np.array([2, 0, 1, 1])
    assert not same.fine and same.data_classes == 3
    np.testing.assert_array_equal(same.to_model(labels, seed=0), labels)
    np.testing.assert_array_equal(same.to_data(labels), labels)


def test_finer_classes_draw_children_by_their_image_counts():
    fine = ClassMap(FINE, DATA, model_counts=[30, 10, 5, 7])
    labels = np.repeat([0, 1, 2], 4000)

    drawn = fine.to_model(labels, seed=3)

    np.testing.assert_array_equal(fine.to_data(drawn), labels)  # always a child of the slot's class
    face = drawn[labels == 0]
    assert set(face.tolist()) == {0, 1}
    assert abs(np.mean(face == 0) - 0.75) < 0.03  # 30 of the 40 images
    np.testing.assert_array_equal(fine.to_model(labels, seed=3), drawn)  # reproducible
    assert not np.array_equal(fine.to_model(labels, seed=4), drawn)


def test_other_names_of_as_many_classes_match_by_id():
    titles = ClassMap(["Face", "Object", "Face (t)"], DATA)
    assert not titles.fine
    np.testing.assert_array_equal(titles.to_model(np.array([2, 1]), seed=0), [2, 1])


def test_refusals():
    with pytest.raises(ValueError, match="neither the data's 3 nor finer ones"):
        ClassMap(["x", "y"], DATA)
    with pytest.raises(ValueError, match="neither the data's 3 nor finer ones"):
        ClassMap(["u/face/smile"], DATA, [1])  # a parent the data lacks
    with pytest.raises(ValueError, match="training-image count"):
        ClassMap(FINE, DATA)
    without_images = ClassMap(FINE, DATA, [1, 1, 0, 1])
    with pytest.raises(ValueError, match="no model class"):
        without_images.to_model(np.array([1]), seed=0)


def test_counts_come_from_the_training_split_of_the_label_data(tmp_path):
    np.savez(tmp_path / "fine.npz", class_names=np.array(FINE),
             labels=np.array([0, 0, 2, 3, 1, 1]), splits=np.array([0, 0, 0, 0, 1, 1]),
             split_names=np.array(["train", "val"]))
    fine = ClassMap.for_model(FINE, DATA, tmp_path / "fine.npz")
    np.testing.assert_array_equal(fine.weights, [2, 0, 1, 1])
    with pytest.raises(ValueError, match="other classes than the model"):
        ClassMap.for_model(FINE[:3], DATA, tmp_path / "fine.npz")


def test_class_edits_of_a_finer_model_target_the_classifier_s_classes(tiny_pipe):
    """With finer model classes the edit targets are data classes (the classifier's), asked
    of the model as one of their children, and success is scored in the data classes."""
    import torch

    from benchmarks.editing_quality import class_edits

    names = [f"{DATA[i % 3]}/sub{i}" for i in range(tiny_pipe.num_classes)]
    class_map = ClassMap(names, DATA, [1] * len(names))
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(6)]
    labels = [0, 1, 2, 0, 1, 2]

    def always_data_class_zero(batch: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(batch.shape[0], len(DATA))
        logits[:, 0] = 1.0
        return logits

    row = class_edits(tiny_pipe, always_data_class_zero, images, labels, 1, seed=0, steps=0,
                      device=torch.device("cpu"), class_map=class_map)
    targets_rng = np.random.default_rng(1)
    targets = [int(targets_rng.choice([c for c in range(3) if c != y])) for y in labels]
    assert row["success"] == sum(t == 0 for t in targets) / len(labels)
