"""Batched image operations behind the MNIST-C corruptions: every function takes a stack of images
``N x H x W`` (float64 in [0, 1]) with per-image parameters as length-N arrays, and loops over pixels or
segments, never over images.

They reproduce what the reference implementation (Mu and Gilmer 2019, arXiv 1906.02337, built one image at a
time on scikit-image, ImageMagick and PIL) computes, with numpy and scipy alone: scikit-image's Gaussian filter
and bilinear affine warp, ImageMagick's one-sided motion blur, scikit-image's Canny detector, the
diamond-square "plasma" of the fog, and the anti-aliased lines of the line corruptions.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi


def gaussian(x: np.ndarray, sigma: float, *, axes: tuple[int, ...] = (1, 2), mode: str = "nearest") -> np.ndarray:
    """scikit-image's ``gaussian`` (scipy's filter, truncated at 4 sigma) along ``axes`` of a stack only."""
    sigmas = [0.0] * x.ndim
    for a in axes:
        sigmas[a] = sigma
    return ndi.gaussian_filter(x, sigmas, mode=mode, truncate=4.0)


def warp_affine(x: np.ndarray, matrix: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Output pixel ``(col, row)`` reads the input at ``matrix @ (col, row) + shift`` (scikit-image's ``warp``
    with an inverse map): bilinear, zero outside the image. ``matrix``: N x 2 x 2, ``shift``: N x 2."""
    n, h, w = x.shape
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    src_c = matrix[:, 0, 0, None, None] * cols + matrix[:, 0, 1, None, None] * rows + shift[:, 0, None, None]
    src_r = matrix[:, 1, 0, None, None] * cols + matrix[:, 1, 1, None, None] * rows + shift[:, 1, None, None]
    return bilinear(x, src_r, src_c)


def bilinear(x: np.ndarray, src_r: np.ndarray, src_c: np.ndarray) -> np.ndarray:
    """Sample each image at real coordinates (N x H x W each); neighbours outside the image count as 0.

    That is ``grid_sample``'s bilinear mode with zero padding, in pixel units (``align_corners=True``)."""
    import torch
    import torch.nn.functional as F

    n, h, w = x.shape
    grid = np.stack([2 * src_c / max(w - 1, 1) - 1, 2 * src_r / max(h - 1, 1) - 1], axis=-1)
    out = F.grid_sample(torch.from_numpy(np.ascontiguousarray(x))[:, None], torch.from_numpy(grid),
                        mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, 0].numpy()


def about_centre(matrix: np.ndarray, h: int, w: int) -> np.ndarray:
    """The shift that keeps the image centre fixed under ``matrix`` (the reference's ``13.5 * (1 - a1 - a2)``)."""
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    return centre[None, :] - np.einsum("nij,j->ni", matrix, centre)


def motion_blur(x: np.ndarray, radius: float, sigma: float, angle_deg: np.ndarray) -> np.ndarray:
    """ImageMagick's ``-motion-blur radius x sigma + angle``: a one-sided Gaussian-weighted streak; output pixel
    ``p`` averages the pixels at ``p + round(i * (cos a, sin a))`` for ``i = 0 .. 2 ceil(radius)``, edges
    replicated."""
    n, h, w = x.shape
    width = int(2 * math.ceil(radius) + 1)
    taps = np.arange(width, dtype=np.float64)
    kernel = np.exp(-(taps**2) / (2 * sigma * sigma))
    kernel /= kernel.sum()
    a = np.deg2rad(angle_deg)
    dx = np.ceil(taps[None, :] * np.cos(a)[:, None] - 0.5).astype(np.int64)  # N x width
    dy = np.ceil(taps[None, :] * np.sin(a)[:, None] - 0.5).astype(np.int64)
    rows = np.arange(h)[None, :, None]
    cols = np.arange(w)[None, None, :]
    img = np.arange(n)[:, None, None]
    out = np.zeros_like(x)
    for i in range(width):
        r = np.clip(rows + dy[:, i, None, None], 0, h - 1)
        c = np.clip(cols + dx[:, i, None, None], 0, w - 1)
        out += kernel[i] * x[img, r, c]
    return out


