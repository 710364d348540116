"""Pixel-identical and near-duplicate frames: what ``inspect`` reports and what training
checks its split against (one scan under two subjects leaks across a subject-grouped split).

A frame is kept as two fingerprints: a hash of its decoded pixels and a 32 x 32 thumbnail.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
from PIL import Image

#: Side of the thumbnail frames are compared by for near duplicates (4 KiB a frame).
THUMB = 32
#: Correlation of two zero-mean unit-norm thumbnails at or above which frames are near
#: duplicates. On BUSI the pairs at 0.990-0.991 are still the same scan cropped 1-4 px apart
#: (checked by eye); any lower and different scans of similar anatomy start to pass.
NEAR_CORRELATION = 0.99
#: Thumbnails correlated per block: BLOCK x frames floats at a time, whatever the dataset size.
BLOCK = 512
#: Near pairs handed over at a time (at least one block row's): 16 bytes each.
PAIRS = 1 << 18


def digest(a: np.ndarray) -> bytes:
    """Hash of an array's shape, type and bytes (32 bytes): equal for pixel-identical frames."""
    h = hashlib.sha256(f"{a.shape}{a.dtype}".encode())   # sha256: the fastest hashlib has here
    h.update(np.ascontiguousarray(np.packbits(a) if a.dtype == bool else a).tobytes())
    return h.digest()


def thumbnail(image: np.ndarray, side: int = THUMB) -> np.ndarray:
    """A 2D uint8 (or bool) frame resized to ``side`` x ``side`` (Pillow's bilinear filter,
    which averages over the source pixels when shrinking), float32, flattened."""
    small = Image.fromarray(image.astype(np.uint8) * 255 if image.dtype == bool else image)
    return np.asarray(small.resize((side, side), Image.BILINEAR), np.float32).ravel()


def unit_thumbnail(image: np.ndarray) -> np.ndarray:
    """The frame's thumbnail, zero-mean and of unit norm: the dot product of two is their
    correlation. A flat frame's is all zeros: it correlates with nothing."""
    thumb = thumbnail(image)
    thumb -= thumb.mean()
    norm = float(np.linalg.norm(thumb))
    return thumb / norm if norm > 1e-6 else np.zeros_like(thumb)


def ids(keys: list[bytes]) -> np.ndarray:
    """Each key's index among the distinct keys, int64 (equal keys, equal ids)."""
    seen: dict[bytes, int] = {}
    return np.array([seen.setdefault(k, len(seen)) for k in keys], dtype=np.int64)


def _none() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)


def exact_pairs(pixels: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) of frames with equal pixel hashes (each frame with the first of its
    group), as two int64 arrays."""
    group = ids(pixels)
    if not len(group):
        return _none()
    first = np.unique(group, return_index=True)[1][group]   # each frame's group's first frame
    later = np.flatnonzero(first != np.arange(len(group)))
    return first[later], later


def near_blocks(thumbs: np.ndarray | list[np.ndarray], pixels: list[bytes],
                threshold: float = NEAR_CORRELATION, sides: np.ndarray | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Index pairs ``i < j`` (two int64 arrays at a time, at most PAIRS or a row's worth) of
    frames whose unit thumbnails (rows of ``thumbs``) correlate at ``threshold`` or more and
    whose pixels differ, found by a matrix product block by block. Memory: BLOCK x frames
    floats and the pairs of one yield, whatever the pairs found (a cine loop of n frames is
    n (n - 1) / 2 pairs: the caller counts them, keeping what it lists).

    Without ``sides``: every pair, in order (by ``i``, then ``j``), each block of rows
    against the frames from its first row on. With ``sides`` (each frame's side of a split,
    -1: on none): the pairs of frames on two sides alone, each side's frames against those
    of the later sides (a training side against the held-out ones, not every frame against
    every frame), in no particular order."""
    if len(thumbs) < 2:
        return
    t = np.asarray(thumbs, np.float32)
    group = ids(pixels)
    if sides is None:
        for s in range(0, len(t), BLOCK):
            yield from _block(t, group, threshold, np.arange(s, min(s + BLOCK, len(t))),
                              np.arange(s, len(t)), t[s:], upper=True)
        return
    side = np.asarray(sides)
    for k in np.unique(side[side >= 0]):
        rows, cols = np.flatnonzero(side == k), np.flatnonzero(side > k)
        if len(cols):
            against = t[cols]
            for s in range(0, len(rows), BLOCK):
                yield from _block(t, group, threshold, rows[s:s + BLOCK], cols, against,
                                  upper=False)


def _block(t: np.ndarray, group: np.ndarray, threshold: float, rows: np.ndarray,
           cols: np.ndarray, against: np.ndarray, upper: bool
           ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`near_blocks`' pairs of a frame of ``rows`` and one of ``cols`` (thumbnails
    ``against``) as ``i < j``, PAIRS or one row's worth at a time; ``upper``: the two
    overlap, and only pairs with the row's frame first are taken (each pair once)."""
    hit = t[rows] @ against.T >= threshold
    hit &= group[rows][:, None] != group[cols][None, :]
    if upper:
        hit &= rows[:, None] < cols[None, :]
    step = max(1, PAIRS // len(cols))
    for s in range(0, len(rows), step):
        ii, jj = np.nonzero(hit[s:s + step])
        if len(ii):
            a, b = rows[s + ii], cols[jj]
            yield np.minimum(a, b), np.maximum(a, b)


def first(keys: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` smallest of int64 ``keys``, in order: what a caller lists of pairs it is
    handed a batch at a time, keeping these and the next batch's."""
    if len(keys) > k:
        keys = np.partition(keys, k - 1)[:k]
    return np.sort(keys)
