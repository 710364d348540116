"""Overlap-tile strategy of the U-Net paper (Ronneberger et al. 2015, Fig. 2), numpy only.

The valid (unpadded) U-Net maps an input window of ``out_tile + 2 * margin`` pixels to the
central ``out_tile`` x ``out_tile`` output window. To segment a whole image we

1. mirror-pad it by ``margin`` on every side (context beyond the border is the image reflected),
2. cover the image with output windows of side ``out_tile`` (the last row / column of windows
   is shifted back to end at the border, so windows may overlap),
3. cut each window's input (the window plus ``margin`` of context on each side), run the
   network on batches of them, and write each output into its window.

An image smaller than ``out_tile`` in a dimension is first mirror-padded (bottom / right) up to
``out_tile``; the padding is cropped away again when stitching.

Windows may be rectangular: ``out_tile`` is a side ``t`` (a ``t`` x ``t`` window) or a pair
``(th, tw)``. One ``(420, 580)`` window covers a 420 x 580 frame with a 604 x 764 input, where
the smallest square window covering it would need a 764 x 764 input (33 % more FLOPs). Both give
the same values: every window starts at the same origin, so the network sees the same pooling
grid and the same mirrored context for each output pixel.

This module must not import torch: prediction from an exported ONNX model runs without it.
:meth:`ultraseg.predict.Predictor.proba_canvas` (the torch and the ONNX backends alike) calls
:func:`predict_tiled_many` with its ``run_batch``, batching the windows of every canvas in a
flush. :func:`predict_tiled` is its one-image case; :func:`extract_tiles` and
:func:`stitch_tiles` (every window at once) plan, pad and stitch as it does, for a caller that
holds the windows itself; no prediction in ultraseg calls these three.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby

import numpy as np

#: An output window: a side ``t`` (square) or ``(height, width)``.
Tile = int | tuple[int, int]

__all__ = [
    "Tile",
    "TilePlan",
    "crop_with_context",
    "extract_tiles",
    "pad_for_tiles",
    "plan_tiles",
    "predict_tiled",
    "predict_tiled_many",
    "stitch_tiles",
    "tile_shape",
]


def tile_shape(out_tile: Tile) -> tuple[int, int]:
    """``t`` -> ``(t, t)``; ``(th, tw)`` -> ``(th, tw)``, both checked to be integers >= 1."""
    shape = (out_tile, out_tile) if isinstance(out_tile, (int, np.integer)) else tuple(out_tile)
    if len(shape) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in shape):
        raise ValueError(f"out_tile must be an integer >= 1 or a pair of them, got {out_tile!r}")
    return int(shape[0]), int(shape[1])


@dataclass(frozen=True)
class TilePlan:
    """Where the output windows of an ``h`` x ``w`` image lie.

    ``positions`` are the top-left corners (y, x) of the output windows (``out_tile`` x
    ``out_tile``, or ``out_tile = (th, tw)``), in the coordinates of the image after it was
    padded up to at least the window in each dimension (identical to the original
    coordinates; only windows of a small image reach past it).
    """

    h: int
    w: int
    out_tile: Tile
    margin: int
    positions: tuple[tuple[int, int], ...]

    @property
    def out_shape(self) -> tuple[int, int]:
        """(th, tw) of an output window."""
        return tile_shape(self.out_tile)

    @property
    def in_shape(self) -> tuple[int, int]:
        """(th + 2 margin, tw + 2 margin) of an input window."""
        th, tw = self.out_shape
        return th + 2 * self.margin, tw + 2 * self.margin

    @property
    def padded_shape(self) -> tuple[int, int]:
        """(H, W) of the image once padded (bottom, right) to hold every window."""
        th, tw = self.out_shape
        return (max(self.h, max(y for y, _ in self.positions) + th),
                max(self.w, max(x for _, x in self.positions) + tw))


def _starts(size: int, out_tile: int, align: int = 1) -> list[int]:
    """Window starts along one axis. ``align`` 1: steps of ``out_tile``, the last window shifted
    back to end at the border. Else every start is a multiple of ``align``: steps of the largest
    such multiple up to ``out_tile``, the last window reaching past the border where it must
    (unaligned, as with ``align`` 1, for a window narrower than ``align``)."""
    if size <= out_tile:
        return [0]
    if align <= 1 or out_tile < align:
        starts = list(range(0, size - out_tile + 1, out_tile))
        if starts[-1] != size - out_tile:
            starts.append(size - out_tile)
        return starts
    step = out_tile - out_tile % align
    return list(range(0, size - out_tile + step, step))   # the last one ends at or past size


def plan_tiles(h: int, w: int, out_tile: Tile, align: int = 1) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of ``out_tile`` windows covering an ``h`` x ``w`` image, row by row.

    ``out_tile``: a side ``t`` or ``(th, tw)``. Windows step by their side; the last row /
    column is shifted back to stay inside the image (so it overlaps its neighbour). A dimension
    smaller than the window gets the single start 0 (the image is padded up to the window by
    :func:`extract_tiles`). ``align``: every start a multiple of it (``2 ** depth`` for the
    valid U-Net: each window then meets the max-pooling grid where one window over the whole
    image would, and gives the same values); windows step by the largest multiple of
    ``align`` up to their side, overlap a little, and the last may reach past the image, which
    :func:`extract_tiles` mirror-pads to fit.
    """
    if h < 1 or w < 1:
        raise ValueError(f"image must be at least 1x1, got {h}x{w}")
    if isinstance(out_tile, (int, np.integer)) and out_tile < 1:
        raise ValueError(f"out_tile must be >= 1, got {out_tile}")
    if isinstance(align, bool) or not isinstance(align, (int, np.integer)) or align < 1:
        raise ValueError(f"align must be an integer >= 1, got {align!r}")
    th, tw = tile_shape(out_tile)
    return [(y, x) for y in _starts(h, th, align) for x in _starts(w, tw, align)]


