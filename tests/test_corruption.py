"""Training-set corruption: rates, seeds, masks, untouched clean samples, and build_data wiring."""

from __future__ import annotations

import numpy as np
import pytest

from advmem.data import DataConfig, build_data
from advmem.data.config import InputCorruptionConfig, LabelNoiseConfig
from advmem.data.corruption import Corruption, corrupt_inputs, corrupt_labels
from advmem.errors import UserError
from advmem.recipe import recipe_from_dict

C = 10
N = 100_000


def binomial_tol(n: int, p: float, sigmas: float = 5.0) -> float:
    return sigmas * np.sqrt(p * (1 - p) / n) + 1e-12


@pytest.fixture(scope="module")
def true_labels() -> np.ndarray:
    return np.random.default_rng(123).integers(0, C, N)


@pytest.mark.parametrize("rate", [0.2, 0.5, 1.0])
def test_symmetric_rates(true_labels, rate):
    labels, mask = corrupt_labels(true_labels, C, LabelNoiseConfig(kind="symmetric", rate=rate, seed=1))
    assert abs(mask.mean() - rate) <= binomial_tol(N, rate)
    changed = rate * (1 - 1 / C)
    assert abs((labels != true_labels).mean() - changed) <= binomial_tol(N, changed)
    # a redraw landing on the true class still counts as corrupted: about 1/C of the redrawn
    stayed = (labels[mask] == true_labels[mask]).mean()
    assert abs(stayed - 1 / C) <= binomial_tol(int(mask.sum()), 1 / C)
    # redrawn labels are uniform over the classes
    counts = np.bincount(labels[mask], minlength=C) / mask.sum()
    assert np.all(np.abs(counts - 1 / C) <= binomial_tol(int(mask.sum()), 1 / C))
    # clean samples untouched
    np.testing.assert_array_equal(labels[~mask], true_labels[~mask])


def test_label_seeds_reproduce_and_differ(true_labels):
    cfg = LabelNoiseConfig(kind="symmetric", rate=0.3, seed=7)
    a, ma = corrupt_labels(true_labels, C, cfg)
    b, mb = corrupt_labels(true_labels, C, cfg)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    c, mc = corrupt_labels(true_labels, C, LabelNoiseConfig(kind="symmetric", rate=0.3, seed=8))
    assert (mc != ma).any() and (c != a).any()


def test_noise_levels_nest(true_labels):
    lo, mlo = corrupt_labels(true_labels, C, LabelNoiseConfig(kind="symmetric", rate=0.2, seed=2))
    hi, mhi = corrupt_labels(true_labels, C, LabelNoiseConfig(kind="symmetric", rate=0.6, seed=2))
    assert np.all(mhi[mlo])
    np.testing.assert_array_equal(lo[mlo], hi[mlo])


def test_pairflip(true_labels):
    labels, mask = corrupt_labels(true_labels, C, LabelNoiseConfig(kind="pairflip", rate=0.4, seed=0))
    assert abs(mask.mean() - 0.4) <= binomial_tol(N, 0.4)
    np.testing.assert_array_equal(labels[mask], (true_labels[mask] + 1) % C)
    np.testing.assert_array_equal(labels[~mask], true_labels[~mask])


