"""Readers for the on-disk dataset formats, returning plain numpy arrays.

Each dataset is one `DatasetReader` subclass registered with `@DATASETS.register(name)`: its
class count, how it reads its files, whether they are present, how torchvision fetches them, and
what `advmem info` reports. Every reader returns `(train, test, source)` where `train`/`test` are `RawSplit`s with
`images` uint8 (N, H, W, C) and `labels` int64 (N,), and `source` is a string saying where the
data came from (recorded in the run directory). Formats are parsed here rather than through
torchvision so the toolkit works without it; torchvision is only used, when importable, to
*download* files (`data.download: true`).

Every failure a user can cause (missing, truncated or corrupt files, a pickle that tries to
call something) is a one-line `UserError` naming the file and the fix.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np

from advmem.data.config import DATASETS, DataConfig, SyntheticConfig
from advmem.data.reader import DatasetReader, RawSplit
from advmem.errors import UserError
from advmem.limits import check_fits

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"
CIFAR100_DIR = "cifar-100-python"
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
DIGITS_TRAIN = 1500  # first 1500 of scikit-learn's 1797 digits train, the remaining 297 test


def _found_at(paths: list[Path] | None) -> dict:
    if paths is None:
        return {"found": False, "path": None, "searched": [], "note": "set data_root"}
    ok = all(p.is_file() for p in paths)
    return {"found": ok, "path": str(paths[0].parent) if ok else None, "searched": [str(paths[0].parent)]}


# --------------------------------------------------------------------------- fashion-mnist

_IDX_DTYPES = {0x08: np.uint8}


def _fashion_reinstall_hint() -> str:
    return (
        "reinstall it (apt-get install --reinstall dataset-fashion-mnist) "
        "or delete it and re-download (data.download: true)"
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an idx file (optionally gzipped) into a numpy array.

    The header is checked (magic number, ubyte type, dimension count, sizes) and the payload
    length must match exactly, so a truncated download is caught here rather than showing up
    as garbage images.
    """
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise UserError(
            f"cannot read {path}: {type(e).__name__}: {e}; the file is truncated or corrupt, "
            f"{_fashion_reinstall_hint()}"
        ) from None
    if len(data) < 4:
        raise UserError(
            f"{path} is too short to be an idx file ({len(data)} bytes); {_fashion_reinstall_hint()}"
        )
    zero, dtype_code, ndim = int.from_bytes(data[0:2], "big"), data[2], data[3]
    if zero != 0 or dtype_code not in _IDX_DTYPES or ndim == 0:
        raise UserError(
            f"{path} is not an unsigned-byte idx file (magic {data[:4].hex()}); "
            f"{_fashion_reinstall_hint()}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path} has a truncated idx header; {_fashion_reinstall_hint()}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)  # Python ints: a corrupt header cannot overflow
    if len(data) - header != expected:
        raise UserError(
            f"{path} has {len(data) - header} data bytes but its header {dims} needs {expected}; "
            f"the file is truncated or corrupt, {_fashion_reinstall_hint()}"
        )
    return np.frombuffer(data, dtype=_IDX_DTYPES[dtype_code], offset=header).reshape(dims)


def fashion_mnist_dirs(data_root: str | None) -> list[Path]:
    """Directories searched for Fashion-MNIST, in order."""
    dirs: list[Path] = []
    if data_root:
        root = Path(data_root).expanduser()
        dirs += [root, root / "FashionMNIST" / "raw", root / "fashion-mnist"]
    dirs.append(Path(DEBIAN_FASHION_MNIST))
    return dirs


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        p = directory / name
        if p.is_file():
            return p
    return None


def locate_fashion_mnist(data_root: str | None) -> tuple[dict[str, Path] | None, list[Path]]:
    """The first searched directory holding all four idx files (gz or raw), and the search list."""
    dirs = fashion_mnist_dirs(data_root)
    for d in dirs:
        files = {k: _idx_file(d, stem) for k, stem in FASHION_MNIST_FILES.items()}
        if all(files.values()):
            return files, dirs  # type: ignore[return-value]
    return None, dirs


def _missing_fashion_mnist(dirs: list[Path]) -> UserError:
    names = ", ".join(f"{s}[.gz]" for s in FASHION_MNIST_FILES.values())
    return UserError(
        f"Fashion-MNIST not found: looked for {names} in {', '.join(map(str, dirs))}; "
        "install it with `apt-get install dataset-fashion-mnist`, point data.data_root at a "
        "folder holding the files (--set data.data_root=DIR), or set data.download: true on a machine with internet "
        "and torchvision"
    )


def read_fashion_mnist(data_root: str | None) -> tuple[RawSplit, RawSplit, str]:
    files, dirs = locate_fashion_mnist(data_root)
    if files is None:
        raise _missing_fashion_mnist(dirs)
    arrays = {k: read_idx(p) for k, p in files.items()}
    splits = []
    for split in ("train", "test"):
        imgs, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if imgs.ndim != 3 or labels.ndim != 1 or len(imgs) != len(labels):
            raise UserError(
                f"Fashion-MNIST {split} files disagree: images {imgs.shape} in "
                f"{files[f'{split}_images']}, labels {labels.shape} in {files[f'{split}_labels']}; "
                f"{_fashion_reinstall_hint()}"
            )
        splits.append(RawSplit(imgs[..., None].copy(), labels.astype(np.int64)))
    return splits[0], splits[1], str(files["train_images"].parent)


@DATASETS.register("fashion-mnist")
class FashionMNIST(DatasetReader):
    num_classes = 10

    def read(self, cfg):
        return read_fashion_mnist(cfg.data_root)

    def files_present(self, cfg):
        return locate_fashion_mnist(cfg.data_root)[0] is not None

    def download(self, tvd, root):
        for train in (True, False):
            tvd.FashionMNIST(root, train=train, download=True)

    def find(self, data_root):
        files, dirs = locate_fashion_mnist(data_root)
        return {"found": files is not None, "path": str(files["train_images"].parent) if files else None,
                "searched": [str(d) for d in dirs]}


# --------------------------------------------------------------------------- cifar

_ALLOWED_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1"),
    # which only builds a bytes object (torch's weights_only unpickler allows it too).
    ("_codecs", "encode"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and plain containers and nothing else.

    CIFAR ships as pickles; an ordinary `pickle.load` would run whatever callable a tampered
    file names. Only numpy's array reconstruction globals resolve here.
    """

    def __init__(self, file, *, source: str, **kwargs):
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise UserError(
            f"{self._source} is not a plain CIFAR pickle: it references {module}.{name}, "
            "which is refused because loading it could run code; delete the file and "
            "re-download CIFAR from https://www.cs.toronto.edu/~kriz/cifar.html"
        )


def load_restricted_pickle(path: Path) -> dict:
    """Load a CIFAR batch with `RestrictedUnpickler`; keys are normalized to str."""
    try:
        with open(path, "rb") as f:
            # latin1: the official files were written by Python 2; latin1 keeps numeric
            # payloads byte-exact (numpy's recommendation).
            obj = RestrictedUnpickler(f, source=str(path), encoding="latin1").load()
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError) as e:
        raise UserError(
            f"cannot read {path}: {type(e).__name__}: {e}; the file is truncated or corrupt, "
            "delete it and re-download CIFAR (data.download: true or from "
            "https://www.cs.toronto.edu/~kriz/cifar.html)"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a CIFAR batch dict; delete it and re-download CIFAR")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_batch(path: Path, label_key: str) -> RawSplit:
    d = load_restricted_pickle(path)
    if "data" not in d or label_key not in d:
        raise UserError(
            f"{path} lacks the 'data' or '{label_key}' entry of a CIFAR batch; "
            "delete it and re-download CIFAR"
        )
    data = np.asarray(d["data"])
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise UserError(
            f"{path} has data {data.dtype} {data.shape} and {len(labels)} labels, expected uint8 "
            "N x 3072 with N labels; delete it and re-download CIFAR"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return RawSplit(images, labels)


def cifar_paths(name: str, data_root: str | None) -> list[Path] | None:
    if not data_root:
        return None
    root = Path(data_root).expanduser()
    if name == "cifar10":
        return [root / CIFAR10_DIR / f for f in (*CIFAR10_TRAIN, CIFAR10_TEST)]
    return [root / CIFAR100_DIR / "train", root / CIFAR100_DIR / "test"]


def _missing_files(what: str, paths: list[Path] | None, data_root: str | None, url: str) -> UserError:
    if paths is None:
        return UserError(
            f"{what} needs data.data_root (--set data.data_root=DIR) pointing at the folder that holds "
            f"torchvision's layout; set it, and add data.download: true on a machine with internet "
            f"and torchvision, or fetch the files from {url}"
        )
    missing = [str(p) for p in paths if not p.is_file()]
    return UserError(
        f"{what} not found: missing {', '.join(missing)} (searched data_root {data_root}); "
        f"point data.data_root at the folder in torchvision's layout (--set data.data_root=DIR), set data.download: true "
        f"on a machine with internet and torchvision, or fetch the files from {url}"
    )


def read_cifar(name: str, data_root: str | None) -> tuple[RawSplit, RawSplit, str]:
    paths = cifar_paths(name, data_root)
    if paths is None or not all(p.is_file() for p in paths):
        raise _missing_files(name, paths, data_root, "https://www.cs.toronto.edu/~kriz/cifar.html")
    label_key = "labels" if name == "cifar10" else "fine_labels"
    parts = [_cifar_batch(p, label_key) for p in paths]
    train_parts, test = parts[:-1], parts[-1]
    train = RawSplit(
        np.concatenate([p.images for p in train_parts]),
        np.concatenate([p.labels for p in train_parts]),
    )
    return train, test, str(paths[0].parent)


class _CIFAR(DatasetReader):
    default_augment = "crop_flip"
    name: ClassVar[str]
    torchvision_class: ClassVar[str]

    def read(self, cfg):
        return read_cifar(self.name, cfg.data_root)

    def files_present(self, cfg):
        paths = cifar_paths(self.name, cfg.data_root)
        return paths is not None and all(p.is_file() for p in paths)

    def download(self, tvd, root):
        getattr(tvd, self.torchvision_class)(root, train=True, download=True)

    def find(self, data_root):
        return _found_at(cifar_paths(self.name, data_root))


@DATASETS.register("cifar10")
class CIFAR10(_CIFAR):
    name, torchvision_class, num_classes = "cifar10", "CIFAR10", 10


@DATASETS.register("cifar100")
class CIFAR100(_CIFAR):
    name, torchvision_class, num_classes = "cifar100", "CIFAR100", 100


# --------------------------------------------------------------------------- svhn


def svhn_paths(data_root: str | None) -> list[Path] | None:
    if not data_root:
        return None
    root = Path(data_root).expanduser()
    return [root / f for f in SVHN_FILES]


def _read_svhn_mat(path: Path) -> RawSplit:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
        x, y = mat["X"], mat["y"]
    except Exception as e:  # scipy raises a zoo of types on damaged files
        raise UserError(
            f"cannot read {path}: {type(e).__name__}: {e}; the file is truncated or corrupt, "
            "delete it and re-download SVHN (data.download: true or http://ufldl.stanford.edu/housenumbers/)"
        ) from None
    x, y = np.asarray(x), np.asarray(y).reshape(-1)
    if x.ndim != 4 or x.shape[3] != len(y):
        raise UserError(
            f"{path} has X {x.shape} and y {y.shape}, expected X H x W x C x N with N labels; "
            "delete it and re-download SVHN"
        )
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2)).astype(np.uint8, copy=False)
    labels = y.astype(np.int64)
    labels[labels == 10] = 0  # SVHN stores digit 0 as label 10
    return RawSplit(images, labels)


def read_svhn(data_root: str | None) -> tuple[RawSplit, RawSplit, str]:
    paths = svhn_paths(data_root)
    if paths is None or not all(p.is_file() for p in paths):
        raise _missing_files("svhn", paths, data_root, "http://ufldl.stanford.edu/housenumbers/")
    return _read_svhn_mat(paths[0]), _read_svhn_mat(paths[1]), str(paths[0].parent)


@DATASETS.register("svhn")
class SVHN(DatasetReader):
    num_classes = 10

    def read(self, cfg):
        return read_svhn(cfg.data_root)

    def files_present(self, cfg):
        paths = svhn_paths(cfg.data_root)
        return paths is not None and all(p.is_file() for p in paths)

    def download(self, tvd, root):
        for split in ("train", "test"):
            tvd.SVHN(root, split=split, download=True)

    def find(self, data_root):
        return _found_at(svhn_paths(data_root))


# --------------------------------------------------------------------------- digits / synthetic


def read_digits() -> tuple[RawSplit, RawSplit, str]:
    """scikit-learn's 8x8 digits; fixed split: the first 1500 train, the remaining 297 test.

    A fixed positional split (not a seeded one) so the test set never changes with split_seed.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    n = DIGITS_TRAIN
    return (
        RawSplit(images[:n].copy(), labels[:n].copy()),
        RawSplit(images[n:].copy(), labels[n:].copy()),
        "sklearn.datasets.load_digits",
    )


@DATASETS.register("digits")
class Digits(DatasetReader):
    num_classes = 10

    def read(self, cfg):
        return read_digits()

    def find(self, data_root):
        import sklearn  # noqa: F401  (found if scikit-learn imports)

        return {"found": True, "path": "sklearn.datasets.load_digits", "searched": []}


def make_synthetic(cfg: SyntheticConfig) -> tuple[RawSplit, RawSplit, str]:
    """Seeded, learnable data: one random mean pattern per class plus Gaussian noise.

    Train and test share the class patterns and differ only in noise, so a small model can
    learn it in seconds (useful for tests and smoke runs).
    """
    k, c, s = cfg.num_classes, cfg.channels, cfg.image_size
    # float64 noise and patterns while generating, then uint8 and float32 copies of each split
    check_fits(8 * k * s * s * c + 30 * max(cfg.n_train, cfg.n_test) * s * s * c + 5 * cfg.n_test * s * s * c,
               f"data.synthetic (n_train {cfg.n_train}, n_test {cfg.n_test}, {c}x{s}x{s}, {k} classes)",
               "lower data.synthetic.n_train, n_test, image_size or channels")
    rng = np.random.default_rng(cfg.seed)
    patterns = rng.uniform(0.15, 0.85, size=(k, s, s, c))

    def split(n: int) -> RawSplit:
        labels = rng.integers(0, k, size=n).astype(np.int64)
        x = patterns[labels] + rng.normal(0.0, 0.15, size=(n, s, s, c))
        return RawSplit(np.rint(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8), labels)

    train = split(cfg.n_train)
    test = split(cfg.n_test)
    return train, test, f"synthetic(seed={cfg.seed})"


@DATASETS.register("synthetic")
class Synthetic(DatasetReader):
    def read(self, cfg):
        return make_synthetic(cfg.synthetic)

    def find(self, data_root):
        return {"found": True, "path": "generated", "searched": []}


def dataset_num_classes(cfg: DataConfig) -> int:
    """The class count of the configured dataset (synthetic: its own setting)."""
    n = DATASETS.get(cfg.dataset).num_classes
    return cfg.synthetic.num_classes if n is None else n


# --------------------------------------------------------------------------- download / dispatch


def _torchvision_download(cfg: DataConfig) -> None:
    """Fetch the dataset's files into data_root with torchvision (the only use of it)."""
    try:
        import torchvision.datasets as tvd  # noqa: F401
    except Exception as e:  # broken installs raise RuntimeError/OSError, not only ImportError
        raise UserError(
            f"download needs torchvision, which cannot be imported here ({type(e).__name__}); "
            "install torchvision, or place the files under data.data_root yourself and set "
            "data.download: false"
        ) from None
    if not cfg.data_root:
        raise UserError("data.download: true needs data.data_root (--set data.data_root=DIR) to download into; set it")
    root = str(Path(cfg.data_root).expanduser())
    try:
        DATASETS.get(cfg.dataset)().download(tvd, root)
    except UserError:
        raise
    except Exception as e:
        raise UserError(
            f"downloading {cfg.dataset} into {root} failed: {type(e).__name__}: {e}; check the "
            "network connection and that the folder is writable, or fetch the files by hand"
        ) from None


def read_raw(cfg: DataConfig) -> tuple[RawSplit, RawSplit, str]:
    """Read (train, test, source) for `cfg.dataset`.

    With `download: true`, torchvision fetches the files only when they are not already
    found, so a machine that has them never needs torchvision or the network.
    """
    reader = DATASETS.get(cfg.dataset)()
    if cfg.download and not reader.files_present(cfg):
        _torchvision_download(cfg)
    return reader.read(cfg)


def find_dataset_files(cfg: DataConfig | None = None) -> dict[str, dict]:
    """Which datasets are available, and where (for `advmem info`). Never raises."""
    data_root = getattr(cfg, "data_root", None)
    out: dict[str, dict] = {}
    for name in DATASETS:
        try:
            out[name] = DATASETS.get(name)().find(data_root)
        except Exception as e:  # an info command must not crash on an odd file system
            out[name] = {"found": False, "path": None, "error": f"{type(e).__name__}: {e}"}
    return out
