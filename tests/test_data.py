"""Tests for advmem.data: readers, splits, batching, sharding and augmentation."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from advmem.data import Augment, Batch, DataConfig, DeviceDataset, build_data, find_dataset_files
from advmem.data.config import SyntheticConfig
from advmem.data.dataset import flip, random_crop, split_indices
from advmem.data.sources import (
    FASHION_MNIST_FILES,
    locate_fashion_mnist,
    read_cifar,
    read_fashion_mnist,
    read_idx,
    read_svhn,
)
from advmem.errors import UserError

# ----------------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.tobytes()


def write_idx(path, arr, gz: bool):
    data = idx_bytes(arr)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
        return str(path) + ".gz"
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def write_fake_fashion(directory, n_train=6, n_test=4, gz=True):
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": rng.integers(0, 10, n_train),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": rng.integers(0, 10, n_test),
    }
    for k, stem in FASHION_MNIST_FILES.items():
        write_idx(directory / stem, arrays[k], gz)
    return arrays


def synth_cfg(**kw) -> DataConfig:
    syn = kw.pop("synthetic", SyntheticConfig(n_train=200, n_test=50))
    return DataConfig(dataset="synthetic", synthetic=syn, **kw)


# ----------------------------------------------------------------------------- idx / fashion-mnist


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = write_idx(tmp_path / "x-idx3-ubyte", arr, gz)
    out = read_idx(p)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "y-idx1-ubyte", labels, gz)), labels)


def test_idx_truncated_names_file(tmp_path):
    p = tmp_path / "trunc-idx3-ubyte"
    p.write_bytes(idx_bytes(np.zeros((2, 3, 4)))[:-5])
    with pytest.raises(UserError, match="trunc-idx3-ubyte") as e:
        read_idx(p)
    assert "reinstall" in str(e.value) and "\n" not in str(e.value)


def test_idx_truncated_gzip_names_file(tmp_path):
    good = tmp_path / "g-idx3-ubyte"
    write_idx(good, np.arange(4000).reshape(10, 20, 20) % 256, gz=True)
    data = (tmp_path / "g-idx3-ubyte.gz").read_bytes()
    for name, content in (("cut-idx3-ubyte.gz", data[: len(data) // 2]), ("garbage-idx3-ubyte.gz", b"not gzip")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=name):  # the message names the file
            read_idx(tmp_path / name)


def test_idx_bad_magic(tmp_path):
    p = tmp_path / "magic-idx3-ubyte"
    p.write_bytes(b"\x01\x02\x03\x04" + b"\x00" * 16)
    with pytest.raises(UserError, match="magic-idx3-ubyte"):
        read_idx(p)


@pytest.mark.parametrize("layout", ["", "FashionMNIST/raw", "fashion-mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_fashion_reader_layouts(tmp_path, layout, gz):
    arrays = write_fake_fashion(tmp_path / layout if layout else tmp_path, gz=gz)
    train, test, source = read_fashion_mnist(str(tmp_path))
    assert train.images.shape == (6, 28, 28, 1) and train.images.dtype == np.uint8
    assert test.images.shape == (4, 28, 28, 1)
    assert train.labels.dtype == np.int64
    np.testing.assert_array_equal(train.images[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(test.labels, arrays["test_labels"])
    assert source == str(tmp_path / layout if layout else tmp_path)


def test_fashion_missing_lists_paths(tmp_path, monkeypatch):
    import advmem.data.sources as src

    monkeypatch.setattr(src, "DEBIAN_FASHION_MNIST", str(tmp_path / "nodebian"))
    root = tmp_path / "empty"
    with pytest.raises(UserError) as e:
        build_data(DataConfig(data_root=str(root)))
    msg = str(e.value)
    for p in (root, root / "FashionMNIST" / "raw", root / "fashion-mnist", tmp_path / "nodebian"):
        assert str(p) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--set data.data_root=DIR" in msg and "--data-root" not in msg
    assert "train-images-idx3-ubyte" in msg and "\n" not in msg


def test_fashion_label_count_mismatch(tmp_path):
    write_fake_fashion(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5), gz=True)
    with pytest.raises(UserError, match="disagree"):
        read_fashion_mnist(str(tmp_path))


FMNIST_SKIP = "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"


@pytest.mark.skipif(locate_fashion_mnist(None)[0] is None, reason=FMNIST_SKIP)
def test_fashion_mnist_real():
    b = build_data(DataConfig(dataset="fashion-mnist"))
    assert len(b.train) == 60000 and len(b.test) == 10000
    assert b.train.x.shape == (60000, 1, 28, 28) and b.train.x.dtype == torch.uint8
    assert b.num_classes == 10 and b.in_channels == 1 and b.image_size == (28, 28)
    assert set(b.train.y.unique().tolist()) == set(range(10))
    assert 0.2 < b.mean[0] < 0.4 and 0.3 < b.std[0] < 0.4
    assert b.augment.kind == "none" and b.val is None


# ----------------------------------------------------------------------------- cifar


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_cifar10(root, n=4):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": b"x", b"data": data, b"labels": labels}, f, protocol=2)
        batches[name] = (data, labels)
    return d, batches


def test_cifar10_reader(tmp_path):
    _, batches = write_cifar10(tmp_path)
    train, test, _ = read_cifar("cifar10", str(tmp_path))
    assert train.images.shape == (20, 32, 32, 3) and test.images.shape == (4, 32, 32, 3)
    data, labels = batches["data_batch_2"]
    # channel-major rows of 3072 -> HWC
    np.testing.assert_array_equal(train.images[4], data[0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert train.labels[4:8].tolist() == labels
    b = build_data(DataConfig(dataset="cifar10", data_root=str(tmp_path)))
    assert b.augment.kind == "crop_flip" and b.in_channels == 3 and len(b.mean) == 3


def test_cifar100_reader(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for name, n in (("train", 6), ("test", 3)):
        with open(d / name, "wb") as f:
            pickle.dump(
                {"data": np.full((n, 3072), 7, np.uint8), "fine_labels": list(range(n)), "coarse_labels": [0] * n},
                f,
            )
    b = build_data(DataConfig(dataset="cifar100", data_root=str(tmp_path)))
    assert len(b.train) == 6 and len(b.test) == 3 and b.num_classes == 100


def test_cifar_malicious_pickle_refused(tmp_path):
    d, _ = write_cifar10(tmp_path)
    target = tmp_path / "pwned"
    with open(d / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Evil(str(target)), b"labels": [0]}, f)
    with pytest.raises(UserError, match="data_batch_3") as e:
        read_cifar("cifar10", str(tmp_path))
    assert "refused" in str(e.value) and "\n" not in str(e.value)
    assert not target.exists()
    # the payload is live: an unrestricted load would have created the file
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(Evil(str(live)))).close()
    assert live.exists()


def test_cifar_missing(tmp_path):
    with pytest.raises(UserError, match="data_batch_1"):
        read_cifar("cifar10", str(tmp_path))
    with pytest.raises(UserError, match="data_root"):
        read_cifar("cifar10", None)


def test_cifar_truncated(tmp_path):
    d, _ = write_cifar10(tmp_path)
    raw = (d / "test_batch").read_bytes()
    (d / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="test_batch"):
        read_cifar("cifar10", str(tmp_path))


# ----------------------------------------------------------------------------- svhn


def test_svhn_reader(tmp_path):
    import scipy.io

    rng = np.random.default_rng(2)
    for name, n in (("train_32x32.mat", 5), ("test_32x32.mat", 3)):
        X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [2], [3], [4]][:n], dtype=np.uint8)
        scipy.io.savemat(str(tmp_path / name), {"X": X, "y": y})
        if n == 5:
            X_train = X
    train, test, _ = read_svhn(str(tmp_path))
    assert train.images.shape == (5, 32, 32, 3) and test.images.shape == (3, 32, 32, 3)
    assert train.labels.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(train.images[2], X_train[:, :, :, 2])


def test_svhn_corrupt(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"garbage" * 10)
    (tmp_path / "test_32x32.mat").write_bytes(b"garbage" * 10)
    with pytest.raises(UserError, match="train_32x32.mat"):
        read_svhn(str(tmp_path))


# ----------------------------------------------------------------------------- digits / synthetic


def test_digits():
    b = build_data(DataConfig(dataset="digits"))
    assert len(b.train) == 1500 and len(b.test) == 297
    assert b.train.x.shape[1:] == (1, 8, 8) and int(b.train.x.max()) == 255


def test_synthetic_seeded():
    a = build_data(synth_cfg())
    b = build_data(synth_cfg())
    c = build_data(synth_cfg(synthetic=SyntheticConfig(n_train=200, n_test=50, seed=1)))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)
    rgb = build_data(synth_cfg(synthetic=SyntheticConfig(channels=3, image_size=12, num_classes=4)))
    assert rgb.train.x.shape[1:] == (3, 12, 12) and rgb.num_classes == 4 and len(rgb.mean) == 3


def test_synthetic_learnable():
    """Nearest class mean on train classifies test well above chance."""
    b = build_data(synth_cfg())
    xt, yt = b.train.all_float().flatten(1), b.train.y
    means = torch.stack([xt[yt == k].mean(0) for k in range(10)])
    pred = torch.cdist(b.test.all_float().flatten(1), means).argmin(1)
    assert (pred == b.test.y).float().mean() > 0.8


# ----------------------------------------------------------------------------- splits


def test_val_split_fixed_and_disjoint():
    base = split_indices(1000, 100, DataConfig(val_size=100))
    for ts in (None, 50, 400, 900):
        tr, va, _ = split_indices(1000, 100, DataConfig(val_size=100, train_size=ts))
        np.testing.assert_array_equal(va, base[1])
        assert len(np.intersect1d(tr, va)) == 0
        assert len(tr) == (ts or 900)
    assert not np.array_equal(split_indices(1000, 100, DataConfig(val_size=100, split_seed=1))[1], base[1])


def test_val_split_through_build_data():
    b = build_data(synth_cfg(val_size=40, train_size=100))
    assert len(b.val) == 40 and len(b.train) == 100
    assert b.train.index.tolist() == list(range(100)) and b.val.index.tolist() == list(range(40))
    b2 = build_data(synth_cfg(val_size=40, train_size=60))
    assert torch.equal(b.val.x, b2.val.x)
    # train images and val images are different rows of the raw set
    full = build_data(synth_cfg())
    rows = {tuple(r.flatten().tolist()) for r in full.train.x}
    tr = {tuple(r.flatten().tolist()) for r in b.train.x}
    va = {tuple(r.flatten().tolist()) for r in b.val.x}
    assert tr <= rows and va <= rows and not (tr & va)


def test_train_subset_seeded():
    a = split_indices(1000, 100, DataConfig(train_size=100))[0]
    b = split_indices(1000, 100, DataConfig(train_size=100))[0]
    c = split_indices(1000, 100, DataConfig(train_size=100, split_seed=3))[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(np.diff(a) > 0)  # stored order


def test_test_subset_and_limits():
    _, _, te = split_indices(1000, 100, DataConfig(test_size=10))
    assert len(te) == 10 and np.array_equal(te, split_indices(1000, 100, DataConfig(test_size=10))[2])
    with pytest.raises(UserError, match="at most 1000"):
        split_indices(1000, 100, DataConfig(val_size=500, train_size=600))
    with pytest.raises(UserError, match="at most 100"):
        split_indices(1000, 100, DataConfig(test_size=101))
    with pytest.raises(UserError, match="val_size"):
        split_indices(1000, 100, DataConfig(val_size=1000))


def test_config_validation():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        DataConfig(train_size=0)
    with pytest.raises(ValidationError):
        DataConfig(val_size=-1)
    with pytest.raises(ValidationError):
        DataConfig(bogus=1)


def test_find_dataset_files_never_raises(tmp_path):
    out = find_dataset_files(DataConfig(data_root=str(tmp_path / "nope")))
    assert set(out) == {"fashion-mnist", "cifar10", "cifar100", "svhn", "digits", "synthetic"}
    assert out["cifar10"]["found"] is False and out["synthetic"]["found"] is True
    assert isinstance(find_dataset_files(None), dict)


# ----------------------------------------------------------------------------- batching


def small_ds(n=23):
    x = torch.arange(n * 4, dtype=torch.uint8).reshape(n, 1, 2, 2)
    return DeviceDataset(x, torch.arange(n) % 3, torch.arange(n))


def test_batches_cover_each_index_once():
    ds = small_ds()
    seen = []
    for b in ds.batches(5, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert isinstance(b, Batch) and b.x.dtype == torch.float32
        assert float(b.x.max()) <= 1.0 and float(b.x.min()) >= 0.0
        torch.testing.assert_close(b.x, ds.x[b.index].float() / 255)
        seen += b.index.tolist()
    assert sorted(seen) == list(range(23)) and seen != list(range(23))
    sizes = [len(b.y) for b in ds.batches(5, shuffle=False, drop_last=True)]
    assert sizes == [5, 5, 5, 5]


def test_same_generator_seed_same_order():
    ds = small_ds()
    order = lambda s: [i for b in ds.batches(4, shuffle=True, generator=torch.Generator().manual_seed(s)) for i in b.index.tolist()]
    assert order(7) == order(7) and order(7) != order(8)


def test_ddp_shards_disjoint_and_cover():
    ds = small_ds(23)
    perm = torch.randperm(23, generator=torch.Generator().manual_seed(5))[:22]
    shards = []
    for r in range(2):
        g = torch.Generator().manual_seed(5)
        shards.append([i for b in ds.batches(4, shuffle=True, generator=g, rank=r, world_size=2) for i in b.index.tolist()])
    assert len(shards[0]) == len(shards[1]) == 11
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(perm.tolist())
    assert shards[0] == perm[0::2].tolist() and shards[1] == perm[1::2].tolist()


def test_subset_and_to():
    ds = small_ds()
    sub = ds.subset([3, 5, 7])
    assert sub.index.tolist() == [3, 5, 7] and len(sub) == 3
    assert torch.equal(sub.to("cpu").x, ds.x[[3, 5, 7]])
    assert torch.equal(ds.all_float(), ds.x.float() / 255)


# ----------------------------------------------------------------------------- augmentation


def test_augment_shape_and_range():
    x = torch.rand(16, 3, 8, 8)
    for kind in ("none", "crop", "flip", "crop_flip"):
        y = Augment(kind, 2)(x, torch.Generator().manual_seed(0))
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert Augment("none")(x) is x
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(Augment("crop_flip", 2)(x, g1), Augment("crop_flip", 2)(x, g2))


def test_crop_padding_zero_is_identity():
    x = torch.rand(8, 1, 5, 5)
    assert torch.equal(Augment("crop", 0)(x, torch.Generator().manual_seed(0)), x)
    # centre offset with padding is the identity too
    off = torch.full((8,), 3)
    assert torch.equal(random_crop(x, off, off, 3), x)


def test_crop_matches_reference():
    x = torch.rand(6, 2, 5, 7)
    p = 2
    oy = torch.tensor([0, 1, 2, 3, 4, 0])
    ox = torch.tensor([4, 3, 2, 1, 0, 2])
    out = random_crop(x, oy, ox, p)
    xp = torch.nn.functional.pad(x, (p, p, p, p))
    for i in range(6):
        assert torch.equal(out[i], xp[i, :, oy[i] : oy[i] + 5, ox[i] : ox[i] + 7])


def test_flip_twice_restores():
    x = torch.rand(10, 1, 4, 4)
    mask = torch.rand(10, generator=torch.Generator().manual_seed(0)) < 0.5
    once = flip(x, mask)
    assert torch.equal(once[~mask], x[~mask]) and torch.equal(once[mask], x[mask].flip(-1))
    assert torch.equal(flip(once, mask), x)


def test_augment_in_batches_uses_generator():
    ds = small_ds(12)
    aug = Augment("crop_flip", 1)
    run = lambda: [b.x for b in ds.batches(4, shuffle=True, generator=torch.Generator().manual_seed(3), augment=aug)]
    assert all(torch.equal(a, b) for a, b in zip(run(), run()))


def test_augment_bad_kind():
    with pytest.raises(UserError):
        Augment("rotate")