def test_no_noise_is_identity(true_labels):
    labels, mask = corrupt_labels(true_labels, C, LabelNoiseConfig())
    np.testing.assert_array_equal(labels, true_labels)
    assert not mask.any()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(5)
    # structured images (a gradient plus noise) so a permutation is visible
    base = np.linspace(0, 200, 8 * 8).reshape(1, 8, 8, 1)
    return np.clip(base + rng.normal(0, 20, (2000, 8, 8, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["random_pixels", "shuffled_pixels", "gaussian"])
def test_input_corruption_touches_only_masked(images, kind):
    mean = images.reshape(-1, 3).mean(0) / 255
    std = images.reshape(-1, 3).std(0) / 255
    cfg = InputCorruptionConfig(kind=kind, rate=0.3, seed=4)
    out, mask = corrupt_inputs(images, cfg, mean, std)
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert abs(mask.mean() - 0.3) <= binomial_tol(len(images), 0.3)
    np.testing.assert_array_equal(out[~mask], images[~mask])
    changed = (out[mask] != images[mask]).reshape(mask.sum(), -1).any(1)
    assert changed.mean() > 0.99
    out2, mask2 = corrupt_inputs(images, cfg, mean, std)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(mask, mask2)
    n = int(mask.sum())
    if kind in ("random_pixels", "shuffled_pixels"):
        # read the permutation(s) back by corrupting images whose pixel value is their position
        # (same seed and count, hence same mask and permutations), then check whole pixel
        # vectors (all channels) moved to those positions
        probe = np.repeat(np.arange(64, dtype=np.uint8).reshape(1, 8, 8, 1), len(images), 0)
        probe_out, probe_mask = corrupt_inputs(probe, cfg, [0.5], [0.1])
        np.testing.assert_array_equal(probe_mask, mask)
        perms = probe_out[mask].reshape(n, 64).astype(np.int64)
        assert all(sorted(p) == list(range(64)) for p in perms[:20])
        expected = np.take_along_axis(images[mask].reshape(n, 64, 3), perms[:, :, None], axis=1)
        np.testing.assert_array_equal(out[mask].reshape(n, 64, 3), expected)
        distinct = len({p.tobytes() for p in perms})
        assert distinct == (1 if kind == "shuffled_pixels" else n)
    if kind == "gaussian":
        from scipy.stats import norm

        noise = out[mask].reshape(-1, 3).astype(np.float64) / 255
        # roughly the data's moments (clipping to 0..255 trims the tails, so std is a bit smaller) ...
        np.testing.assert_allclose(noise.mean(0), mean, atol=0.02)
        np.testing.assert_allclose(noise.std(0), std, rtol=0.1)
        # ... and exactly the moments of a rounded, clipped N(mean, std) pixel
        k = np.arange(256)
        for ch in range(3):
            mu, sd = mean[ch] * 255, std[ch] * 255
            p = norm.cdf((k + 0.5 - mu) / sd) - norm.cdf((k - 0.5 - mu) / sd)
            p[0], p[-1] = norm.cdf((0.5 - mu) / sd), norm.sf((254.5 - mu) / sd)
            m = (p * k).sum() / 255
            v = (p * (k / 255 - m) ** 2).sum()
            assert abs(noise[:, ch].mean() - m) < 5 * np.sqrt(v / len(noise))
            assert abs(noise[:, ch].std() - np.sqrt(v)) < 0.01 * np.sqrt(v)


def test_build_data_corrupts_train_only():
    base = {"dataset": "synthetic", "val_size": 50, "train_size": 300,
            "synthetic": {"n_train": 400, "n_test": 100, "num_classes": 5}}
    clean = build_data(DataConfig(**base))
    cfg = DataConfig(**base, label_noise={"kind": "symmetric", "rate": 1.0, "seed": 1},
                     input_corruption={"kind": "gaussian", "rate": 0.5, "seed": 2})
    noisy = build_data(cfg)
    c = noisy.corruption
    assert isinstance(c, Corruption) and clean.corruption is None
    np.testing.assert_array_equal(c.true_labels, clean.train.y.numpy())
    np.testing.assert_array_equal(c.labels, noisy.train.y.numpy())
    assert c.label_mask.all()
    x_clean, x_noisy = clean.train.x.numpy(), noisy.train.x.numpy()
    np.testing.assert_array_equal(x_noisy[~c.input_mask], x_clean[~c.input_mask])
    assert (x_noisy[c.input_mask] != x_clean[c.input_mask]).any()
    # val and test are untouched, normalization stays that of the clean training images
    np.testing.assert_array_equal(noisy.val.x.numpy(), clean.val.x.numpy())
    np.testing.assert_array_equal(noisy.val.y.numpy(), clean.val.y.numpy())
    np.testing.assert_array_equal(noisy.test.y.numpy(), clean.test.y.numpy())
    assert noisy.mean == clean.mean and noisy.std == clean.std
    assert noisy.info["corruption"]["label_noise"]["redrawn"] == 300
    # same seed, same corruption
    again = build_data(cfg)
    np.testing.assert_array_equal(again.train.y.numpy(), noisy.train.y.numpy())
    np.testing.assert_array_equal(again.train.x.numpy(), noisy.train.x.numpy())


def test_corruption_roundtrip(tmp_path):
    c = Corruption(labels=np.array([1, 2, 0]), true_labels=np.array([1, 1, 0]), label_mask=np.array([True, True, False]),
                   input_mask=np.array([False, False, True]), label_kind="symmetric", label_rate=0.5)
    c.save(tmp_path / "c.npz")
    back = Corruption.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(back.mask, [True, True, True])
    np.testing.assert_array_equal(back.label_changed, [False, True, False])
    assert back.label_kind == "symmetric" and back.label_rate == 0.5


def test_bad_config_is_one_line_user_error():
    with pytest.raises(UserError, match="rate 0.5 given with kind 'none'"):
        recipe_from_dict({"data": {"label_noise": {"rate": 0.5}}})
    with pytest.raises(UserError, match="data.input_corruption.rate"):
        recipe_from_dict({"data": {"input_corruption": {"kind": "gaussian", "rate": 1.5}}})
