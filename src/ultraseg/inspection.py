"""``ultraseg inspect``: decode every sample of a dataset, validate it and summarise it."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .data import union_note
from .errors import DataError
from .io import scan_dataset, select_label, split_frames

log = logging.getLogger(__name__)


def inspect_dataset(path: str | Path, layout: str = "auto", subject_pattern: str | None = None,
                    label: int | None = None) -> tuple[dict[str, Any], list[DataError]]:
    """Summary of a dataset and every problem found in it (structural and per file).

    Sizes are ``[width, height]``; min, median and max are taken per dimension.
    ``foreground_fraction_mean`` is the mean over labelled frames of the mask's share of the frame.
    An unlabelled cine loop counts its frames, as ``predict`` takes them
    (:func:`ultraseg.io.split_frames`); a labelled one is a problem, as in training.
    """
    ds, problems = scan_dataset(path, layout, subject_pattern)
    widths, heights, fractions = [], [], []
    empty = 0
    labels: Counter[int] = Counter()
    classes: Counter[str] = Counter()
    pairs = unlabelled = 0
    subjects: set[str] = set()
    unlabelled_subjects: set[str] = set()
    for s in (frame for sample in ds.samples for frame in split_frames(sample)):
        try:
            image, mask = s.load()
        except DataError as e:
            problems.append(e)
            continue
        widths.append(image.shape[1])
        heights.append(image.shape[0])
        if mask is None:
            unlabelled += 1
            unlabelled_subjects.add(s.subject)
            continue
        pairs += 1
        subjects.add(s.subject)
        if "class" in s.meta:
            classes[s.meta["class"]] += 1
        labels.update(int(v) for v in np.unique(mask) if v)
        fg = select_label(mask, label)
        fractions.append(float(fg.mean()))
        empty += int(not fg.any())
    if label is not None and pairs and label not in labels:
        problems.append(DataError(f"label {label} occurs in no mask; labels present: "
                                  f"{sorted(labels) or 'none'}", ds.root))

    def dims(fn: Any) -> list[int] | None:
        return [int(fn(widths)), int(fn(heights))] if widths else None

    report: dict[str, Any] = {
        "path": str(ds.root),
        "layout": ds.layout,
        "pairs": pairs,
        "unlabelled": unlabelled,
        "subjects": len(subjects) if pairs else len(unlabelled_subjects),
        "empty_masks": empty,
        "foreground_fraction_mean": float(np.mean(fractions)) if fractions else None,
        "image_size_min": dims(np.min),
        "image_size_median": dims(np.median),
        "image_size_max": dims(np.max),
        "labels": sorted(labels),
        # what training does with several labels and no --label (None: no question)
        "labels_note": union_note(sorted(labels), label),
        "classes": dict(sorted(classes.items())),
        "problems": len(problems),
    }
    return report, problems


def failed_report(path: str | Path, problem_lines: list[str]) -> dict[str, Any]:
    """The report of a folder that could not be read at all (missing, empty, no layout found):
    every key :func:`inspect_dataset` gives, nothing found, ``layout`` None, and the lines that
    say why, so a script reads one shape either way."""
    return {"path": str(path), "layout": None, "pairs": 0, "unlabelled": 0, "subjects": 0,
            "empty_masks": 0, "foreground_fraction_mean": None, "image_size_min": None,
            "image_size_median": None, "image_size_max": None, "labels": [], "labels_note": None,
            "classes": {},
            "problems": len(problem_lines), "problem_lines": problem_lines}


def format_report(report: dict[str, Any]) -> str:
    """Human-readable lines for the CLI."""
    fg = report["foreground_fraction_mean"]
    lines = [
        f"dataset     {report['path']}  (layout: {report['layout']})",
        f"pairs       {report['pairs']}   unlabelled images: {report['unlabelled']}",
        f"subjects    {report['subjects']}",
        f"empty masks {report['empty_masks']}",
        f"foreground  {'n/a' if fg is None else f'{100 * fg:.2f} % of the frame on average'}",
    ]
    if report["image_size_min"]:
        lines.append("image size  min {} median {} max {} (width x height)".format(
            *("x".join(map(str, report[k])) for k in
              ("image_size_min", "image_size_median", "image_size_max"))))
    if report["labels"]:
        note = report.get("labels_note")
        lines.append(f"labels      {report['labels']}" + (f"   ({note})" if note else ""))
    if report["classes"]:
        lines.append("classes     " + ", ".join(f"{k}: {v}" for k, v in report["classes"].items()))
    lines.append(f"problems    {report['problems']}")
    return "\n".join(lines)
