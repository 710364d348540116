"""From image files and folders to mask files, overlays, a Kaggle submission and measurements.

Everything streams: frames are decoded one by one as the predictor asks for them (it batches a
few), each result is written as soon as it is known, and nothing holds the whole input in
memory. Every output file goes through :mod:`ultraseg.fileio` (temporary name, then rename), so
an interrupted or failed run leaves complete files or none -- never half of one; the tables
(predictions.csv, measurements.csv) are made so, then grow row by row, each row whole, so that
a run killed outright (``kill -9``) leaves the rows it made.

Numpy/Pillow only: prediction from an ``.onnx`` file runs here without PyTorch.
"""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from .config import check_flag
from .errors import DataError, UltrasegError
from .fileio import as_path, output_lock
from .frame_outputs import (SKIPPED, FrameTable, Progress, encode_png, frame_cells,
                            iter_probabilities, or_skip, overlay_thickness, prepare_out_dir,
                            settings_record, write, write_settings)
from .frames import Frame, frames_of, real_path
from .io import Sample, as_outline, select_label, white_for
from .io.masks import LabelTally, check_label
from .measure import has_pixel_size, hc_error_interval, reference_touching_edge
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
    ``unreadable`` with the reason it was skipped (written row by row as the frames are
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
        except BaseException:   # (a full disk) the frame gets no row: nor its other files
            for path in done:
                with contextlib.suppress(OSError):
                    path.unlink()
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
            "status": "ok" if error is None else "unreadable",
            "reason": None if error is None else str(error),
            "probabilities": below(probabilities)}


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
        raise DataError(f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                        f"{shape[1]}x{shape[0]}", frame.sample.mask_paths[0])
    truth = select_label(mask, labels.label)
    labels.add(mask, truth)
    return truth


# ------------------------------------------------------------------------------ measure
#: (pixels that are not square, then the subject, added later, last: a script reading
#: columns by position reads the others where they were)
MEASURE_COLUMNS = ("name", "image", "frame", "width", "height", "pixel_size_mm",
                   "n_components", "touches_edge",
                   "area_px", "perimeter_px", "hc_px", "ellipse_cx", "ellipse_cy",
                   "ellipse_a_px", "ellipse_b_px", "ellipse_angle_deg", "ellipse_method",
                   "area_mm2", "perimeter_mm", "major_axis_mm", "minor_axis_mm", "hc_mm",
                   "hc_ref_mm", "hc_error_mm", "pixel_height_mm", "pixel_width_mm", "subject")


