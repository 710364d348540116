"""Measuring the object of every frame of image files and folders (:func:`measure_frames`):
``OUT/measurements.csv`` (:data:`MEASURE_COLUMNS`), row by row, and its overlays, the frames
streamed as for predict (:mod:`ultraseg.frame_outputs`).

Moved from :mod:`ultraseg.predict_files` as it was.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .config import check_flag
from .errors import DataError, UltrasegError
from .fileio import as_path, output_lock
from .frame_outputs import (SKIPPED, FrameTable, Progress, encode_png, frame_cells,
                            if_name_too_long, iter_probabilities, or_skip, overlay_thickness,
                            prepare_out_dir, settings_record, write, write_settings)
from .frames import Frame, frames_of
from .measure import has_pixel_size, hc_error_figures
from .postprocess import apply as apply_postprocess
from .predict import Predictor, as_predictor

#: These lines keep the name of the logger they were said on before they moved here
#: (:mod:`ultraseg.predict_files`'s), so that a filter or level set on it still reaches them.
log = logging.getLogger("ultraseg.predict_files")

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
    ``skip_unreadable`` it is skipped instead, as in :func:`~ultraseg.write_predictions` (the
    summary then covers the frames measured, and names the others under ``unreadable``,
    counted as ``n_unreadable``; the CSV has a row for each of them too, its figures empty and
    its last column, ``error``, saying why). Each row reaches the table as it is made (killed
    with ``kill -9``, the table holds the rows made); stopped (Ctrl-C, SIGTERM, an error), the
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
                path = out_dir / f"{frame.out_name}_measure.png"
                try:
                    write(path, encode_png(rgb))
                except OSError as e:    # (a name too long: this frame's, skipped)
                    if_name_too_long(e, frame, path)
                    raise
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
    error = hc_error_figures(rows)
    return {
        "n": len(rows),
        "n_with_object": sum(1 for r in rows if r["area_px"] > 0),
        "n_with_pixel_size": sum(1 for r in rows if has_pixel_size(r)),
        # frames whose mask held more regions than the one measured (the largest)
        "n_multiple_regions": sum(1 for r in rows if (r.get("n_components") or 0) > 1),
        "area_px_mean": float(np.mean([r["area_px"] for r in rows])) if rows else None,
        "hc_mm_mean": float(np.mean(hc)) if hc else None,
        "n_with_reference": error["n"],
        # frames with a reference whose head the model did not find: no error, left out
        "n_reference_missed": error["missed"],
        "hc_mae_mm": error["mae"],
        "hc_bias_mm": error["bias"],
        "boundary_offset_px": boundary_offset_px,
        "offset_frame_side_px": offset_frame_side_px,
        # of the frames in the HC error, those whose object touches the frame's edge (a head
        # cut by it, fitted on its visible outline: the surest of them no more)
        "n_reference_touches_edge": error["touches_edge"],
        **error["interval"],           # (the MAE's interval, as evaluate's)
    }