def _spatial_pad(image: np.ndarray, before: int, after_h: int, after_w: int) -> np.ndarray:
    """Reflect-pad the last two axes (numpy reflects repeatedly when a pad exceeds the size)."""
    widths = [(0, 0)] * (image.ndim - 2) + [(before, after_h), (before, after_w)]
    return np.pad(image, widths, mode="reflect")


def pad_for_tiles(image: np.ndarray, margin: int) -> np.ndarray:
    """Mirror (reflect) pad the last two axes by ``margin`` on every side.

    (..., H, W) -> (..., H + 2 margin, W + 2 margin), same dtype. Works for any margin, even one
    larger than the image (the reflection repeats).
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    return _spatial_pad(image, margin, margin, margin)


def crop_with_context(
    padded: np.ndarray, y: int, x: int, out_tile: Tile, margin: int
) -> np.ndarray:
    """Input window for the output window at (y, x) of the original image.

    Args:
        padded: (..., H + 2 margin, W + 2 margin), the image already padded by
            :func:`pad_for_tiles` with the same ``margin``.
        y, x: top-left corner of the output window in original image coordinates.
        out_tile: the output window, a side ``t`` or ``(th, tw)``.

    Returns:
        (..., th + 2 margin, tw + 2 margin) view; its central th x tw equals
        ``image[..., y:y + th, x:x + tw]``.
    """
    th, tw = tile_shape(out_tile)
    side_h, side_w = th + 2 * margin, tw + 2 * margin
    big_h, big_w = padded.shape[-2], padded.shape[-1]
    if y < 0 or x < 0 or y + side_h > big_h or x + side_w > big_w:
        raise ValueError(
            f"output window {th}x{tw} at ({y}, {x}) with margin {margin} does not fit "
            f"a padded image of {big_h}x{big_w} "
            f"(original {big_h - 2 * margin}x{big_w - 2 * margin})"
        )
    return padded[..., y : y + side_h, x : x + side_w]


def _plan(image: np.ndarray, out_tile: Tile, margin: int, align: int) -> TilePlan:
    """The windows of an (H, W) or (C, H, W) image; checks the image and the margin."""
    if np.ndim(image) not in (2, 3):
        raise ValueError(f"expected an (H, W) or (C, H, W) image, got shape {np.shape(image)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    h, w = np.shape(image)[-2:]
    positions = tuple(plan_tiles(h, w, out_tile, align))
    return TilePlan(h=h, w=w, out_tile=out_tile, margin=margin, positions=positions)


def _padded(image: np.ndarray, plan: TilePlan) -> np.ndarray:
    """The image (C, H, W) float32, mirror-padded to hold every window of ``plan`` with its
    context."""
    chw = image[None] if image.ndim == 2 else image
    grow_h, grow_w = plan.padded_shape[0] - plan.h, plan.padded_shape[1] - plan.w
    chw = chw.astype(np.float32, copy=False)
    m = plan.margin
    return _spatial_pad(chw, m, m + grow_h, m + grow_w)


def extract_tiles(image: np.ndarray, out_tile: Tile, margin: int, align: int = 1
                  ) -> tuple[np.ndarray, TilePlan]:
    """Cut the network's input windows out of a mirror-padded image.

    Args:
        image: (H, W) or (C, H, W) float array.
        out_tile: each output window: a side ``t`` or ``(th, tw)``.
        margin: context on each side (``context_margin(depth)`` for the valid U-Net).
        align: window starts are multiples of it (see :func:`plan_tiles`).

    Returns:
        tiles: (N, C, th + 2 margin, tw + 2 margin) float32 (C = 1 for a 2D image),
            in the order of ``plan.positions``.
        plan: the :class:`TilePlan` that :func:`stitch_tiles` needs.

    Every window at once: :func:`predict_tiled` cuts them a batch at a time instead.
    """
    plan = _plan(image, out_tile, margin, align)
    padded = _padded(image, plan)
    tiles = np.stack([crop_with_context(padded, y, x, out_tile, margin)
                      for y, x in plan.positions])
    return tiles, plan


class _Stitcher:
    """Adds window outputs into the whole image as they come (float64 sums, window counts)."""

    def __init__(self, plan: TilePlan) -> None:
        self.plan, self.done = plan, 0
        self.total: np.ndarray | None = None
        self.count = np.zeros(plan.padded_shape, dtype=np.int64)

    def add(self, outputs: np.ndarray, expected: int) -> None:
        """The outputs (n, C, th, tw) of the next ``expected`` windows of the plan."""
        th, tw = self.plan.out_shape
        if outputs.ndim != 4 or outputs.shape[0] != expected or outputs.shape[-2:] != (th, tw):
            raise ValueError(f"expected tile outputs of shape ({expected}, C, {th}, {tw}), got "
                             f"{tuple(outputs.shape)}")
        if self.total is None:
            self.total = np.zeros((outputs.shape[1], *self.plan.padded_shape), dtype=np.float64)
        for out, (y, x) in zip(outputs, self.plan.positions[self.done: self.done + expected]):
            self.total[:, y : y + th, x : x + tw] += out
            self.count[y : y + th, x : x + tw] += 1
        self.done += expected

    def result(self) -> np.ndarray:
        """(C, H, W) float32, overlapping outputs averaged."""
        if self.total is None or self.done != len(self.plan.positions):
            raise ValueError(f"{self.done} of {len(self.plan.positions)} tile outputs given")
        return (self.total / self.count)[:, : self.plan.h, : self.plan.w].astype(np.float32)


def stitch_tiles(outputs: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Assemble per-tile outputs into the whole image.

    Args:
        outputs: (N, C, th, tw), one per ``plan.positions`` entry, same order.
        plan: from :func:`extract_tiles`.

    Returns:
        (C, H, W) float32. Where windows overlap (the shifted-back last row / column) the
        outputs are averaged (accumulated in float64, so identical values come back exactly).
    """
    stitcher = _Stitcher(plan)
    stitcher.add(outputs, len(plan.positions))
    return stitcher.result()


