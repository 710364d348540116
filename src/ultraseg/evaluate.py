"""Per-image evaluation of a model on a labelled dataset, at each image's original resolution."""
from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import __version__
from .config import PostprocessConfig, check_flag, names_read
from .errors import (DataError, UltrasegError, command_line, frame_too_large, is_out_of_memory,
                     shell_word)
from .data import MaskTally, _first, read_split_doc
from .fileio import (atomic_write_texts, cannot_write_in, csv_text, failure_reason, json_text,
                     output_lock, read_json)
from .io import (Dataset, Sample, dataset_hint, inspect_command, open_dataset, scan_dataset,
                 select_label, white_for, with_white)
from .io.dicom import PIXEL_SIZE_NOT_TAKEN
from .io.grey import counting_colour, said_once
from .io.images import header_shape
from .io.masks import LabelTally
from .logs import quiet
from .measure import (PixelSizes, check_pixel_size, frame_boundary_offset, frame_pixel_size,
                      hc_error_figures, hc_interval_words, measure,
                      warn_too_small_for_an_ellipse)
from .metrics import EMPTY_RULE, few_subjects_words, image_metrics, interval_label, summarise
from .postprocess import apply as apply_postprocess
from .predict import FrameOutOfMemory, Predictor, as_predictor
from .preprocess import PAD_TO_SQUARE_REMEDY, ThinFrames, seen_region

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("n", "dice_mean", "dice_nonempty_mean", "iou_mean", "hd95_median", "hd95_n",
                "empty_correct_rate")

#: The summary's figures in mm: always there, None where they do not apply (no frame with a
#: pixel size: the HD95 ones; no frame with a reference circumference and a pixel size: the
#: head-circumference ones), so that a reader finds the same keys in every summary.json.
MM_KEYS = ("hd95_mm_median", "hd95_mm_n", "hc_mae_mm", "hc_bias_mm", "hc_n", "hc_missed",
           "hc_touches_edge", "hc_mae_mm_ci95", "hc_mae_mm_ci95_method", "hc_n_subjects")

#: The figures of the summary's ``raw`` block: those per_image.csv's ``dice_raw`` (with
#: ``truth_empty``) gives again.
RAW_KEYS = ("dice_mean", "dice_nonempty_mean")

#: The figures of each image class in the summary's ``by_class`` block (:func:`by_class`).
#: (the intervals and HD95 as the all-frame summary's: None where a class has no subjects to
#: resample, or no frame with a structure in truth and prediction; ``n_subjects``, appended,
#: labels its printed interval as the all-frame one's)
CLASS_KEYS = ("n", "dice_mean", "dice_nonempty_mean", "iou_mean", "empty_correct_rate",
              "dice_mean_ci95", "dice_nonempty_mean_ci95", "hd95_median", "hd95_n",
              "n_subjects")


def select_samples(samples: Sequence[Sample], split_file: str | Path | None,
                   subset: str | None = None) -> list[Sample]:
    """The samples named by ``subset`` ('train' | 'val' | 'test'; None: 'val') of a run's
    ``split.json``, or all of them without a split file. A ``subset`` without a split file is
    a user error: it would score every frame, training frames too."""
    return _select_samples(samples, split_file, subset)[0]


def _select_samples(samples: Sequence[Sample], split_file: str | Path | None,
                    subset: str | None, dataset: str | Path | None = None
                    ) -> tuple[list[Sample], dict[str, Any] | None]:
    """:func:`select_samples`, and the split it read (its names as this locale has them).
    A side naming frames ``samples`` lacks (those of ``dataset``, named in the error) is
    refused, naming the first of them: scoring the others would give another set's figures.
    A split without a ``test`` side (written before there was one, or null) holds none out."""
    if split_file is None:
        if subset is not None:
            raise UltrasegError(f"subset {subset!r} picks a side of a run's split: give the "
                                "split too (--split RUN/split.json; in Python, split_file=)")
        return list(samples), None
    subset = subset or "val"
    try:
        doc = read_split_doc(split_file)
        side = doc.get(subset)
        if subset == "test" and side is None:      # (an older split, or null: none held out)
            side = []
        if not isinstance(side, list) or not all(isinstance(n, str) for n in side):
            raise ValueError("not a split.json: its sides are lists of frame names")
        names = set(side)
    except (OSError, ValueError, KeyError) as e:
        raise UltrasegError(f"cannot read the '{subset}' side of the split ({e})", split_file) from e
    if not names:  # e.g. 'val' of a run trained with --val-fraction 0
        hint = (" (the run held no frames out: train with --test-fraction, e.g. 0.2)"
                if subset == "test" else "")
        raise UltrasegError(f"the split's '{subset}' side is empty{hint}; choose another side "
                            "(--subset; in Python, subset=)", split_file)
    chosen = [s for s in samples if s.name in names]
    have = {s.name for s in chosen}
    missing = [n for n in dict.fromkeys(side) if n not in have]
    if missing:
        where = f" {dataset}" if dataset is not None else ""
        first = _first(missing)
        if len(missing) == len(names):
            raise UltrasegError(f"none of the {len(names)} frames of its '{subset}' side is a "
                                f"labelled frame of the dataset{where} ({first}): a split of "
                                "another dataset?", split_file)
        raise UltrasegError(f"{len(missing)} of the {len(names)} frames of its '{subset}' side "
                            f"are not labelled frames of the dataset{where} ({first}): renamed, "
                            "removed or their masks missing since the split was drawn? The "
                            "side is scored whole or not at all", split_file)
    return chosen, doc


