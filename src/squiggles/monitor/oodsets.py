"""Out-of-distribution sets that need no download, shaped like the in-distribution data.

- ``gaussian``: every pixel drawn from N(0, 1), not clipped, and ``uniform``: U(0, 1) pixels: Hendrycks and
  Gimpel's "sheer white noise" sets (their MNIST baseline: MSP AUROC 88.29 and 97.89).
- ``letters``: the letters A to J, notMNIST's classes, rendered from the fonts matplotlib ships (DejaVu, STIX
  and Computer Modern; 22 faces), each turned by up to 15 degrees and sized like an MNIST digit: fitted into a
  20 x 20 box (scaled for other image sizes) and centred by its centre of mass in a 28 x 28 field.
- ``fashion-mnist``: its test split (the Debian package ``dataset-fashion-mnist`` provides it offline).
- ``mnist-c``: the in-distribution test images under MNIST-C's corruptions at their most severe setting, one
  corruption per image in turn (``squiggles.monitor.corruptions``).
- a ``.npz`` / ``.safetensors`` file of the user's with an array ``x`` (labels are not needed).

Every set is generated from a seed, so the same call gives the same images.

Example:
    >>> from squiggles.monitor.oodsets import letters
    >>> x = letters(6, (1, 28, 28), seed=0)
    >>> x.shape, float(x.min()) >= 0, float(x.max()) <= 1
    (torch.Size([6, 1, 28, 28]), True, True)
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from squiggles.errors import SquigglesError

BUILTIN = ("fashion-mnist", "gaussian", "uniform", "letters", "mnist-c")
LETTERS = "ABCDEFGHIJ"
_FACES = ("DejaVuSans", "DejaVuSerif", "STIXGeneral", "cmr10", "cmb10", "cmss10", "cmti10", "cmtt10", "cmmi10")


def gaussian(n: int, shape: tuple[int, ...], seed: int = 0) -> Tensor:
    """``n`` inputs of ``shape`` with every value drawn from N(0, 1) (Hendrycks and Gimpel's noise, unclipped)."""
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def uniform(n: int, shape: tuple[int, ...], seed: int = 0) -> Tensor:
    """``n`` inputs of ``shape`` with every value drawn from U(0, 1)."""
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


@cache
def font_files() -> tuple[str, ...]:
    """The font files matplotlib ships that hold the letters A to J as real glyphs (no symbol or fallback faces)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    found = sorted(str(p) for p in folder.glob("*.ttf") if p.stem.startswith(_FACES) and "Display" not in p.stem)
    if not found:
        raise SquigglesError(f"no usable fonts in {folder}; the letters set needs matplotlib's bundled fonts")
    return tuple(found)


def letters(n: int, shape: tuple[int, ...] = (1, 28, 28), seed: int = 0) -> Tensor:
    """``n`` rendered letters A-J as MNIST-style images of ``shape`` (channels repeat the grey image)."""
    return labelled_letters(n, shape, seed)[0]


def labelled_letters(n: int, shape: tuple[int, ...] = (1, 28, 28), seed: int = 0) -> tuple[Tensor, Tensor]:
    """`letters` and which letter each is (0 for A ... 9 for J), for a per-letter breakdown."""
    if len(shape) != 3:
        raise SquigglesError(f"letters are images; the model takes inputs of shape {shape}")
    _, h, w = shape
    rng = np.random.default_rng(seed)
    fonts = font_files()
    which = rng.integers(len(fonts), size=n)
    chars = rng.integers(len(LETTERS), size=n)
    angles = rng.uniform(-15, 15, size=n)
    out = torch.zeros(n, h, w)
    for i in range(n):
        glyph = _render(fonts[which[i]], LETTERS[chars[i]], float(angles[i]))
        out[i] = _mnist_style(glyph, h, w)
    return out.unsqueeze(1).expand(n, shape[0], h, w).contiguous(), torch.from_numpy(chars).long()


def _render(font: str, char: str, angle: float) -> Tensor:
    from matplotlib.ft2font import FT2Font

    face = FT2Font(font)
    face.set_size(64, 72)  # 64 px: detailed enough to downsample smoothly
    face.set_text(char, angle)
    face.draw_glyphs_to_bitmap(antialiased=True)
    img = torch.from_numpy(np.asarray(face.get_image(), dtype=np.float32) / 255.0)
    rows, cols = img.sum(1).nonzero(), img.sum(0).nonzero()
    if len(rows) == 0:
        raise SquigglesError(f"the font {Path(font).name} drew nothing for {char!r}")
    return img[int(rows[0]): int(rows[-1]) + 1, int(cols[0]): int(cols[-1]) + 1]


def _mnist_style(glyph: Tensor, h: int, w: int) -> Tensor:
    """MNIST's normalisation: fit into a box of 20/28 of the image keeping the aspect ratio, anti-aliased, then
    place the centre of mass at the image centre."""
    box = max(1, round(20 * min(h, w) / 28))
    gh, gw = glyph.shape
    scale = box / max(gh, gw)
    th, tw = max(1, round(gh * scale)), max(1, round(gw * scale))
    small = F.interpolate(glyph[None, None], size=(th, tw), mode="bilinear", antialias=True, align_corners=False)[0, 0]
    small = small.clamp(0, 1)
    mass = small.sum()
    cy = float((small.sum(1) * torch.arange(th)).sum() / mass)
    cx = float((small.sum(0) * torch.arange(tw)).sum() / mass)
    top = min(max(round((h - 1) / 2 - cy), 0), h - th)
    left = min(max(round((w - 1) / 2 - cx), 0), w - tw)
    out = torch.zeros(h, w)
    out[top: top + th, left: left + tw] = small
    return out


def severe_corruptions(x: Tensor, seed: int = 0) -> Tensor:
    """``x`` with each image under one of MNIST-C's corruptions at its most severe setting, taken in turn."""
    from squiggles.monitor.corruptions import CORRUPTIONS, corrupt

    out = x.clone()
    names = list(CORRUPTIONS)
    for k, name in enumerate(names):
        idx = torch.arange(k, len(x), len(names))
        if len(idx):
            c = CORRUPTIONS[name]
            out[idx] = corrupt(x[idx], name, len(c.levels) if c.levels else None, seed=seed)
    return out


def load_ood(name: str, in_data: Tensor, *, n: int, seed: int = 0, data_dir: str | None = None) -> Tensor:
    """The out-of-distribution set ``name`` (built-in or a tensors file), ``n`` inputs shaped like ``in_data``."""
    shape = tuple(in_data.shape[1:])
    if name == "gaussian":
        return gaussian(n, shape, seed)
    if name == "uniform":
        return uniform(n, shape, seed)
    if name == "letters":
        return letters(n, shape, seed)
    if name == "mnist-c":
        return severe_corruptions(in_data[:n], seed)
    if name == "fashion-mnist":
        from squiggles.data import load_dataset

        x = load_dataset("fashion-mnist", "test", data_dir=data_dir, progress=False).x[:n]
    elif name.endswith((".npz", ".safetensors")) or Path(name).is_file():
        x = _load_x(Path(name))[:n]
    else:
        raise SquigglesError(f"unknown out-of-distribution set {name!r}; choose from: {', '.join(BUILTIN)}, or a "
                             ".npz/.safetensors file holding an array x")
    if tuple(x.shape[1:]) != shape:
        raise SquigglesError(f"the out-of-distribution set {name!r} has inputs of shape {tuple(x.shape[1:])} but the "
                             f"model takes {shape}; resize it to {shape} or choose a set of that shape")
    return x.to(torch.float32)


def _load_x(path: Path) -> Tensor:
    """The array ``x`` of a user's ``.npz`` or ``.safetensors`` file (labels, if any, are ignored)."""
    if not path.is_file():
        raise SquigglesError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: torch.from_numpy(z[k]) for k in z.files}
        else:
            from safetensors.torch import load_file

            arrays = load_file(str(path))
    except Exception as e:  # numpy, zipfile and safetensors each raise their own kinds
        raise SquigglesError(f"{path}: cannot read it ({e})") from e
    if "x" not in arrays:
        raise SquigglesError(f"{path}: no array 'x'; found: {', '.join(sorted(arrays)) or 'none'}")
    x = arrays["x"].to(torch.float32)
    if x.ndim < 2 or not bool(torch.isfinite(x).all()):
        raise SquigglesError(f"{path}: x must be N x ... with finite values, got shape {tuple(x.shape)}")
    return x


def to_unit(x: Tensor) -> Tensor:
    """Images as uint8-like [0, 1] floats, for pictures (the noise sets leave that range)."""
    return x.clamp(0, 1) if math.isfinite(float(x.abs().max())) else torch.zeros_like(x)
