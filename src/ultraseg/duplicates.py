"""Pixel-identical and near-duplicate frames: what ``inspect`` reports and what training
checks its split against (one scan under two subjects leaks across a subject-grouped split).

A frame is kept as two fingerprints: a hash of its decoded pixels and a 32 x 32 thumbnail.
"""
from __future__ import annotations

import hashlib

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


def near_pairs(thumbs: np.ndarray | list[np.ndarray], pixels: list[bytes],
               threshold: float = NEAR_CORRELATION) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``i < j`` (two int64 arrays) of frames whose unit thumbnails (rows of
    ``thumbs``) correlate at ``threshold`` or more and whose pixels differ, found by a matrix
    product block by block (memory: BLOCK x frames floats, and 16 bytes a pair found: the
    frames of one cine loop are thousands of pairs, kept as arrays, not Python objects)."""
    if len(thumbs) < 2:
        return _none()
    t = np.asarray(thumbs, np.float32)
    group = ids(pixels)
    found_i, found_j = [], []
    for start in range(0, len(t), BLOCK):
        ii, jj = np.nonzero(t[start:start + BLOCK] @ t.T >= threshold)
        ii = ii + start
        keep = (ii < jj) & (group[ii] != group[jj])
        found_i.append(ii[keep].astype(np.int64))
        found_j.append(jj[keep].astype(np.int64))
    return np.concatenate(found_i), np.concatenate(found_j)