def _run_file(predictor: Predictor, name: str) -> Path | None:
    """The file ``name`` (``config.json``, ``split.json``) of the run folder the model lies in,
    where it is there."""
    path = Path(predictor.source).parent / name if predictor.source else None
    return path if path is not None and path.is_file() else None


def _run_records(predictor: Predictor) -> list[Any]:
    """The records of the model's training run: its checkpoint's, then the config.json of the
    run folder it lies in where there is one (an exported .onnx keeps no record of its own)."""
    records = [predictor.meta.get("run")]
    config = _run_file(predictor, "config.json")
    if config is not None:
        with contextlib.suppress(OSError, ValueError):
            records.append(read_json(config))
    return records


def _trained_on(predictor: Predictor, records: list[Any] | None = None) -> list[str]:
    """The data folders the model may have been trained on: its checkpoint's record and the
    config.json of the run folder it lies in (an exported .onnx keeps no paths; where the data
    moved, the README has the user set ``data.path`` there), each once. ``records``: its
    :func:`_run_records` where the caller read them (None: read here)."""
    records = _run_records(predictor) if records is None else records
    found = [_data_path(r) for r in records]
    return list(dict.fromkeys(p for p in found if p))


def _recorded_pattern(records: list[Any]) -> str | None:
    """The ``--subject-pattern`` the model's run was trained with: as the first of its
    ``records`` (:func:`_run_records`: the checkpoint's, else the config.json beside the
    model) that records its data gives it; None where it gives none."""
    for record in records:
        data = record.get("data") if isinstance(record, dict) else None
        if isinstance(data, dict):
            pattern = data.get("subject_pattern")
            return pattern if isinstance(pattern, str) and pattern else None
    return None


def _open_scored(records: list[Any], data: str | Path, layout: str,
                 subject_pattern: str | None, fill_outlines: bool) -> tuple[Dataset, str | None]:
    """The dataset :func:`evaluate` scores, and the ``--subject-pattern`` that gave its
    subjects (which the interval resamples): ``subject_pattern`` where one is given; else the
    one the model's run was trained with (:func:`_recorded_pattern`, from its ``records``:
    :func:`_run_records`), so that a run's split
    scored again has the run's subjects, where it fits a name of ``data`` (data it fits none
    of, another set's, keeps its layout's subjects, as with none); else None."""
    if subject_pattern is not None:
        return open_dataset(data, layout, subject_pattern, fill_outlines), subject_pattern
    pattern = _recorded_pattern(records)
    # (one that fits none of its names, another set's, is said at INFO and not used)
    ds = open_dataset(data, layout, pattern, fill_outlines, pattern_required=False)
    if ds.subject_pattern is not None:
        log.info("%s: subjects by the --subject-pattern %s the model's run was trained with",
                 data, shell_word(ds.subject_pattern))
    return ds, ds.subject_pattern


def _data_path(record: Any) -> str | None:
    """The ``data.path`` of a run's record (its checkpoint's, its config.json) as this locale
    names the folder (:func:`ultraseg.config.names_read`), or None where it records none."""
    try:            # (stored as its bytes read as UTF-8)
        data = names_read(record).get("data") if isinstance(record, dict) else None
    except UltrasegError:
        return None
    path = data.get("path") if isinstance(data, dict) else None
    return path if isinstance(path, str) else None


def _related(trained_on: str, root: Path) -> tuple[Path, Path] | None:
    """(trained_on, root) resolved where one is, holds or lies in the other; else None."""
    try:
        a, b = Path(trained_on).resolve(), Path(root).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return (a, b) if a == b or a in b.parents or b in a.parents else None


def _warn_if_trained_on(predictor: Predictor, root: Path, samples: Sequence[Sample],
                        records: list[Any]) -> None:
    """Say so where the frames scored include frames the model was trained on and no split
    was given: ``root`` is its training folder (every frame is then scored, its training
    frames too), or holds it or lies in it and shares frames with it. The figure then says how
    well the model learnt them, not how it does on new frames. ``records``: the run's
    (:func:`_run_records`), as the caller read them."""
    split = _run_file(predictor, "split.json")
    for trained_on in _trained_on(predictor, records):
        if _warn_if_trained_on_folder(predictor, trained_on, root, samples, split):
            return


def _split_advice(split: Path | None, folder: Path) -> str:
    """What scores the frames of ``folder`` the model did not train on, by the sides of its
    run's split (``split``; None: not found): a command naming only the sides the split
    holds, or, where it holds none (a run without validation or held-out frames), that none
    does."""
    doc = _split_doc(split) if split is not None else None
    command = "`" + command_line("ultraseg", "evaluate", "MODEL", Path(folder),
                                 ("--split", split or "RUN/split.json"))
    python = " (in Python, split_file= and subset=)"
    val, test = (True, True) if doc is None else (bool(doc.get("val")), bool(doc.get("test")))
    if val and test:
        return f"{command}` scores the validation side, `--subset test` the held-out one{python}"
    if val:
        return f"{command}` scores the validation side (the run held no frames out){python}"
    if test:
        return (f"{command} --subset test` scores the held-out side (the run kept no validation "
                f"side){python}")
    return (f"no split scores frames it did not train on: its split, {split}, has no validation "
            "or held-out side")