def measure_frames(predictor: Predictor | str | Path,
                   frames: Iterable[Frame] | str | Path | Iterable[str | Path],
                   pixel_size_mm: float | None = None, out: str | Path | None = None,
                   progress: Progress | None = None, skip_unreadable: bool = False,
                   overlay: bool = False,
                   on_row: Callable[[dict[str, Any]], None] | None = None,
                   overrides: Mapping[str, Any] | None = None
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Segment every frame and measure the object (:func:`ultraseg.measure.measure`).

    Per frame: area, perimeter and fitted-ellipse circumference in pixels, and in mm (with the
    ellipse's axes, 2a and 2b) where the pixel size is known -- from the dataset (HC18's CSV,
    a DICOM header), else ``pixel_size_mm`` (:func:`ultraseg.measure.frame_pixel_size`: a
    header's pixels that are not square are measured as they are, never with
    ``pixel_size_mm``, with a warning where it is given) -- plus the
    reference head circumference ``hc_ref_mm`` and ``hc_error_mm`` (predicted - reference)
    where the dataset gives one. The ellipse is shrunk by the checkpoint's
    ``meta['measure']['boundary_offset_px']`` (0 when absent), scaled to each frame by its
    longer side where the checkpoint says at which it holds
    (:func:`ultraseg.measure.frame_boundary_offset`). With ``out``, writes
    ``OUT/measurements.csv`` (where it cannot be written, the
    :class:`~ultraseg.errors.UltrasegError` carries (summary, rows) as its ``result``).
    Returns ``(summary, rows)``; the summary has ``n``, ``n_with_object``, ``hc_mm_mean``
    and, where references exist, ``hc_mae_mm`` and ``hc_bias_mm`` over the frames that have
    both. An unreadable image stops it with a :class:`~ultraseg.errors.DataError`; with
    ``skip_unreadable`` it is skipped instead, as in :func:`write_predictions` (the summary
    then covers the frames measured, and names the others under ``unreadable``, counted as
    ``n_unreadable``; the CSV has a row for each of them too, its figures empty and its last
    column, ``error``, saying why). Each row reaches the table as it is made (killed with
    ``kill -9``, the table holds the rows made); stopped (Ctrl-C, SIGTERM, an error), the
    rows measured so far are written and a warning counts them; an earlier run's
    ``measurements.csv`` in ``out`` is replaced before the first frame. ``overlay``
    (with ``out``): also ``OUT/NAME_measure.png``, the frame with the object's outline and
    the fitted ellipse (:func:`ultraseg.report.measure_overlay`), to check each by eye.
    ``on_row``: called with each frame's row as soon as it is measured (the CLI prints it).
    With ``out``, ``OUT/measurements.settings.json`` records the model and the post-processing
    applied
    before the first frame (:func:`settings_record`, with ``boundary_offset_px`` and
    ``offset_frame_side_px``;
    ``overrides``: the command line's options given), named as the summary's ``settings``.
    """
    from .measure import (PixelSizes, check_pixel_size, frame_boundary_offset, measure,
                          measured_object, warn_too_small_for_an_ellipse)
    from .preprocess import seen_region
    from .report import measure_overlay

    overlay = check_flag("overlay", overlay)
    skip_unreadable = check_flag("skip_unreadable", skip_unreadable)
    if out is not None:
        out = as_path(out, "measure_frames (out)", what="an output folder")
    predictor, frames = as_predictor(predictor), frames_of(frames)
    if overlay and out is None:
        raise UltrasegError("measure's overlays need an output folder (--out)")

    pixel_size_mm = check_pixel_size(pixel_size_mm)
    if any(f.sample.meta.get("hc_mm") is not None for f in frames):
        from .evaluate import warn_if_measuring_trained_frames

        warn_if_measuring_trained_frames(predictor, [f.sample for f in frames])
    measure_meta = predictor.meta.get("measure") or {}
    offset = float(measure_meta.get("boundary_offset_px", 0.0))
    # the frame side it holds at (None: in any frame's pixels, a checkpoint from before)
    side = measure_meta.get("offset_frame_side_px") if offset else None
    # held to the last file, as by write_predictions
    with output_lock(out, "measure") if out is not None else contextlib.nullcontext():
        out_dir = (prepare_out_dir(out, (f.out_name for f in frames)) if out is not None
                   else None)
        # (an earlier run's table is replaced by this run's header before the first frame)
        table = None if out_dir is None else out_dir / "measurements.csv"
        settings = None if out_dir is None else write_settings(
            out_dir, settings_record(predictor, "measure", overrides,
                                     boundary_offset_px=offset,
                                     offset_frame_side_px=side))
        rows: list[dict[str, Any]] = []
        failed: list[DataError] | None = [] if skip_unreadable else None
        written = FrameTable(table, [*MEASURE_COLUMNS, "error"], frames,
                             lambda frame, e: {**frame_cells(frame), "error": str(e)},
                             progress)
        sizes = PixelSizes(pixel_size_mm)
        def measured(frame: Frame, image: np.ndarray, prob: np.ndarray) -> dict[str, Any]:
            """The frame's row (its overlay written)."""
            mask = apply_postprocess(prob, predictor.postprocess)
            spacing = sizes.of(frame.out_name, frame.sample.meta)
            region = seen_region(image, predictor.preprocess)
            m = measure(mask, spacing, region=region,
                        boundary_offset_px=frame_boundary_offset(measure_meta, mask.shape,
                                                                 region))
            row = _measurement_row(frame, image.shape, spacing, m)
            if overlay and out_dir is not None:
                ellipse = None if row["ellipse_cx"] is None else (*m["ellipse_center"],
                                                                  *m["ellipse_axes"],
                                                                  m["ellipse_angle_deg"])
                # the object measured alone (largest region, holes filled), not the mask
                rgb = measure_overlay(image, measured_object(mask, region), ellipse,
                                      thickness=overlay_thickness(image.shape))
                write(out_dir / f"{frame.out_name}_measure.png", encode_png(rgb))
            return row

        try:
            for frame, image, prob in iter_probabilities(predictor, frames, failed,
                                                         written.skip):
                row = or_skip(lambda: measured(frame, image, prob), failed, frame,
                              image.shape, written.skip)
                if row is SKIPPED:
                    continue
                rows.append(row)
                if on_row is not None:      # (before the count: the bar is drawn after it)
                    on_row(row)
                written.add(frame, row)
        except BaseException as e:      # Ctrl-C, SIGTERM, an error: the rows done are kept
            written.stopped(e, "measured")
            raise
        sizes.warn(log)
        warn_too_small_for_an_ellipse(
            sum(1 for r in rows if r["area_px"] and r["hc_px"] is None), measure_meta, log)
        summary = summarise_measurements(rows, offset, side)
        if failed is not None:
            summary["n_unreadable"] = len(failed)
            summary["unreadable"] = [str(e) for e in failed]
        try:
            written.close()
        except UltrasegError as e:  # (a full disk): the figures are not lost with the table
            e.result = (summary, rows)
            raise
        if table is not None:
            summary["csv"] = str(table)
        if settings is not None:
            summary["settings"] = str(settings)
        return summary, rows


def _measurement_row(frame: Frame, shape: tuple[int, ...],
                     spacing: float | tuple[float, float] | None,
                     m: dict[str, Any]) -> dict[str, Any]:
    """The measurements table's row (:data:`MEASURE_COLUMNS`) of ``frame``, of shape
    ``shape``, measured as ``m`` (:func:`ultraseg.measure.measure`) at ``spacing`` mm (one
    number: square pixels, ``pixel_size_mm``; else (height, width): ``pixel_size_mm`` empty;
    ``pixel_height_mm`` and ``pixel_width_mm`` either way)."""
    centre, axes = m["ellipse_center"] or (None, None), m["ellipse_axes"] or (None, None)
    height, width = (None, None) if spacing is None else (
        spacing if isinstance(spacing, tuple) else (spacing, spacing))
    row: dict[str, Any] = {
        **frame_cells(frame), "width": shape[1], "height": shape[0],
        "pixel_size_mm": None if isinstance(spacing, tuple) else spacing,
        "pixel_height_mm": height, "pixel_width_mm": width,
        "n_components": m["n_components"], "touches_edge": m["touches_edge"],
        "area_px": m["area_px"],
        "perimeter_px": m["perimeter_px"], "hc_px": m["ellipse_circumference_px"],
        "ellipse_cx": centre[0], "ellipse_cy": centre[1], "ellipse_a_px": axes[0],
        "ellipse_b_px": axes[1], "ellipse_angle_deg": m["ellipse_angle_deg"],
        "ellipse_method": m["ellipse_method"], "area_mm2": m.get("area_mm2"),
        "perimeter_mm": m.get("perimeter_mm"), "major_axis_mm": m.get("major_axis_mm"),
        "minor_axis_mm": m.get("minor_axis_mm"), "hc_mm": m.get("hc_mm"),
        "hc_ref_mm": frame.sample.meta.get("hc_mm"), "hc_error_mm": None,
        "subject": frame.sample.subject or None,     # (a file named alone has none)
    }
    if row["hc_mm"] is not None and row["hc_ref_mm"] is not None:
        row["hc_error_mm"] = row["hc_mm"] - row["hc_ref_mm"]
    return row


def summarise_measurements(rows: Sequence[dict[str, Any]], boundary_offset_px: float = 0.0,
                           offset_frame_side_px: float | None = None) -> dict[str, Any]:
    """Counts, mean HC, and the mean absolute / signed HC error where references exist (and
    how many frames with a reference had no object to measure, how many of those in the error
    touch the frame's edge, how many held more than one region of which the largest alone was
    measured); the boundary offset and the frame side it holds at (None: in each frame's own
    pixels)."""
    hc = [r["hc_mm"] for r in rows if r.get("hc_mm") is not None]
    errors = [r["hc_error_mm"] for r in rows if r.get("hc_error_mm") is not None]
    return {
        "n": len(rows),
        "n_with_object": sum(1 for r in rows if r["area_px"] > 0),
        "n_with_pixel_size": sum(1 for r in rows if has_pixel_size(r)),
        # frames whose mask held more regions than the one measured (the largest)
        "n_multiple_regions": sum(1 for r in rows if (r.get("n_components") or 0) > 1),
        "area_px_mean": float(np.mean([r["area_px"] for r in rows])) if rows else None,
        "hc_mm_mean": float(np.mean(hc)) if hc else None,
        "n_with_reference": len(errors),
        # frames with a reference whose head the model did not find: no error, left out
        "n_reference_missed": sum(1 for r in rows if r.get("hc_ref_mm") is not None
                                  and has_pixel_size(r) and r.get("hc_mm") is None),
        "hc_mae_mm": float(np.mean(np.abs(errors))) if errors else None,
        "hc_bias_mm": float(np.mean(errors)) if errors else None,
        "boundary_offset_px": boundary_offset_px,
        "offset_frame_side_px": offset_frame_side_px,
        # of the frames in the HC error, those whose object touches the frame's edge (a head
        # cut by it, fitted on its visible outline: the surest of them no more)
        "n_reference_touches_edge": reference_touching_edge(rows),
        **hc_error_interval(rows),     # (the MAE's interval, as evaluate's)
    }
