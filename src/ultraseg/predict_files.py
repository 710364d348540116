"""From image files and folders to mask files, overlays and a Kaggle submission (measurements:
:mod:`ultraseg.measure_files`; what both share: :mod:`ultraseg.frame_outputs`).

predictions.csv and the masks stream as :mod:`ultraseg.frame_outputs` says.

Numpy/Pillow only: prediction from an ``.onnx`` file runs here without PyTorch.
"""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from .config import check_flag
from .errors import DataError, OutputNameTooLong, UltrasegError
from .fileio import as_path, output_lock
from .frame_outputs import (SKIPPED, FrameTable, Progress, encode_png, frame_cells,
                            if_name_too_long, iter_probabilities, or_skip, overlay_thickness,
                            prepare_out_dir, settings_record, write, write_settings)
from .frames import Frame, frames_of, real_path
from .io import Sample, as_outline, dataset_above_hint, select_label, white_for
from .io.base import mask_size_error
from .io.masks import LabelTally, check_label
from .postprocess import apply as apply_postprocess
from .predict import Predictor, as_predictor

log = logging.getLogger(__name__)

#: Mask file formats: ``--format`` value -> (file suffix, Pillow format).
MASK_FORMATS = {"png": (".png", "PNG"), "tif": (".tif", "TIFF")}


def encode_mask(mask: np.ndarray, fmt: str = "png") -> bytes:
    """A bool (H, W) mask as the bytes of an 8-bit 0/255 image file ('png' or 'tif')."""
    if fmt not in MASK_FORMATS:
        raise UltrasegError(f"unknown mask format {fmt!r}; valid: {', '.join(MASK_FORMATS)}")
    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(
        buf, format=MASK_FORMATS[fmt][1])
    return buf.getvalue()


def encode_probabilities(prob: np.ndarray) -> bytes:
    """A probability map (H, W) in [0, 1] as the bytes of a 16-bit greyscale PNG: 0..65535
    for 0..1, rounded to the nearest step (1/65535)."""
    levels = np.rint(np.clip(prob, 0.0, 1.0) * 65535.0).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(levels).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------ predict
@dataclass
class PredictionSummary:
    """What :func:`write_predictions` wrote."""

    n: int
    out: Path
    n_empty: int = 0
    masks: list[Path] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)
    rle: Path | None = None
    rle_left_out: int = 0
    settings: Path | None = None        # OUT/predictions.settings.json: the model and settings
    failed: list[DataError] = field(default_factory=list)   # frames skipped, unreadable
    #: with an overlay: the labels the masks hold where none holds the label drawn (its truth
    #: then shows as empty on every overlay), else None
    label_absent: list[int] | None = None
    #: with probabilities=True: the probability maps written (OUT/NAME_prob.png)
    probabilities: list[Path] = field(default_factory=list)

    def __repr__(self) -> str:
        """The paths and errors counted, not listed: a notebook shows a summary by its repr."""
        listed = ("masks", "overlays", "probabilities", "failed")
        said = ", ".join(f"{f.name}={len(v)} {'errors' if f.name == 'failed' else 'paths'}"
                         if f.name in listed else f"{f.name}={v!r}"
                         for f in fields(self) for v in [getattr(self, f.name)])
        return f"PredictionSummary({said})"


def submission_frames(frames: Sequence[Frame]) -> list[bool]:
    """Which frames go into a Kaggle submission CSV.

    A Kaggle submission scores the competition's test images. Where the inputs hold a Kaggle
    dataset's test split (``meta['split'] == 'test'``, a root with ``train/`` and ``test/``),
    its training frames are left out; otherwise every frame goes in (a folder of images, or the
    training folder alone, scored locally).
    """
    splits = [f.sample.meta.get("split") for f in frames]
    if "test" not in splits:
        return [True] * len(frames)
    return [s != "train" for s in splits]


class _Incomplete(Exception):
    """Raised into a submission being written when frames were skipped: it is not kept."""


def check_truth_options(overlay: bool, label: int | None, fill_outlines: bool | None) -> None:
    """Refuse ``label`` or ``fill_outlines`` without ``overlay``: they say how an overlay reads
    the ground truth it draws, and without one no mask is read, so they would do nothing and
    say nothing. (The words name :func:`write_predictions`'s arguments, which makes the check,
    with predict's flags beside them: ``label=7 (--label 7)``.)"""
    if overlay:
        return
    given = [("label", label, f"--label {label}", label is not None),
             ("fill_outlines", fill_outlines, "--fill-outlines", fill_outlines is True),
             ("fill_outlines", fill_outlines, "--no-fill-outlines", fill_outlines is False)]
    for name, value, flag in ((n, v, f) for n, v, f, g in given if g):
        raise UltrasegError(f"{name}={value!r} ({flag}) says how the overlay (overlay=True, "
                            f"--overlay) reads the ground truth it draws; without an overlay "
                            f"no mask is read (ask for one, or leave {name} "
                            f"({flag.split()[0]}) out)")