def glass_shuffle(x: np.ndarray, delta: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """The glass blur's local shuffle: visiting pixels from the bottom-right, each swaps with probability 1/2
    with a neighbour at an offset drawn from ``[-delta, delta)`` on each axis (the reference's order, so a
    pixel may travel several steps). One pass over the pixels per iteration, all images at once."""
    x = x.copy()
    n, h, w = x.shape
    img = np.arange(n)
    for _ in range(iterations):
        for r in range(h - delta, delta, -1):
            for c in range(w - delta, delta, -1):
                swap = rng.random(n) < 0.5
                dc, dr = rng.integers(-delta, delta, size=(2, n))
                r2, c2 = r + dr, c + dc
                a, b = x[img, r, c], x[img, r2, c2]
                x[img, r, c] = np.where(swap, b, a)
                x[img, r2, c2] = np.where(swap, a, b)
    return x


def plasma_fractal(n: int, decay: float, rng: np.random.Generator, mapsize: int = 256) -> np.ndarray:
    """Diamond-square height maps in [0, 1], ``n x mapsize x mapsize``: the fog's texture. As in the reference,
    each level's random offset is ``wibble * U(-wibble, wibble)``, wibble starting at 100 and divided by
    ``decay`` per level, and each map is normalised by its own minimum and maximum.

    Each level doubles a contiguous grid (corners, square centres, and the two kinds of diamond points,
    interleaved by one reshape) instead of writing strided slices of the full map, in float32 on torch."""
    import torch

    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    grid = torch.zeros(n, 1, 1)
    wibble = 100.0

    def jitter(total: torch.Tensor) -> torch.Tensor:
        noise = torch.empty_like(total).uniform_(-wibble, wibble, generator=gen)
        return total.div_(4).add_(noise.mul_(wibble))

    while grid.shape[1] < mapsize:
        below = grid.roll(-1, 1)
        centres = jitter(grid + below + (grid + below).roll(-1, 2))
        left = jitter(centres + centres.roll(1, 1) + grid + grid.roll(-1, 2))  # rows of corners, between columns
        top = jitter(centres + centres.roll(1, 2) + grid + below)  # columns of corners, between rows
        k = grid.shape[1]
        grid = torch.stack([torch.stack([grid, left], -1), torch.stack([top, centres], -1)], 2).reshape(n, 2 * k, 2 * k)
        wibble /= decay
    grid -= grid.amin((1, 2), keepdim=True)
    grid /= grid.amax((1, 2), keepdim=True)
    return grid.double().numpy()


def line(c0: np.ndarray, r0: np.ndarray, c1: np.ndarray, r1: np.ndarray, h: int, w: int) -> np.ndarray:
    """Anti-aliased segments from ``(c0, r0)`` to ``(c1, r1)``, one per image: intensity ``1 + log(1 - d / 2.3)``
    at vertical distance ``d`` from the line, clipped to [0, 1], kept between columns ``floor(c0)`` and
    ``ceil(c1)``. A vertical segment (``c0 == c1``) draws nothing, as in the reference."""
    c0, r0, c1, r1 = (np.asarray(v, dtype=np.float64) for v in (c0, r0, c1, r1))
    rows = np.arange(h, dtype=np.float64)[None, :, None]
    cols = np.arange(w, dtype=np.float64)[None, None, :]
    vertical = c1 == c0
    slope = (r1 - r0) / np.where(vertical, 1.0, c1 - c0)
    at = slope[:, None, None] * (cols - c0[:, None, None]) + r0[:, None, None]
    dist = np.clip(np.abs(rows - at), 0, 2.3 - 1e-10)
    out = np.clip(np.log(1 - dist / 2.3) + 1, 0, 1)
    left = np.floor(c0)[:, None, None]
    right = np.ceil(c1)[:, None, None]
    keep = (cols >= left) & (cols < right) & ~vertical[:, None, None]
    return np.where(keep, out, 0.0)


def canny(x: np.ndarray, sigma: float = 1.0, low: float = 0.1, high: float = 0.2) -> np.ndarray:
    """scikit-image's Canny edge detector (its defaults for float images) on each image: Gaussian smoothing
    normalised at the border, Sobel gradients, non-maximum suppression by interpolating the magnitude along
    the gradient, and hysteresis (edges at >= ``low`` connected, 8-neighbourly, to one at >= ``high``)."""
    n, h, w = x.shape
    eps = np.finfo(np.float64).eps
    smoothed = gaussian(x, sigma, mode="constant") / (gaussian(np.ones((1, h, w)), sigma, mode="constant") + eps)
    isobel = _sobel(smoothed, 1)  # along rows
    jsobel = _sobel(smoothed, 2)  # along columns
    mag = np.hypot(isobel, jsobel)
    ai, aj = np.abs(isobel), np.abs(jsobel)
    interior = np.zeros((h, w), dtype=bool)
    interior[1:-1, 1:-1] = True
    candidates = interior[None] & (mag > 0)
    m = np.pad(mag, ((0, 0), (1, 1), (1, 1)))

    def nb(dr: int, dc: int) -> np.ndarray:
        return m[:, 1 + dr: 1 + dr + h, 1 + dc: 1 + dc + w]

    with np.errstate(divide="ignore", invalid="ignore"):
        steep, shallow = ai >= aj, ai <= aj
        same = ((isobel >= 0) & (jsobel >= 0)) | ((isobel <= 0) & (jsobel <= 0))
        opposite = ((isobel <= 0) & (jsobel >= 0)) | ((isobel >= 0) & (jsobel <= 0))
        w_steep, w_shallow = aj / ai, ai / aj
        # Each sector compares the magnitude with the interpolation between two neighbours on each side.
        sectors = (
            (same & steep, w_steep, (1, 0), (1, 1), (-1, 0), (-1, -1)),
            (same & shallow, w_shallow, (0, 1), (1, 1), (0, -1), (-1, -1)),
            (opposite & shallow, w_shallow, (0, 1), (-1, 1), (0, -1), (1, -1)),
            (opposite & steep, w_steep, (-1, 0), (-1, 1), (1, 0), (1, -1)),
        )
        maxima = np.zeros_like(candidates)
        for pts, wt, a1, a2, b1, b2 in sectors:
            pts = pts & candidates
            plus = nb(*a2) * wt + nb(*a1) * (1 - wt) <= mag
            minus = nb(*b2) * wt + nb(*b1) * (1 - wt) <= mag
            maxima = np.where(pts, plus & minus, maxima)
    strong = maxima & (mag >= high)
    weak = maxima & (mag >= low)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within an image, never across images
    labels, count = ndi.label(weak, structure)
    if count == 0:
        return weak.astype(np.float64)
    good = np.bincount(labels[strong], minlength=count + 1) > 0
    good[0] = False
    return good[labels].astype(np.float64)


def _sobel(x: np.ndarray, axis: int) -> np.ndarray:
    """scipy's Sobel derivative along ``axis`` of each image, smoothing along the other image axis only."""
    other = 2 if axis == 1 else 1
    d = ndi.correlate1d(x, [-1.0, 0.0, 1.0], axis=axis, mode="reflect")
    return ndi.correlate1d(d, [1.0, 2.0, 1.0], axis=other, mode="reflect")
