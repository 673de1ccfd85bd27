"""Fast checks of the measurement tools (benchmarks/_quality_metrics, classifier, quality)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks._quality_metrics import (
    balanced_mean,
    class_balance_weights,
    frechet_distance,
    gaussian_stats,
    nearest_neighbour_distances,
    psnr,
    to_pixels32,
)
from benchmarks.classifier import (
    ClassifierConfig,
    EmojiClassifier,
    accuracy_report,
    augment,
    load_classifier,
    predict_logits,
    save_classifier,
    train_classifier,
)
from benchmarks.quality import cycling_labels, matched_subset

# ----------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_diagonal_gaussians_by_hand():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    # |mu1 - mu2|^2 = 1 + 0 + 4; sum (sqrt v1 - sqrt v2)^2 = 1 + 1 + 4
    got = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(11.0, abs=1e-9)


def test_frechet_distance_identical_and_symmetric():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    b = rng.normal(size=(5, 5))
    s1, s2 = a @ a.T, b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_for_non_commuting_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + np.eye(6), b @ b.T + np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_one_dimensional_closed_form():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    got = frechet_distance(np.array([3.0]), np.array([[4.0]]), np.array([1.0]), np.array([[1.0]]))
    assert got == pytest.approx(4.0 + 1.0)


def test_gaussian_stats_unweighted_matches_numpy_and_weights_balance_classes():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 4))
    mu, sigma = gaussian_stats(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-10)
    # duplicating every sample of class 0 must not change class-balanced statistics
    labels = np.array([0] * 10 + [1] * 40)
    mu_w, _ = gaussian_stats(x, class_balance_weights(labels))
    x2 = np.concatenate([x[:10], x[:10], x[10:]])
    labels2 = np.concatenate([labels[:10], labels[:10], labels[10:]])
    mu_w2, _ = gaussian_stats(x2, class_balance_weights(labels2))
    np.testing.assert_allclose(mu_w, mu_w2)
    np.testing.assert_allclose(mu_w, (x[:10].mean(0) + x[10:].mean(0)) / 2)


def test_fd_of_samples_from_known_gaussians_is_close_to_the_closed_form():
    rng = np.random.default_rng(3)
    a = rng.normal(0.0, 1.0, size=(20000, 2))
    b = rng.normal(0.0, 2.0, size=(20000, 2)) + np.array([1.0, 0.0])
    got = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    assert got == pytest.approx(1.0 + 2 * (2.0 - 1.0) ** 2, abs=0.1)


def test_class_balance_weights_and_balanced_mean():
    labels = np.array([3, 3, 3, 7])
    w = class_balance_weights(labels)
    np.testing.assert_allclose(w, [1 / 6, 1 / 6, 1 / 6, 1 / 2])
    assert balanced_mean(np.array([1.0, 2.0, 3.0, 10.0]), labels) == pytest.approx(6.0)


# ----------------------------------------------------------------------------------- PSNR / NN


def test_psnr_values():
    ref = torch.zeros(2, 3, 4, 4)
    noisy = ref + 0.1  # MSE 0.01 -> 20 dB
    got = psnr(noisy, ref)
    assert got.shape == (2,)
    torch.testing.assert_close(got, torch.full((2,), 20.0, dtype=torch.float64))
    assert math.isinf(float(psnr(ref, ref)[0]))
    assert float(psnr(ref + 0.5, ref, data_range=0.5)[0]) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        psnr(ref, ref[:1])


def test_nearest_neighbour_distances_on_hand_made_points():
    reference = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0]])
    queries = torch.tensor([[1.0, 0.0], [9.0, 1.0], [0.0, 4.0], [3.0, 4.0]])
    dist, index = nearest_neighbour_distances(queries, reference, chunk=2)
    torch.testing.assert_close(dist, torch.tensor([1.0, math.sqrt(2), 1.0, math.sqrt(10)],
                                                  dtype=torch.float64))
    assert index.tolist() == [0, 1, 2, 2]
    rms, _ = nearest_neighbour_distances(queries, reference, rms=True)
    torch.testing.assert_close(rms, dist / math.sqrt(2))
    exact, _ = nearest_neighbour_distances(reference, reference)
    assert exact.abs().max() == 0


def test_to_pixels32_shape_and_mean():
    x = torch.rand(2, 3, 64, 64)
    v = to_pixels32(x)
    assert v.shape == (2, 3 * 32 * 32)
    torch.testing.assert_close(v.mean(1), x.flatten(1).mean(1))


# ---------------------------------------------------------------------------------- classifier


def _tiny_cfg() -> ClassifierConfig:
    return ClassifierConfig(num_classes=51, channels=(8, 8, 16, 16), empty_classes=[16],
                            class_names=[f"c{i}" for i in range(51)])


def test_classifier_forward_shapes_and_empty_class_never_predicted():
    torch.manual_seed(0)
    model = EmojiClassifier(_tiny_cfg()).eval()
    x = torch.rand(5, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (5, 51)
        assert model.features(x).shape == (5, 16)
        assert model(torch.rand(2, 3, 48, 48)).shape == (2, 51)  # resized internally
    logits, feats = predict_logits(model, (np.random.rand(7, 64, 64, 3) * 255).astype(np.uint8),
                                   batch_size=3)
    assert logits.shape == (7, 51) and feats.shape == (7, 16)
    assert not (logits.argmax(-1) == 16).any()


def test_classifier_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = EmojiClassifier(_tiny_cfg()).eval()
    save_classifier(model, tmp_path / "clf")
    loaded, feature_fn = load_classifier(tmp_path / "clf")
    assert loaded.cfg.channels == (8, 8, 16, 16) and loaded.cfg.empty_classes == [16]
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=2e-2, rtol=2e-2)  # fp16 storage
        torch.testing.assert_close(feature_fn(x), model.features(x), atol=2e-2, rtol=2e-2)


def test_train_classifier_tiny_run_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    images = (rng.random((64, 64, 64, 3)) * 255).astype(np.uint8)
    labels = rng.choice([0, 17, 34, 20], size=64)
    kwargs = dict(epochs=1, batch_size=32, channels=(8, 8, 8, 8), seed=3, log_every=0)
    a = train_classifier(images, labels, 51, **kwargs)
    b = train_classifier(images, labels, 51, **kwargs)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, msg=name)
    assert 16 in a.cfg.empty_classes and 0 not in a.cfg.empty_classes
    save_classifier(a, tmp_path / "a")
    loaded, _ = load_classifier(tmp_path / "a")
    assert loaded.cfg.training["epochs"] == 1


def test_augment_keeps_shape_and_range():
    x = torch.rand(4, 3, 64, 64)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    same = augment(x, torch.Generator().manual_seed(0), shift=0, jitter=0.0)
    torch.testing.assert_close(same, x)


def test_accuracy_report_factorises_class_category_style():
    labels = torch.tensor([0, 17, 35, 3])  # (style, category): (0,0) (1,0) (2,1) (0,3)
    logits = torch.full((4, 51), -10.0)
    logits[0, 0] = 10  # right
    logits[1, 34] = 10  # right category (0), wrong style
    logits[2, 1] = 10  # right category (1), wrong style
    logits[3, 20] = 10  # right category (3), wrong style
    report = accuracy_report(logits, labels)
    assert report["class_top1"] == pytest.approx(0.25)
    assert report["category_top1"] == pytest.approx(1.0)
    assert report["style_top1"] == pytest.approx(0.25)
    assert report["n"] == 4


# ------------------------------------------------------------------------------ quality helpers


def test_cycling_labels_and_matched_subset():
    labels = cycling_labels(7, [2, 5, 9])
    assert labels.tolist() == [2, 5, 9, 2, 5, 9, 2]
    pool = np.array([2, 2, 2, 5, 9, 9])
    idx = matched_subset(labels, pool, seed=0)
    assert pool[idx].tolist() == labels.tolist()
    assert len(set(idx[labels == 2].tolist())) == 3  # without replacement when possible
    with pytest.raises(ValueError):
        matched_subset(np.array([4]), pool, seed=0)


def test_stratified_subset_keeps_every_class():
    from benchmarks.quality import stratified_subset

    labels = np.array([0] * 1000 + [1] * 3 + [2] * 20)
    idx = stratified_subset(labels, 100, seed=0)
    counts = np.bincount(labels[idx])
    assert counts.tolist() == [98, 3, 8]
    assert len(set(idx.tolist())) == len(idx) and (np.diff(idx) > 0).all()


def test_paired_fd_bootstrap_identical_sets_and_shifted_set():
    from benchmarks.quality import paired_fd_bootstrap

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    ref = rng.normal(size=(200, 3))
    ref_labels = np.repeat(np.arange(4), 50)
    feats = rng.normal(size=(120, 3))
    same = paired_fd_bootstrap(feats, feats, labels, ref, ref_labels, reps=5, seed=0)
    assert same["diff_mean"] == 0 and same["fraction_on_better"] == 0
    worse = paired_fd_bootstrap(feats, feats + 3.0, labels, ref, ref_labels, reps=5, seed=0)
    assert worse["fraction_on_better"] == 1.0 and worse["diff_mean"] < -5
    assert worse["fd_on_std"] > 0  # resamples differ even with one sample per class
    single = paired_fd_bootstrap(feats[:4], feats[4:8], np.arange(4), ref, ref_labels, 5, 0)
    assert single["diff_std"] > 0


def test_memorisation_flags_copies_and_fd_verdict():
    from benchmarks.quality import fd_verdict, memorisation

    rng = np.random.default_rng(0)
    train = torch.tensor(rng.random((40, 6)))
    val = torch.tensor(rng.random((10, 6)))
    labels = np.arange(10) % 2
    copies = memorisation(train[:10], labels, val, labels, train, rms=True, tiny=1e-9)
    assert copies["ratio_balanced_mean"] == 0 and copies["generated"]["identical"] == 10
    assert copies["generated"]["near_copies"] == 1.0
    fresh = memorisation(val, labels, val, labels, train, rms=True, tiny=1e-9)
    assert fresh["ratio_balanced_mean"] == pytest.approx(1.0)
    assert fd_verdict(0.97) == "ON better" and fd_verdict(0.02) == "OFF better"
    assert fd_verdict(0.5) == "no significant difference"