def write_predictions(predictor: Predictor | str | Path,
                      frames: Iterable[Frame] | str | Path | Iterable[str | Path],
                      out: str | Path, fmt: str = "png", overlay: bool = False,
                      rle: str | Path | None = None, label: int | None = None,
                      progress: Progress | None = None,
                      skip_unreadable: bool = False,
                      fill_outlines: bool | None = None,
                      overrides: Mapping[str, Any] | None = None,
                      probabilities: bool = False) -> PredictionSummary:
    """Predict every frame and write ``OUT/NAME_mask.png`` (8-bit 0/255, the image's size),
    and ``OUT/predictions.csv`` (:data:`PREDICTION_COLUMNS`): each frame's image, its frame
    number in a multi-frame file (from 1), its outputs' paths below ``out``, and ``ok``, or
    ``unreadable`` (or ``error``: its outputs' name too long for the file system, an
    :class:`~ultraseg.errors.OutputNameTooLong`) with the reason it was skipped (written row
    by row as the frames are
    done, however the run ends: an interrupted, stopped or killed run lists the frames it got
    to).

    ``fmt='tif'`` writes TIFF masks. ``overlay``: also ``OUT/NAME_overlay.png``, the image with
    the predicted outline (orange) and, for frames of a labelled dataset, the true one (blue;
    ``label`` selects a structure of a label mask, default the predictor's; where no mask holds
    it, a warning says so (``evaluate`` refuses it), and ``summary.label_absent`` lists the labels
    they hold; ``fill_outlines``: the masks are closed contours, filled, None: as the
    predictor was trained; either without ``overlay`` is refused: :func:`check_truth_options`).
    ``probabilities``: also ``OUT/NAME_prob.png``, the probability map
    the mask is thresholded from (:meth:`Predictor.predict_proba`: averaged with the flipped
    frame's where tta is used, after a presence head's gate; the threshold and rules never
    apply to it) as a 16-bit greyscale PNG, 0..65535 for 0..1, at the image's size
    (:func:`encode_probabilities`). ``rle``: a Kaggle
    submission CSV (``img,pixels``, one row per frame in input order, ``img`` = the output
    name, the image's stem unless stems collide; of a Kaggle dataset with a test split, only
    the test frames: see :func:`submission_frames`; masks are still written for every
    frame). The mask is the predictor's post-processed
    decision (``predictor.postprocess``). Stops at the first unreadable file with a
    :class:`~ultraseg.errors.DataError`; files already written are complete, and the CSV is
    only written when every frame succeeded (a truth mask that cannot be read for an overlay
    does not stop it: that overlay is drawn without truth, and one warning counts and names
    them). With ``skip_unreadable`` an image that cannot be read is skipped and named in the
    summary's ``failed``, and the other frames are written; where a skipped frame belongs in the
    submission CSV, that is not written (it would lack the frame's row: ``summary.rle`` is
    None, and a file already at that path stays as it was). Before the first frame,
    ``OUT/predictions.settings.json`` records the model and the post-processing applied
    (:func:`settings_record`; ``overrides``: the command line's options given).
    """
    overlay, probabilities = check_flag("overlay", overlay), check_flag("probabilities",
                                                                        probabilities)
    skip_unreadable = check_flag("skip_unreadable", skip_unreadable)
    fill_outlines = check_flag("fill_outlines", fill_outlines, "as the predictor was trained")
    check_truth_options(overlay, label, fill_outlines)     # before a checkpoint is loaded
    out = as_path(out, "write_predictions (out)", what="an output folder")
    if rle is not None:
        as_path(rle, "write_predictions (rle)", what="a submission CSV")
    predictor, frames = as_predictor(predictor), frames_of(frames)   # before --out is made
    if fmt not in MASK_FORMATS:
        raise UltrasegError(f"unknown mask format {fmt!r}; valid: {', '.join(MASK_FORMATS)}")
    check_label(label)                  # before the output folder is made
    if rle is not None:                 # found now, not after every frame is predicted
        from .rle import check_submission_path

        check_submission_path(rle, pending=out)     # (--out itself: created just below)
        _check_not_a_table(Path(rle), Path(out))
    # held to the last file: a second command writing into it too would mix its outputs
    with output_lock(out, "predict"):
        return _write_predictions(predictor, frames, out, fmt, overlay, rle, label, progress,
                                  skip_unreadable, fill_outlines, overrides, probabilities)


#: The tables a predict or measure writes in its output folder, and what each is.
_TABLES = {"predictions.csv": "predict's listing of the frames",
           "measurements.csv": "measure's table (a later measure there replaces it)"}


