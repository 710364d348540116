"""The duplicate search (ultraseg.duplicates) and its two consumers: inspect's summary
(inspection.duplicate_summary) and training's split check (data.duplicates_across_split),
pinned against a brute-force reading of what they report."""
from __future__ import annotations

import tracemalloc
from collections import Counter
from types import SimpleNamespace

import numpy as np

from ultraseg import duplicates
from ultraseg.data import duplicates_across_split
from ultraseg.duplicates import NEAR_CORRELATION, THUMB, digest, thumbnail, unit_thumbnail
from ultraseg.inspection import LISTED, _Frames, duplicate_summary


def _scans(n: int, bases: int, seed: int = 0):
    """``n`` frames drawn from ``bases`` scans (a little noise each: near duplicates of their
    scan's other frames, correlation ~0.999), a few exact copies, subjects from 7, masks
    (a disc; every 5th moved, every 7th none)."""
    rng = np.random.default_rng(seed)
    scans = (rng.random((bases, 48, 48)) * 200).astype(np.int16)
    images, masks, subjects = [], [], []
    yy, xx = np.mgrid[:48, :48]
    for k in range(n):
        b = int(rng.integers(bases))
        if k % 11 == 10:                    # a copy of an earlier frame, pixel for pixel
            images.append(images[k // 2].copy())
        else:
            images.append(np.clip(scans[b] + rng.integers(-3, 4, scans[b].shape), 0, 255
                                  ).astype(np.uint8))
        cx = 24 + (10 if k % 5 == 0 else 0)
        masks.append(None if k % 7 == 0 else (yy - 24) ** 2 + (xx - cx) ** 2 < 100)
        subjects.append(str(int(rng.integers(7))))
    return images, masks, subjects


def _oracle_pairs(images):
    """Every near pair i < j (thumbnail correlation >= the threshold, pixels that differ)
    and every exact pair (each frame with the first of its group), by the full matrix."""
    t = np.stack([unit_thumbnail(im) for im in images])
    keys = [digest(im) for im in images]
    c = t @ t.T
    near = [(i, j) for i in range(len(images)) for j in range(i + 1, len(images))
            if c[i, j] >= NEAR_CORRELATION and keys[i] != keys[j]]
    first: dict[bytes, int] = {}
    exact = [(first[k], j) for j, k in enumerate(keys) if first.setdefault(k, j) != j]
    return exact, near


def test_inspect_counts_and_lists_the_pairs_the_full_matrix_finds() -> None:
    """Pins inspect's duplicate keys on a set of many near duplicates (thousands of pairs):
    the counts (all, across subjects, masks that differ) and the first LISTED pairs, across
    subjects first, then by index."""
    images, masks, subjects = _scans(240, 4)
    frames = _Frames()
    for k, (im, fg, s) in enumerate(zip(images, masks, subjects)):
        frames.add(f"f{k:03d}", s, im, fg)
    got = duplicate_summary(frames)
    exact, near = _oracle_pairs(images)
    assert len(near) > 5000 and len(exact) > 10
    thumbs = [None if m is None else thumbnail(m) > 127 for m in masks]

    def differ(i, j, exact_kind):
        if masks[i] is None or masks[j] is None:
            return False
        if exact_kind:
            return digest(masks[i]) != digest(masks[j])
        a, b = thumbs[i], thumbs[j]
        size = a.sum() + b.sum()
        return size > 0 and 2 * (a & b).sum() < 0.9 * size

    for kind, pairs in (("exact", exact), ("near", near)):
        across = [p for p in pairs if subjects[p[0]] != subjects[p[1]]]
        listed = sorted(pairs, key=lambda p: (subjects[p[0]] == subjects[p[1]], p))[:LISTED]
        assert got[f"duplicates_{kind}_count"] == len(pairs)
        assert got[f"duplicates_{kind}_across_subjects"] == len(across)
        assert got[f"duplicates_{kind}_masks_differ"] == sum(differ(i, j, kind == "exact")
                                                             for i, j in pairs)
        assert got[f"duplicates_{kind}"] == [[f"f{i:03d}", f"f{j:03d}"] for i, j in listed]


def test_the_split_check_counts_and_names_the_pairs_the_full_matrix_finds() -> None:
    """Pins training's split check on the same kind of set: the counts of pairs on two
    sides (identical, near, with a training frame), the subject pairs most often so
    (ties: the first met), and the first pairs named (a training frame's first)."""
    images, _, subjects = _scans(300, 5, seed=1)
    names = tuple(f"f{k:03d}" for k in range(len(images)))
    arrays = SimpleNamespace(
        names=names, subjects=tuple(subjects),
        pixels=np.stack([np.frombuffer(digest(im), np.uint8) for im in images]),
        thumbs=np.stack([unit_thumbnail(im) for im in images]))
    side = np.random.default_rng(2).integers(-1, 3, len(images))     # -1: on no side
    sides = {"train": np.flatnonzero(side == 0), "validation": np.flatnonzero(side == 1),
             "test": np.flatnonzero(side == 2)}
    copies = duplicates_across_split(arrays, sides)
    exact, near = _oracle_pairs(images)
    cross = [(i, j, sign) for pairs, sign in ((exact, "="), (near, "~")) for i, j in pairs
             if side[i] >= 0 and side[j] >= 0 and side[i] != side[j]]
    cross.sort(key=lambda p: min(side[p[0]], side[p[1]]) != 0)
    trained = sum(min(side[i], side[j]) == 0 for i, j, _ in cross)
    assert copies is not None and trained > 1000
    assert (copies.identical, copies.near, copies.trained) == (
        sum(s == "=" for *_, s in cross), sum(s == "~" for *_, s in cross), trained)
    tally = Counter(tuple(sorted((subjects[i], subjects[j]))) for i, j, _ in cross)
    said = ", ".join(f"{a} and {b}" for (a, b), _ in tally.most_common(3))
    side_names = list(sides)
    named = ", ".join(f"{names[i]} ({side_names[side[i]]}) {s} {names[j]} "
                      f"({side_names[side[j]]})" for i, j, s in cross[:3])
    assert f"under two subjects ({said}, ...): {named}, ...;" in str(copies), str(copies)


def test_the_near_pairs_of_a_long_loop_are_counted_without_being_kept() -> None:
    """A cine loop's frames are all near duplicates of each other, n (n - 1) / 2 pairs: each
    was kept (16 bytes a pair in the result, ~46 at peak; a 20k-frame loop, 2e8 pairs: ~9 GB
    for inspect and for training's split check). They are counted block by block and the
    first LISTED kept: the peak (4000 frames, 8 million pairs: 330 MB before) stays under
    half the pairs' 16 bytes."""
    rng = np.random.default_rng(0)
    base = rng.random(THUMB * THUMB).astype(np.float32)
    n = 4000
    frames = _Frames(names=[f"f{k:04d}" for k in range(n)], subjects=["a"] * n,
                     pixels=[k.to_bytes(4, "little") for k in range(n)],
                     masks=[None] * n)
    for _ in range(n):
        t = base + rng.random(base.shape, dtype=np.float32) * 0.01
        t -= t.mean()
        frames.thumbs.append(t / np.linalg.norm(t))
    tracemalloc.start()
    try:
        got = duplicate_summary(frames)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got["duplicates_near_count"] == n * (n - 1) // 2
    assert got["duplicates_near_across_subjects"] == 0
    assert got["duplicates_near"][:2] == [["f0000", "f0001"], ["f0000", "f0002"]]
    assert len(got["duplicates_near"]) == LISTED
    assert peak < 8 * n * (n - 1) // 2, f"{peak / 1e6:.0f} MB at peak"


def test_the_split_check_of_a_loop_of_one_frame_subjects_keeps_what_it_names(
        monkeypatch) -> None:
    """A cine loop read with each frame its own subject (no SUBJECT_FRAME names) puts every
    near pair across the split under its own subject pair: the tally kept each (~113 bytes
    a pair at peak: 659 MB at 5000 frames, ~10 GB at 20k). The warning names 3 subject
    pairs: with the search's batches made small (memory a batch), the peak stays far under
    8 bytes a pair on two sides, and what it says matches the brute-force reading (every
    subject pair once: the first met, a training frame's first, by index)."""
    monkeypatch.setattr(duplicates, "BLOCK", 64)
    monkeypatch.setattr(duplicates, "PAIRS", 1 << 13)
    rng = np.random.default_rng(0)
    base = rng.random(THUMB * THUMB).astype(np.float32)
    n = 4000
    thumbs = []
    for _ in range(n):
        t = base + rng.random(base.shape, dtype=np.float32) * 0.01
        t -= t.mean()
        thumbs.append(t / np.linalg.norm(t))
    names = tuple(f"f{k:04d}" for k in range(n))
    arrays = SimpleNamespace(
        names=names, subjects=names, thumbs=np.stack(thumbs),
        pixels=np.stack([np.frombuffer(k.to_bytes(32, "little"), np.uint8) for k in range(n)]))
    side = rng.choice(3, n, p=[0.7, 0.15, 0.15])
    sides = {"train": np.flatnonzero(side == 0), "validation": np.flatnonzero(side == 1),
             "test": np.flatnonzero(side == 2)}
    sizes = [len(v) for v in sides.values()]
    cross = sizes[0] * (sizes[1] + sizes[2]) + sizes[1] * sizes[2]
    tracemalloc.start()
    try:
        copies = duplicates_across_split(arrays, sides)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert copies is not None
    assert (copies.identical, copies.near, copies.trained) == (
        0, cross, sizes[0] * (sizes[1] + sizes[2]))
    first = []                          # the first 3 pairs with a training frame, by index
    for i in range(n):
        j = np.arange(i + 1, n)
        j = j[(side[j] != side[i]) & (np.minimum(side[j], side[i]) == 0)]
        first += [(i, int(k)) for k in j[:3 - len(first)]]
        if len(first) == 3:
            break
    side_names = list(sides)
    said = ", ".join(f"{names[i]} and {names[j]}" for i, j in first)
    named = ", ".join(f"{names[i]} ({side_names[side[i]]}) ~ {names[j]} "
                      f"({side_names[side[j]]})" for i, j in first)
    assert f"under two subjects ({said}, ...): {named}, ...;" in str(copies), str(copies)
    assert peak < 8 * cross, f"{peak / 1e6:.0f} MB at peak for {cross} pairs"