def _warn_if_trained_on_folder(predictor: Predictor, trained_on: str, root: Path,
                               samples: Sequence[Sample], split: Path | None) -> bool:
    """:func:`_warn_if_trained_on` for one folder the model may have been trained on;
    whether it warned."""
    pair = _related(trained_on, root)
    if pair is None:
        return False
    a, b = pair
    if a == b:
        log.warning("%s is the data the model was trained on: without a split every frame is "
                    "scored, its training frames too; %s", root, _split_advice(split, a))
        return True
    shared = len(_shared_frames(predictor, a, samples))
    if shared:
        log.warning("%d of the %d frames scored are frames of %s, the data the model was "
                    "trained on, training frames among them; %s", shared, len(samples), a,
                    _split_advice(split, a))
    return bool(shared)


def _shared_frames(predictor: Predictor, trained_on: Path, samples: Sequence[Sample]
                   ) -> list[str]:
    """The names, as the training run named them, of the ``samples`` that are labelled frames
    of ``trained_on`` (the same files), the folder read as the model's training run read it."""
    run = (predictor.meta.get("run") or {}).get("data") or {}
    try:        # (the training folder as it was read; what it says is not about this data)
        with quiet("ultraseg.io"):
            ds, _ = scan_dataset(trained_on, run.get("layout") or "auto",
                                 run.get("subject_pattern"))
    except UltrasegError:
        return []
    name_of = {os.path.realpath(s.image_path): s.name for s in ds.labelled}
    return [name_of[p] for p in (os.path.realpath(s.image_path) for s in samples)
            if p in name_of]


def warn_if_measuring_trained_frames(predictor: Predictor, samples: Sequence[Sample]) -> None:
    """``measure``'s check where its frames carry reference head circumferences: the error
    over them is the model's on new frames only where none is a frame it was trained on, and
    measure takes no split. Say how many are (by the run's ``split.json`` where it lies
    beside the model; else the frames of its training folder, any of which may have
    trained), and what gives the error on held-out frames."""
    split = _run_file(predictor, "split.json")
    doc = _split_doc(split) if split is not None else None
    for trained_on in _trained_on(predictor):
        try:
            folder = Path(trained_on).resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        shared = _shared_frames(predictor, folder, samples) if folder.is_dir() else []
        if doc is not None:
            trained = set(doc.get("train") or [])
            n = sum(name in trained for name in shared)
            what = f"frames the model was trained on (its split, {split})"
        else:
            n = len(shared)
            what = (f"frames of {folder}, the data the model was trained on (no split.json "
                    "beside the model tells which trained)")
        if n:
            log.warning("%d of the %d frames measured are %s: their head-circumference error "
                        "is not the model's on new frames; %s", n, len(samples), what,
                        _split_advice(split, folder))
            return
        if shared:
            return


def _split_doc(path: str | Path) -> dict[str, Any] | None:
    """A split.json's contents (its names as this locale names the frames), or None where it
    cannot be read as one."""
    try:
        return _a_split(read_split_doc(path))
    except (OSError, ValueError, UltrasegError):
        return None