def predict_tiled(
    run_batch: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    out_tile: Tile,
    margin: int,
    batch_size: int = 4,
    align: int = 1,
) -> np.ndarray:
    """Run a network over a whole image with the overlap-tile strategy.

    Args:
        run_batch: maps input tiles (n, C_in, th + 2 margin, tw + 2 margin) float32 to outputs
            (n, C, th, tw), e.g. a torch model or an ONNX session wrapped in numpy.
        image: (H, W) or (C_in, H, W) float array.
        out_tile: output window, a side ``t`` or ``(th, tw)``; margin: context on each side.
        batch_size: tiles per ``run_batch`` call.
        align: window starts are multiples of it (``2 ** depth``: the values of one window
            over the whole image; see :func:`plan_tiles`).

    Returns:
        (C, H, W) float32, whatever ``run_batch`` produces (logits or probabilities).

    The input windows are cut ``batch_size`` at a time and their outputs added into the image
    as they come: host memory holds one batch of windows, however small the tile (all of a
    20-px tile's windows with 92 px of context would take about 160 times the image).
    """
    return predict_tiled_many(run_batch, [image], out_tile, margin, batch_size, align)[0]


def predict_tiled_many(
    run_batch: Callable[[np.ndarray], np.ndarray],
    images: Sequence[np.ndarray],
    out_tile: Tile,
    margin: int,
    batch_size: int = 4,
    align: int = 1,
) -> list[np.ndarray]:
    """:func:`predict_tiled` over several images of one shape, their windows batched together:
    ``batch_size`` windows a call across the images, in order (a call may hold the last
    windows of one image and the first of the next), so frames whose canvas takes one window
    each are batched as a 'same' model batches whole frames. Returns each image's (C, H, W)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len({np.shape(im) for im in images}) > 1:
        raise ValueError("the images tiled together must have one shape, got "
                         + ", ".join(str(np.shape(im)) for im in images))
    if not len(images):
        return []
    plan = _plan(images[0], out_tile, margin, align)
    # an image is padded where its first window is cut, and its sums give way to its map
    # where its last is added: padded copies and sums only of the images a batch reaches
    padded: dict[int, np.ndarray] = {}
    stitchers: dict[int, _Stitcher] = {}
    results: list[np.ndarray] = []
    windows = [(k, y, x) for k in range(len(images)) for y, x in plan.positions]
    for i in range(0, len(windows), batch_size):
        at = windows[i : i + batch_size]
        for k in dict.fromkeys(k for k, _, _ in at):
            if k not in padded:
                padded[k] = _padded(np.asarray(images[k]), plan)
                stitchers[k] = _Stitcher(plan)
        batch = np.stack([crop_with_context(padded[k], y, x, out_tile, margin)
                          for k, y, x in at])
        outputs = np.asarray(run_batch(batch))
        if outputs.ndim < 1 or outputs.shape[0] != len(at):
            raise ValueError(f"expected {len(at)} tile outputs, got {tuple(outputs.shape)}")
        start = 0
        for k, same in groupby(at, key=lambda window: window[0]):    # each image's windows
            n = len(list(same))
            stitchers[k].add(outputs[start : start + n], n)
            start += n
            if stitchers[k].done == len(plan.positions):
                results.append(stitchers.pop(k).result())
                del padded[k]
    return results