def _check_not_a_table(rle: Path, out: Path) -> None:
    """Refuse a submission path ``rle`` that is one of :data:`_TABLES` in ``out``: the listing
    written after it would replace it (as a later measure replaces an earlier table)."""
    if rle.name in _TABLES and real_path(rle.parent) == real_path(out):
        raise UltrasegError(f"cannot write the submission there: that name in --out is "
                            f"{_TABLES[rle.name]} (give another name, such as sub.csv)", rle)


def _write_predictions(predictor: Predictor, frames: Sequence[Frame], out: str | Path,
                       fmt: str, overlay: bool, rle: str | Path | None, label: int | None,
                       progress: Progress | None, skip_unreadable: bool,
                       fill_outlines: bool | None,
                       overrides: Mapping[str, Any] | None = None,
                       probabilities: bool = False) -> PredictionSummary:
    """:func:`write_predictions`, its arguments checked, holding ``out``."""
    from .report import overlay as draw_overlay

    out = prepare_out_dir(out, (f.out_name for f in frames),
                          None if rle is None else Path(rle))
    if rle is not None:
        from .rle import check_submission_names

        check_submission_names(f.out_name for f in frames)
    labels = LabelTally(predictor.preprocess.label if label is None else label)
    if overlay:
        _warn_truth_above(frames)
        frames = _truth_as_the_set_has_it(frames, labels.label)
    fill = predictor.preprocess.fill_outlines if fill_outlines is None else fill_outlines
    suffix = MASK_FORMATS[fmt][0]
    summary = PredictionSummary(n=0, out=out, rle=None if rle is None else Path(rle))
    summary.settings = write_settings(out, settings_record(predictor, "predict", overrides))
    in_submission = dict(zip((f.out_name for f in frames), submission_frames(frames)))
    if rle is not None:
        summary.rle_left_out = sum(not v for v in in_submission.values())
        if summary.rle_left_out:
            log.info("submission: leaving out %d frames of the training split",
                     summary.rle_left_out)

    failed = summary.failed if skip_unreadable else None
    written: set[str] = set()
    table = FrameTable(out / "predictions.csv", PREDICTION_COLUMNS, frames,
                       lambda frame, e: _listing_row(frame, out, None, None, e), progress,
                       files=("mask", "overlay", "probabilities"))
    bad_truth: list[DataError] = []             # truth masks that could not be read

    def outputs(frame: Frame, image: np.ndarray, prob: np.ndarray) -> np.ndarray:
        """Write the frame's mask (and overlay, and probability map); its mask."""
        # a truth mask that cannot be read (another size, a photograph) leaves the overlay without
        # truth; the image was read, and its prediction is written
        truth, no_truth = None, None
        if overlay:
            try:
                truth = _truth(frame, image.shape, labels, fill)
            except DataError as e:
                log.info("%s (its overlay shows no truth)", e)
                bad_truth.append(e)
                no_truth = e
        mask = apply_postprocess(prob, predictor.postprocess)
        # every file encoded before any is written: a frame skipped (out of memory while its
        # overlay is drawn) leaves no mask behind that the summary does not count
        encoded = encode_mask(mask, fmt)
        drawn = encode_png(draw_overlay(image, mask, truth,
                                        thickness=overlay_thickness(image.shape))
                           ) if overlay else None
        prob_png = encode_probabilities(prob) if probabilities else None
        mask_path = out / f"{frame.out_name}_mask{suffix}"
        ov_path = None if drawn is None else out / f"{frame.out_name}_overlay.png"
        prob_path = None if prob_png is None else out / f"{frame.out_name}_prob.png"
        done: list[Path] = []
        try:
            for path, data in ((mask_path, encoded), (ov_path, drawn), (prob_path, prob_png)):
                if path is not None and data is not None:
                    write(path, data)
                    done.append(path)
        except BaseException as e:  # (a full disk) the frame gets no row: nor its other files
            for made in done:
                with contextlib.suppress(OSError):
                    made.unlink()
            if_name_too_long(e, frame, path)    # (a name too long: this frame's, skipped)
            raise
        if ov_path is not None:
            summary.overlays.append(ov_path)
        if prob_path is not None:
            summary.probabilities.append(prob_path)
        summary.masks.append(mask_path)
        row = _listing_row(frame, out, mask_path, ov_path, probabilities=prob_path)
        if no_truth is not None:
            row["reason"] = f"no truth on the overlay: {no_truth}"
        table.add(frame, row)
        return mask

    def rows() -> Iterator[tuple[str, np.ndarray]]:
        for frame, image, prob in iter_probabilities(predictor, frames, failed, table.skip):
            # (out of memory here too: the frame's post-processing and files at full size)
            mask = or_skip(lambda: outputs(frame, image, prob), failed, frame, image.shape,
                           table.skip)
            if mask is SKIPPED:
                continue
            summary.n += 1
            summary.n_empty += not mask.any()
            written.add(frame.out_name)
            if in_submission[frame.out_name]:
                yield frame.out_name, mask
        if rle is not None and any(in_submission[f.out_name] and f.out_name not in written
                                   for f in frames):
            raise _Incomplete               # (a skipped training frame is in no submission)

    try:
        if rle is None:
            for _ in rows():
                pass
        else:
            from .rle import write_submission

            try:
                write_submission(rows(), rle)
            except _Incomplete:
                log.info("submission %s not written: %d frames could not be read", rle,
                         len(summary.failed))
                summary.rle = None
    except BaseException as e:      # Ctrl-C, SIGTERM, an error: the frames done are listed
        table.stopped(e, "wrote")
        raise
    table.close()
    if bad_truth:
        shown = "; ".join(str(e) for e in bad_truth[:5])
        more = f"; and {len(bad_truth) - 5} more" if len(bad_truth) > 5 else ""
        log.warning("%d ground-truth masks could not be read: their frames are predicted, "
                    "their overlays drawn without truth (%s%s)", len(bad_truth), shown, more)
    if overlay:     # (evaluate says the same of its scores)
        summary.label_absent = labels.warn_if_absent(
            "no overlay shows a ground truth (--label K draws another)", log)
    log.info("wrote %d masks to %s (%d empty)", summary.n, out, summary.n_empty)
    return summary


