"""Held-out frames with a near-copy on the training side, and the figures without them.

BUSI names no patients, so ``ultraseg`` makes each image its own subject; the set holds
near-duplicate images (the same lesion scanned twice, crops of one scan), and a held-out frame
whose near-copy trained the model flatters the held-out figure. This script finds, for a run's
held-out ('test') frames, the most similar image among its training and validation frames
(Pearson correlation of 96 x 96 grey thumbnails), and scores the run's evaluation
(``per_image.csv`` of ``ultraseg evaluate --split RUN/split.json --subset test --out EVAL``)
on the frames with and without a near-copy (correlation >= ``--threshold``, 0.95).

    python benchmarks/near_duplicates.py DATA RUN EVAL [--threshold 0.95] [--out FILE.json]

Prints one JSON object as its last line.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ultraseg.errors import UltrasegError
from ultraseg.io import open_dataset, read_image

THUMB = 96


def thumbnail(path: Path) -> np.ndarray:
    """A 96 x 96 grey thumbnail, zero mean and unit norm (so a dot product is a correlation)."""
    im = Image.fromarray(read_image(path)).resize((THUMB, THUMB), Image.BILINEAR)
    x = np.asarray(im, np.float64).ravel()
    x = x - x.mean()
    n = np.linalg.norm(x)
    return x / n if n else x


def nearest(held: list[str], others: list[str], paths: dict[str, Path]
            ) -> dict[str, tuple[str, float]]:
    """For each held-out name: (the most correlated other frame, its correlation)."""
    a = np.stack([thumbnail(paths[n]) for n in held])
    b = np.stack([thumbnail(paths[n]) for n in others])
    corr = a @ b.T
    best = corr.argmax(axis=1)
    return {n: (others[j], float(corr[i, j])) for i, (n, j) in enumerate(zip(held, best))}


def scores(rows: list[dict[str, str]]) -> dict[str, float | int | None]:
    lesion = [float(r["dice"]) for r in rows if r["truth_empty"] == "False"]
    normal = [r for r in rows if r["truth_empty"] == "True"]
    return {"frames": len(rows), "lesion_frames": len(lesion),
            "dice_lesion": round(float(np.mean(lesion)), 4) if lesion else None,
            "normal_frames": len(normal),
            "normal_empty_rate": (round(float(np.mean([r["pred_empty"] == "True"
                                                       for r in normal])), 4)
                                  if normal else None)}


def read_inputs(run: Path, evaluation: Path) -> tuple[dict, dict[str, dict[str, str]]]:
    """The run's split and the evaluation's rows by frame name; exits with one line where
    either cannot be read."""
    try:
        split = json.loads((run / "split.json").read_text())
        with open(evaluation / "per_image.csv", newline="") as f:
            table = csv.DictReader(f)
            if not {"name", "dice", "truth_empty", "pred_empty"} <= set(table.fieldnames or ()):
                sys.exit(f"error: {evaluation}/per_image.csv is not ultraseg evaluate's "
                         f"per-image table")
            rows = {r["name"]: r for r in table}
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    if not all(isinstance(split, dict) and isinstance(split.get(k), list)
               for k in ("train", "val", "test")):
        sys.exit(f"error: {run}/split.json is not a run's split (train, val, test lists)")
    return split, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data")
    p.add_argument("run", help="the run folder (its split.json)")
    p.add_argument("eval", help="the folder evaluate --out wrote (its per_image.csv)")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--out", help="also write the JSON object here")
    a = p.parse_args(argv)
    if not 0 < a.threshold <= 1:
        p.error(f"--threshold must be a correlation in (0, 1], got {a.threshold}")
    split, rows = read_inputs(Path(a.run), Path(a.eval))
    try:
        paths = {s.name: s.image_path for s in open_dataset(a.data).labelled}
    except UltrasegError as e:
        sys.exit(f"error: {e}")
    held, others = split["test"], split["train"] + split["val"]
    unknown = sorted(set(held + others) - set(paths))
    if unknown:
        sys.exit(f"error: {a.run}/split.json names {len(unknown)} frames {a.data} does not hold "
                 f"(first: {unknown[0]}): is it the run's dataset?")
    if not held:
        sys.exit(f"error: {a.run}/split.json holds no frames out: train with --test-fraction")
    near = nearest(held, others, paths)
    missing = sorted(set(held) - set(rows))
    if missing:
        sys.exit(f"{a.eval}/per_image.csv lacks {len(missing)} held-out frames "
                 f"(first: {missing[0]}): evaluate with --subset test")
    copied = [n for n in held if near[n][1] >= a.threshold]
    result = {
        "data": str(a.data), "run": str(a.run), "threshold": a.threshold,
        "held_out": len(held), "with_near_copy": len(copied),
        "all": scores([rows[n] for n in held]),
        "with_near_copy_scores": scores([rows[n] for n in copied]),
        "without_near_copy": scores([rows[n] for n in held if n not in copied]),
        "pairs": {n: [near[n][0], round(near[n][1], 4)] for n in copied},
    }
    text = json.dumps(result)
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