def _a_split(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """``doc`` (:func:`ultraseg.data.read_split_doc`'s) where it has a training side."""
    return doc if doc is not None and isinstance(doc.get("train"), list) else None


def _warn_if_not_its_split(predictor: Predictor, root: Path, split_file: str | Path,
                           doc: dict[str, Any], subset: str | None,
                           samples: Sequence[Sample], records: list[Any]) -> None:
    """Say so where ``split_file`` is not the model's own split and the side scored may hold
    frames it trained on (another run's split.json, e.g. of another --split-seed): the
    split.json of the run folder the model lies in names its training frames; without one,
    the split seed and fractions its checkpoint records are compared with the file's. The
    frames are scored all the same: a user may mean it. ``records``: the run's
    (:func:`_run_records`), as the caller read them."""
    own = _run_file(predictor, "split.json")
    # (its own split.json given: the file read once, ``doc``)
    own_doc = (None if own is None else doc if _same_file(own, split_file) else
               _split_doc(own))
    if own is not None and own_doc:
        if own_doc["train"] == doc.get("train"):     # its own (or a copy): the side is chosen
            return
        trained = {n for n in own_doc["train"] if isinstance(n, str)}
        shared = sum(s.name in trained for s in samples)
        if shared and _may_be_its_data(predictor, root, records):   # (names alone: 1.png, case001)
            side = ("its own held-out side with --subset test" if subset == "test" else
                    "its own validation side")
            log.warning("%d of the %d frames scored (the '%s' side of %s) are frames the model "
                        "trained on (the 'train' side of %s, its run's split): `--split %s` "
                        "scores %s", shared, len(samples), subset or "val", split_file, own, own,
                        side)
        return
    differs = _split_differences(predictor, doc)
    if differs and _may_be_its_data(predictor, root, records):
        log.warning("%s was drawn with %s, the model's run with %s: its '%s' side may hold "
                    "frames the model trained on (its run's own split.json scores its "
                    "validation side)", split_file, ", ".join(d[0] for d in differs),
                    ", ".join(d[1] for d in differs), subset or "val")


def _warn_if_split_of_other_data(predictor: Predictor, root: Path, split_file: str | Path,
                                 subset: str | None, records: list[Any]) -> None:
    """Say so where ``split_file`` was drawn over another dataset than ``root`` whose frame
    names ``root`` shares (1_1, case001: the side's names were all found): the run folder it
    lies in records its data (its config.json; where the model lies there too, the run's
    ``records``, :func:`_run_records`, as the caller read them), and every folder recorded is
    there and is neither ``root``, nor holds it, nor lies in it. Scored all the same: ``root``
    may be a copy of it."""
    folder = Path(split_file).parent
    model = Path(predictor.source).parent if predictor.source else None
    if model is not None and _same_file(model, folder):
        paths = _trained_on(predictor, records)
    else:
        config = folder / "config.json"
        record = None
        if config.is_file():
            with contextlib.suppress(OSError, ValueError):
                record = read_json(config)
        paths = [p for p in [_data_path(record)] if p]
    if paths and all(Path(p).is_dir() and _related(p, root) is None for p in paths):
        log.warning("%s was drawn over %s (as its run folder records it), not %s: the frames of "
                    "its '%s' side found here by name may be other frames, and the figures "
                    "another set's (where %s is a copy of that data, they are the side's)",
                    split_file, paths[0], root, subset or "val", root)


def _same_file(a: str | Path, b: str | Path) -> bool:
    """Whether paths ``a`` and ``b`` name one file."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _warn_if_test_side_left(split_file: str | Path, doc: dict[str, Any], n_val: int) -> None:
    """Say so where ``split_file`` holds frames out for testing and no side was asked for: its
    validation side is scored (``n_val`` frames), which chose the epoch and the
    post-processing, so its figures read better than new frames' would."""
    test = doc.get("test")
    if isinstance(test, list) and test:
        log.warning("%s holds %d frames out for testing, but without --subset its validation "
                    "side is scored (%d frames, which chose the epoch and the post-processing: "
                    "an optimistic estimate): --subset test scores the held-out frames (in "
                    "Python, subset='test')", split_file, len(test), n_val)


#: What each side of a run's split is, as the printed summary names it.
SIDES = {"val": "validation side of {}: it chose the epoch and post-processing, an optimistic "
                "estimate",
         "test": "held-out test side of {}: not used in training or selection",
         "train": "training side of {}: the model learnt these frames"}


def _split_differences(predictor: Predictor, doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(the split's, the run's) for each of split seed, validation fraction and held-out
    side where a split.json ``doc`` and the run the checkpoint records differ."""
    t = (predictor.meta.get("run") or {}).get("train")
    if not isinstance(t, dict) or not t:
        return []
    seed = t.get("seed") if t.get("split_seed") is None else t.get("split_seed")
    differs = []
    if seed is not None and doc.get("seed") is not None and doc["seed"] != seed:
        differs.append((f"split seed {doc['seed']}", f"split seed {seed}"))
    fraction, theirs = t.get("val_fraction"), doc.get("val_fraction")
    if (isinstance(fraction, (int, float)) and isinstance(theirs, (int, float))
            and not math.isclose(fraction, theirs)):
        differs.append((f"val fraction {theirs:g}", f"val fraction {fraction:g}"))
    held_out = t.get("test_fraction")
    if isinstance(held_out, (int, float)) and isinstance(doc.get("test"), list) \
            and bool(doc["test"]) != (held_out > 0):
        differs.append(("a held-out side" if doc["test"] else "no held-out side",
                        f"test fraction {held_out:g}"))
    return differs


def _may_be_its_data(predictor: Predictor, root: Path, records: list[Any]) -> bool:
    """False only where every data folder the model's run records (``records``:
    :func:`_run_records`) exists and is another dataset than ``root`` (neither it, nor holding
    it, nor in it)."""
    paths = _trained_on(predictor, records)
    return not paths or any(_related(p, root) is not None or not Path(p).is_dir()
                            for p in paths)


def check_out_folder(out: str | Path) -> Path:
    """Refuse, before any work, an ``out`` that cannot be a folder to write in: a file, a path
    under a file, or one in a folder that cannot be written. Creates nothing (an evaluation
    stopped by bad data leaves no empty folder behind)."""
    out = Path(out)
    first = out
    while not first.exists() and first.parent != first:
        first = first.parent
    if first.exists() and not first.is_dir():
        raise UltrasegError("cannot create the output folder: a file of that name exists"
                            if first == out else f"cannot create the output folder: {first} "
                            "is a file", out)
    reason = cannot_write_in(first) if first.exists() else None
    if reason:
        raise UltrasegError(f"cannot write in the output folder ({reason})" if first == out
                            else f"cannot create the output folder ({reason} in {first})", out)
    return out


@said_once()
def evaluate(predictor: Predictor | str | Path, data: str | Path, layout: str = "auto",
             subject_pattern: str | None = None, split_file: str | Path | None = None,
             subset: str | None = None, out: str | Path | None = None,
             progress: Callable[[int, int], None] | None = None, label: int | None = None,
             pixel_size_mm: float | None = None, fill_outlines: bool | None = None,
             overrides: Mapping[str, Any] | None = None
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score ``predictor`` on every labelled frame of ``data``, or on the ``subset`` side
    ('train' | 'val' | 'test'; None: 'val') of a run's ``split_file``. Without a split, on the
    data the model was trained on (as its checkpoint, or the run folder of an exported model,
    records it), or on a folder holding or inside it that shares frames with it, a warning
    says that training frames are scored too; with a split that is not the model's own
    (another run's), a warning says where the side scored holds (or, without the run folder,
    may hold) frames it trained on.

    Returns (summary, rows). The summary has :data:`SUMMARY_KEYS` and :data:`MM_KEYS`
    (None where no frame has a pixel size, or a reference circumference) computed with the
    checkpoint's post-processing, and the Dice figures without its rules under ``raw``
    (:data:`RAW_KEYS`, from the rows' ``dice_raw``: the same probabilities, test-time
    augmented where the predictor is, at threshold 0.5, nothing removed), ``subset`` (the
    side of ``split_file`` scored; None without one) and ``split`` (``split_file``); where
    a split holds frames out for testing and ``subset`` is None, a warning says its
    validation side is scored. Rows carry per-image metrics, the ``image`` file, the areas
    ``pred_area_px`` (the whole mask scored) and ``truth_area_px`` and, where the frame's pixel
    size is known, measurements in mm of the largest region (and the error against a
    reference head circumference) with measure's ``touches_edge``, ``n_components`` and
    ``ellipse_method``.
    The summary also records what gave the figures (:func:`provenance`: the checkpoint with
    its sha256, the data folder and layout, the versions, the precision and device; no
    timestamp, so a second run writes the same bytes).
    With ``out``, writes ``per_image.csv`` and ``summary.json`` there, the folder held
    (:func:`~ultraseg.fileio.output_lock`) from before the scoring to the last file (an
    ``out`` that cannot be a folder, or that another command holds, is refused before any
    scoring; where the files cannot be written, the :class:`UltrasegError` carries (summary,
    rows) as its ``result``). ``subject_pattern`` gives the subjects the interval resamples;
    None: the one the model's run was trained with (:func:`_recorded_pattern`) where it fits
    a name of ``data``, else the layout's (the summary's ``subject_pattern`` says which).
    ``label`` picks the structure of a label mask to score against; None: the one the
    predictor was trained on (its own None: any non-zero label); one that no mask holds is
    refused (:class:`DataError`) once the frames are read. ``fill_outlines``: the masks are
    closed contours to fill (:func:`ultraseg.io.as_outline`); None: as the predictor was trained
    (``preprocess.fill_outlines``). ``predictor`` may also be the path of a checkpoint
    or an ``.onnx`` file (loaded with :func:`ultraseg.load`'s defaults). ``pixel_size_mm``:
    for frames whose dataset gives none (a table's or a DICOM header's wins, and a header's
    pixels that are not square are scored as they are: their height and width are the row's
    ``pixel_height_mm`` and ``pixel_width_mm``), as in :func:`ultraseg.measure_frames`; with
    it, HD95 and the measurements are also in mm. ``overrides``: the command line's options
    given (by name: ``raw``, ``threshold``, ``device``, ...), recorded as the summary's
    ``overrides``, as predict's and measure's settings record them (None from Python, where
    nothing says which were).
    """
    fill_outlines = check_flag("fill_outlines", fill_outlines, "as the predictor was trained")
    predictor = as_predictor(predictor)
    pixel_size_mm = check_pixel_size(pixel_size_mm)
    if out is not None:     # before the scoring, which may take long
        check_out_folder(out)
    # two evaluations into one folder would leave one's table beside the other's summary
    with output_lock(out, "evaluate") if out is not None else contextlib.nullcontext():
        return _evaluate(predictor, data, layout, subject_pattern, split_file, subset, out,
                         progress, label, pixel_size_mm, fill_outlines, overrides)


def _evaluate(predictor: Predictor, data: str | Path, layout: str, subject_pattern: str | None,
              split_file: str | Path | None, subset: str | None, out: str | Path | None,
              progress: Callable[[int, int], None] | None, label: int | None,
              pixel_size_mm: float | None, fill_outlines: bool | None,
              overrides: Mapping[str, Any] | None
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """:func:`evaluate` once its arguments are checked (and its ``out`` held)."""
    if fill_outlines is None:
        fill_outlines = predictor.preprocess.fill_outlines
    label = predictor.preprocess.label if label is None else label
    # (the run's own --subject-pattern where none is given, as label and fill_outlines)
    records = _run_records(predictor)       # (config.json read once)
    ds, subject_pattern = _open_scored(records, data, layout, subject_pattern, fill_outlines)
    # a black-and-white mask's white: label 1, or 255 in a set of label masks
    ds = with_white(ds, white_for(label, ds.labelled))
    record = provenance(predictor, ds)
    samples, doc = _select_samples(ds.labelled, split_file, subset, ds.root)
    if not samples:
        hint = dataset_hint(ds.root) if ds.layout == "images" else ""
        raise DataError(f"no labelled frames to evaluate{hint}", ds.root)
    if split_file is None:
        _warn_if_trained_on(predictor, ds.root, samples, records)
    else:
        split = _a_split(doc) or {}   # (the file read once)
        _warn_if_not_its_split(predictor, ds.root, split_file, split, subset, samples, records)
        _warn_if_split_of_other_data(predictor, ds.root, split_file, subset, records)
        if subset is None:
            _warn_if_test_side_left(split_file, split, len(samples))
    # the boundary offset, scaled to each frame (frame_boundary_offset)
    measure_meta = predictor.meta.get("measure") or {}
    rows: list[dict[str, Any]] = []
    raw_rows: list[dict[str, Any]] = []
    truths: list[np.ndarray] = []
    regions: list[tuple[int, int, int, int] | None] = []   # the part of each frame the net saw
    labels = LabelTally(label)         # the labels the masks hold (with a label to score)
    tally = [MaskTally()]              # what the truths look like (drawn contours?)
    # the frame whose own pixels are being worked on (decoded, post-processed, scored), for
    # memory that runs out there to name it: a frame larger than the machine holds
    at: list[int | None] = [None]
    thin = ThinFrames(predictor.preprocess)

    def decoded():
        for k, s in enumerate(samples):
            at[0] = k
            try:
                image, mask = s.load()
            except DataError as e:   # scores over some frames are no evaluation: stop here
                inspect = inspect_command(ds.root, layout, subject_pattern, label,
                                          fill_outlines)
                raise DataError(f"{e.message} (`{inspect}` lists every problem of the set at "
                                "once)", e.path) from e
            thin.add(s.image_path, image)
            truths.append(select_label(mask, label))
            tally[0] += MaskTally.of(truths[-1])
            regions.append(seen_region(image, predictor.preprocess)
                           if frame_pixel_size(s.meta, pixel_size_mm) else None)
            labels.add(mask, truths[-1])
            at[0] = None
            yield image

    sizes = PixelSizes(pixel_size_mm)
    try:
        with counting_colour() as colour:   # the frames in colour said in one line for all
            _score_frames(predictor, samples, decoded(), truths, regions, at, rows, raw_rows,
                          sizes, measure_meta, progress)
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        # (scores over some frames are no evaluation: it stops, as at an unreadable frame)
        index = e.index if isinstance(e, FrameOutOfMemory) else at[0]
        if index is None:       # the network's batch, not a frame's pixels
            raise
        shape = e.shape if isinstance(e, FrameOutOfMemory) else None
        raise frame_too_large(samples[index].image_path,
                              shape or header_shape(samples[index].image_path)) from e
    absent = labels.absent()
    if absent:  # every frame's truth empty: the figures would be a typo's, refused as train does
        raise DataError(f"label {label} occurs in none of the {labels.masks} masks (they hold "
                        f"labels {', '.join(map(str, absent))}): every frame would be scored "
                        f"as empty; --label K scores against another", ds.root)
    thin.warn(log, PAD_TO_SQUARE_REMEDY)
    colour.warn(log)
    sizes.warn(log)
    warn_too_small_for_an_ellipse(sum(1 for r in rows if r.get("area_mm2")
                                      and r.get("hc_pred_mm") is None), measure_meta, log)
    summary = {k: v for k, v in summarise(rows).items()}
    summary = {**{k: summary.get(k) for k in SUMMARY_KEYS}, **summary}
    summary["raw"] = {k: v for k, v in summarise(raw_rows).items() if k in RAW_KEYS}
    summary["postprocess"] = predictor.applied
    hc = hc_error_figures(rows)
    if hc["with_reference"]:
        # frames whose head the model did not find have no error: the MAE is over the others,
        # and the summary says how many it leaves out; of the frames in the error, those whose
        # head touches the frame's edge (cut by it); the MAE's interval, its subjects
        # resampled as the Dice's (HC18's target is on it)
        summary.update(hc_mae_mm=hc["mae"], hc_bias_mm=hc["bias"], hc_n=hc["n"],
                       hc_missed=hc["missed"], hc_touches_edge=hc["touches_edge"],
                       **hc["interval"])
    for k in MM_KEYS:       # (no frame with a pixel size, or a reference): the keys there, null
        summary.setdefault(k, None)
    summary["label"] = label
    # what was scored: the truth filled (as asked, or by a layout that always fills its
    # outlines, hc18's, whatever the setting) or as drawn
    summary["fill_outlines"] = fill_outlines or any(s.mask_kind == "outline" for s in samples)
    summary["subject_pattern"] = subject_pattern      # what gave the subjects resampled
    # which frames the figures are over: a side of a run's split (None: every labelled frame)
    summary["subset"] = None if split_file is None else subset or "val"
    summary["split"] = None if split_file is None else str(split_file)
    note = tally[0].outline_note()
    if note:
        log.warning("%s: %s", ds.root, note)
    summary.update(record)
    summary["overrides"] = None if overrides is None else dict(overrides)
    summary["by_class"] = by_class(rows)        # (added later, last: the keys keep their places)
    if out is not None:
        try:
            write_evaluation(out, summary, rows)
        except UltrasegError as e:      # (a full disk): the figures are not lost with the files
            e.result = (summary, rows)
            raise
    return summary, rows


def by_class(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
    """The summary's figures (:data:`CLASS_KEYS`) of each image class the rows name in their
    ``class`` (BUSI's benign, malignant, normal), each :func:`~ultraseg.metrics.summarise`
    over that class's rows, classes sorted; None where no row names one."""
    classes = sorted({str(r["class"]) for r in rows if r.get("class") is not None})
    out = {}
    for cls in classes:
        figures = summarise([r for r in rows
                             if r.get("class") is not None and str(r["class"]) == cls])
        out[cls] = {k: figures.get(k) for k in CLASS_KEYS}
    return out or None


def provenance(predictor: Predictor, ds: Dataset) -> dict[str, Any]:
    """What gave an evaluation's figures, as its summary records it: ``checkpoint`` (the
    model file's resolved ``path``, the ``sha256`` it was loaded with (:attr:`Predictor.sha256`:
    an ONNX model's external data files hashed after it), the ``ultraseg_version`` that wrote
    it, the ``trained_with_version`` of the build that trained it (an ONNX model's exporter
    records it; a checkpoint's is its ``ultraseg_version``) and its ``best_epoch`` and
    ``epochs_run`` where its meta records them; None for a predictor built by hand),
    ``data`` (the folder, resolved), ``layout`` (as read), the ``ultraseg_version`` scoring,
    and the predictor's :attr:`~Predictor.runtime`
    (``torch_version`` or ``onnxruntime_version``, ``device``, ``precision`` as resolved)."""
    return {"checkpoint": predictor.record(), "data": str(Path(ds.root).resolve()),
            "layout": ds.layout, "ultraseg_version": __version__, **predictor.runtime}


def _score_frames(predictor: Predictor, samples: Sequence[Sample], images: Iterable[np.ndarray],
                  truths: list[np.ndarray], regions: list, at: list[int | None],
                  rows: list[dict[str, Any]], raw_rows: list[dict[str, Any]],
                  sizes: PixelSizes, measure_meta: dict[str, Any],
                  progress: Callable[[int, int], None] | None) -> None:
    """:func:`evaluate`'s scoring, frame by frame: each frame's row into ``rows`` (its raw
    figures into ``raw_rows``); ``at[0]`` says the frame being scored; ``measure_meta``: the
    checkpoint's, whose boundary offset each frame is measured with."""
    raw_pp = PostprocessConfig()
    for i, prob in enumerate(predictor.predict_proba_many(images)):
        at[0] = i
        s, truth = samples[i], truths[i]
        # (pixels that are not square: (height, width), as hd95 and measure take them)
        spacing = sizes.of(s.name, s.meta)
        pred = apply_postprocess(prob, predictor.postprocess)
        # the dataset's reference HC is hc_ref_mm, as in measure's CSV (there hc_mm is the
        # prediction's; here hc_pred_mm)
        meta = {("hc_ref_mm" if k == "hc_mm" else k): v for k, v in s.meta.items()
                if k != PIXEL_SIZE_NOT_TAKEN}
        row: dict[str, Any] = {"name": s.name, "subject": s.subject, **meta}
        if spacing and not isinstance(spacing, tuple) and not row.get("pixel_size_mm"):
            row["pixel_size_mm"] = spacing                  # --pixel-size's
        row.update(image_metrics(pred, truth, spacing))
        raw = image_metrics(apply_postprocess(prob, raw_pp), truth)
        raw_rows.append(raw)
        row["dice_raw"] = raw["dice"]
        if spacing:
            m = measure(pred, spacing, region=regions[i],
                        boundary_offset_px=frame_boundary_offset(measure_meta, pred.shape,
                                                                 regions[i]))
            row.update(area_mm2=m.get("area_mm2"), perimeter_mm=m.get("perimeter_mm"),
                       major_axis_mm=m.get("major_axis_mm"),
                       minor_axis_mm=m.get("minor_axis_mm"), hc_pred_mm=m.get("hc_mm"))
            if "hc_mm" in s.meta and m.get("hc_mm") is not None:
                row["hc_error_mm"] = m["hc_mm"] - s.meta["hc_mm"]
        # (added later, last: a script reading columns by position reads the others where
        # they were) the file, to join on; the areas of the masks scored, the prediction's
        # whole (area_mm2 is the largest region's, as measured)
        row.update(image=str(s.image_path), pred_area_px=int(np.count_nonzero(pred)),
                   truth_area_px=int(np.count_nonzero(truth)))
        if spacing:     # measure's flags, to leave out a head cut by the edge
            row.update(touches_edge=m["touches_edge"], n_components=m["n_components"],
                       ellipse_method=m["ellipse_method"])
        rows.append(row)
        truths[i] = None  # type: ignore[call-overload]  # free memory as we stream
        if progress:
            progress(i + 1, len(samples))
        at[0] = None


def write_evaluation(out: str | Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """``per_image.csv`` (one row per frame) and ``summary.json`` in ``out``, written atomically
    together (a failure leaves both as they were)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UltrasegError(f"cannot create the output folder ({failure_reason(e)})", out) from e
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    # both or neither: a full disk at the second left the first new beside the old other
    atomic_write_texts({out / "per_image.csv": csv_text(keys, rows, paths=("image",)),
                        out / "summary.json": json_text(summary, indent=2)})


def format_interval(ci: Sequence[float] | None, digits: int = 3) -> str:
    """A summary's ``*_ci95`` as printed, ``low-high`` to ``digits`` decimals (None: ``n/a``)."""
    return "n/a" if not ci else f"{ci[0]:.{digits}f}-{ci[1]:.{digits}f}"


def format_share(rate: float | None) -> str:
    """A share as printed: ``%`` to one decimal, ``100%`` and ``0%`` only where it is exactly
    1 or 0 (249 of 250 is ``99.6%``, 0.9996 ``>99.9%``, 0.0004 ``<0.1%``): "100%" of the
    empty frames right says no empty frame was wrong."""
    if rate is None:
        return "n/a"
    if rate in (0, 1):
        return f"{rate:.0%}"
    text = f"{rate:.1%}"
    return {"100.0%": ">99.9%", "0.0%": "<0.1%"}.get(text, text)


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable lines for the CLI: each figure to the digits its kind carries (Dice
    and IoU 3 decimals, px and mm 1, the head-circumference error in mm 2 as measure prints
    it, a share in % (:func:`format_share`); the JSON and CSV keep them whole), and the
    post-processing as the report's tables say it (:func:`ultraseg.report.postprocess_words`)."""
    from .report import postprocess_words

    def as_(fmt: str) -> Callable[[Any], str]:
        return lambda v: "n/a" if v is None else (format(v, fmt) if isinstance(v, float)
                                                  else str(v))
    f, dist, hc, share = as_(".3f"), as_(".1f"), as_(".2f"), format_share
    raw = summary.get("raw", {})
    pattern = summary.get("subject_pattern")
    by_pattern = f", by --subject-pattern {shell_word(pattern)}," if pattern else ""
    # (under 6 subjects no interval covers 95 %: labelled by its subjects, as metrics words it)
    interval = interval_label(summary.get("n_subjects") or 0)
    # (which interval: absent from a summary.json written before it was said)
    method = f"; {summary['dice_mean_ci95_method']}" if summary.get("dice_mean_ci95_method") else ""
    side = summary.get("subset")
    where = f"   ({SIDES[side].format(summary.get('split'))})" if side in SIDES else ""
    lines = [f"frames                {summary['n']}{where}",
             f"Dice (all frames)     {f(summary['dice_mean'])}   threshold 0.5 alone (no "
             f"rules; tta as below): {f(raw.get('dice_mean'))}",
             f"Dice (non-empty)      {f(summary['dice_nonempty_mean'])}   threshold 0.5 "
             f"alone: {f(raw.get('dice_nonempty_mean'))}",
             *([f"{interval:<22}all frames "
                f"{format_interval(summary['dice_mean_ci95'])}, non-empty "
                f"{format_interval(summary.get('dice_nonempty_mean_ci95'))}   "
                f"(the {summary['n_subjects']} subjects{by_pattern} resampled: one "
                f"subject's frames are not independent{method})"]
               if summary.get("dice_mean_ci95") else []),
             *_class_lines(summary.get("by_class") or {}),
             f"IoU                   {f(summary['iou_mean'])}",
             f"HD95 median (px)      {dist(summary['hd95_median'])}   over "
             f"{summary.get('hd95_n', 'n/a')} frames with a structure in truth and prediction",
             *([f"HD95 median (mm)      {dist(summary['hd95_mm_median'])}   over "
                f"{summary['hd95_mm_n']} of them with a pixel size"]
               if summary.get("hd95_mm_n") else []),
             f"empty frames right    {share(summary['empty_correct_rate'])}",
             # the threshold and rules the figures were made with, and the flip
             f"post-processing       "
             f"{postprocess_words(summary.get('postprocess') or {}) or 'n/a'}"]
    if summary.get("hc_n") is not None:     # (None, or absent from an older summary.json)
        from .measure import over_frames_with_a_reference

        bias = summary.get("hc_bias_mm")
        over = over_frames_with_a_reference(summary["hc_n"],
                                            summary["hc_n"] + summary["hc_missed"],
                                            touching_edge=summary.get("hc_touches_edge") or 0)
        lines.append(f"head circumference MAE {hc(summary['hc_mae_mm'])} mm"
                     f"{hc_interval_words(summary)}, mean signed "
                     f"error (predicted - reference) "
                     f"{'n/a' if bias is None else format(bias, '+.2f')} mm, {over}")
    lines.append(f"(empty rule: {EMPTY_RULE})")
    return "\n".join(lines)


def _class_lines(by_class: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The printed summary's line for each image class of ``by_class`` (none under two
    classes: the all-frame lines are its own): its frames and Dice (all frames, non-empty,
    with the all-frame Dice's interval where there is one, labelled by the class's subjects
    as the all-frame line is, and the HD95 median), or for
    a class whose frames are all empty (BUSI's normal) how many were predicted empty."""
    if len(by_class) < 2:
        return []
    name = max(10, *map(len, by_class))
    count = max(len(str(f["n"])) for f in by_class.values())
    lines = []
    for cls, f in by_class.items():
        start = f"  {cls:<{name}}  n {f['n']:>{count}}   "
        if f["dice_nonempty_mean"] is None and f["empty_correct_rate"] is not None:
            right = round(f["empty_correct_rate"] * f["n"])    # (every frame empty: n of them)
            lines.append(f"{start}empty predicted empty {right} of {f['n']}")
        else:
            dice = "n/a" if f["dice_mean"] is None else f"{f['dice_mean']:.3f}"
            nonempty = ("n/a" if f["dice_nonempty_mean"] is None
                        else f"{f['dice_nonempty_mean']:.3f}")
            ci = f["dice_mean_ci95"]
            # (labelled by the class's own subjects, as the all-frame line; absent from an
            # older summary.json: as it printed)
            few = few_subjects_words(f.get("n_subjects") or 0)
            label = interval_label(f.get("n_subjects") or 0)
            hd95 = "n/a" if f["hd95_median"] is None else f"{f['hd95_median']:.1f}"
            lines.append(f"{start}Dice {dice} (non-empty {nonempty})"
                         + (f", {label} {format_interval(ci)}" + (f" ({few})" if few else "")
                            if ci else "")
                         + f", HD95 median {hd95} px")
    return lines