#: predictions.csv's columns: one row per frame written or skipped, in the inputs' order
#: (``probabilities``, empty unless written, came later: after the first ones, as readers of
#: the older table expect them).
PREDICTION_COLUMNS = ("name", "image", "frame", "mask", "overlay", "status", "reason",
                      "probabilities")


def _listing_row(frame: Frame, out: Path, mask: Path | None, overlay: Path | None,
                 error: DataError | None = None, probabilities: Path | None = None
                 ) -> dict[str, Any]:
    """``frame``'s row of predictions.csv: its outputs' paths below ``out`` (posix), or the
    error it was skipped for."""
    def below(p: Path | None) -> str | None:
        return None if p is None else p.relative_to(out).as_posix()

    return {**frame_cells(frame), "mask": below(mask), "overlay": below(overlay),
            "status": "ok" if error is None else
                      "error" if isinstance(error, OutputNameTooLong) else "unreadable",
            "reason": None if error is None else str(error),
            "probabilities": below(probabilities)}


def _warn_truth_above(frames: Sequence[Frame]) -> None:
    """Warn, for an overlay, where a folder given holds no truth but is the images (or masks)
    folder of a labelled dataset (``DATA/images`` given for ``DATA``): its overlays show no
    ground truth, which pointing at the dataset draws (:func:`~ultraseg.io.dataset_above_hint`;
    without an overlay, predicting a dataset's images folder is the natural thing to do, and
    collecting it says nothing)."""
    labelled: dict[Path, bool] = {}
    for f in frames:
        if f.source is not None:
            labelled[f.source] = labelled.get(f.source, False) or f.sample.labelled
    for source in (s for s, any_labelled in labelled.items() if not any_labelled):
        hint = dataset_above_hint(source, needs_labels=False)
        if hint:
            log.warning("%s is read as a folder of unlabelled images, so its overlays show no "
                        "ground truth%s", source, hint)


def _truth_as_the_set_has_it(frames: Sequence[Frame], label: int | None) -> Sequence[Frame]:
    """``frames`` with their black-and-white truth masks' white read as the masks of the
    folder each came from (:attr:`Frame.source`) have it, for the target ``label``
    (:func:`ultraseg.io.white_for`: label 255 among label masks, as train and evaluate
    read it): a plain 0/255 set given beside a set of label masks keeps its white 1."""
    by_source: dict[Path | None, dict[Path, Sample]] = {}
    for f in frames:
        if f.sample.mask_paths:
            by_source.setdefault(f.source, {})[f.sample.image_path] = f.sample
    whites = {source: white_for(label, samples.values())
              for source, samples in by_source.items()}
    if all(w == 1 for w in whites.values()):
        return frames
    return [replace(f, sample=replace(f.sample, white=whites[f.source]))
            if whites.get(f.source, 1) != 1 else f for f in frames]


def _truth(frame: Frame, shape: tuple[int, ...], labels: LabelTally, fill_outlines: bool
           ) -> np.ndarray | None:
    """The frame's ground-truth mask as bool (H, W) (its structure ``labels.label``, tallied
    there; a contour filled with ``fill_outlines``), or None for an unlabelled image."""
    mask = (as_outline(frame.sample) if fill_outlines else frame.sample).load_mask()
    if mask is None:
        return None
    if mask.shape != shape[:2]:
        raise mask_size_error(mask.shape, shape, frame.sample.mask_paths[0])
    truth = select_label(mask, labels.label)
    labels.add(mask, truth)
    return truth
