"""Subcommands that use a trained model on new images: predict, export, measure.

Thin: parse -> call :mod:`ultraseg.predict_files` / :mod:`ultraseg.export` -> print.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, TextIO

from .config import DEVICE_NAMES, postprocess_problem
from .cli import StatusLine, bar, json_on_failure, path_arg, positive_int, whole_number_arg
from .errors import NAME_TOO_LONG, FrameTooLarge, OutputNameTooLong, UltrasegError
from .fileio import json_text

EXIT_OK, EXIT_USAGE = 0, 2


class ProgressBar(StatusLine):
    """``done/total`` with a bar and an ETA on a terminal's stderr; elsewhere (a log file,
    nohup, a batch job) a plain line at most every ``every`` seconds, and one at the end of a
    run that printed one (a run shorter than that prints none). A stream that cannot be
    written (its reader gone, a full disk) stops nothing: the bar goes quiet, as training's
    progress does (:class:`~ultraseg.cli.StatusLine`)."""

    def __init__(self, what: str, stream: TextIO | None = None, every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(stream)
        self.what = what
        self.every, self.clock = every, clock
        self.t0 = self.last = clock()
        self.ended = self.said = False

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        elapsed = self.clock() - self.t0
        eta = elapsed / done * (total - done) if done else 0.0
        if not self.tty:
            self._line(done, total, eta)
            return
        self.status(f"{self.what} {bar(done, max(total, 1))} {done}/{total} ETA {eta:4.0f}s ")
        if done >= total:
            self.clear()

    def _line(self, done: int, total: int, eta: float) -> None:
        now = self.clock()
        if self.ended or now - self.last < self.every and (done < total or not self.said):
            return
        self.last, self.ended, self.said = now, done >= total, True
        left = "" if self.ended else (f", ETA {eta:.0f} s" if eta < 60
                                      else f", ETA {eta / 60:.0f} min")
        self.write(f"{self.what}: {done}/{total} frames{left}\n")


@contextlib.contextmanager
def loaded_model(a: argparse.Namespace) -> Iterator[Any]:
    """The Predictor for MODEL with the command line's options and post-processing flags,
    run inside the block on ``--threads N``: a checkpoint's torch intra-op threads there, the
    caller's setting after (as train's); an ONNX model's session takes them when it is made.
    Without it, every core."""
    from .predict import open_model

    n = getattr(a, "threads", None)     # (each at least 1: the parser's positive_int)
    options: dict[str, Any] = {}
    if getattr(a, "batch_size", None) is not None:
        options["batch_size"] = a.batch_size
    if getattr(a, "tile", None) is not None:
        options["tile"] = a.tile
    onnx = Path(a.model).suffix.lower() == ".onnx"
    if n is None or onnx:
        block: ContextManager[None] = contextlib.nullcontext()
    else:
        from .runtime import threads
        from .shared import warn_if_oversubscribed

        warn_if_oversubscribed(n, in_python="ultraseg.runtime.threads")   # (an .onnx: by load)
        block = threads(n)
    with block:
        # (settings that do not apply to the model are warned about by load)
        # (an ONNX model's threads are its session's, made by load)
        predictor = open_model(a.model, a.device, a.precision, n if onnx else None, cli=True,
                               **options)
        yield predictor.with_options(postprocess=postprocess_from_flags(predictor.postprocess,
                                                                        a))


def postprocess_from_flags(base: Any, a: argparse.Namespace) -> Any:
    """The checkpoint's PostprocessConfig with the flags given on the command line applied;
    with ``--raw``, ``PostprocessConfig()`` (threshold 0.5, no rules, no tta), which none of
    the flags may be given beside."""
    changes = {k: getattr(a, k, None) for k in POSTPROCESS_OPTIONS}
    changes = {k: v for k, v in changes.items() if v is not None}
    if getattr(a, "raw", False):
        if changes:
            named = ", ".join(_flag_given(k, v) for k, v in changes.items())
            raise UltrasegError(f"--raw and {named} cannot be combined: --raw is threshold "
                                f"0.5 with no rules and no tta (leave one of them out)")
        from .config import PostprocessConfig

        return PostprocessConfig()
    problem = postprocess_problem(changes)  # in the flags' words, before the config's check
    if problem:
        name, what = problem
        raise UltrasegError(f"--{name.replace('_', '-')} {what}")
    return replace(base, **changes)


def _flag_given(name: str, value: Any) -> str:
    """The post-processing flag that set ``name`` to ``value`` (``--no-tta`` for tta False)."""
    flag = name.replace("_", "-")
    return f"--{'no-' * (value is False)}{flag}"


#: The post-processing options (by their names on the Namespace), as
#: :func:`postprocess_from_flags` applies them and the settings record them.
POSTPROCESS_OPTIONS = ("threshold", "min_area", "min_peak", "keep_largest", "fill_holes", "tta")
#: The options of predict and measure that predictions.settings.json and
#: measurements.settings.json record where given, in the order they record them.
_RECORDED_OPTIONS = ("raw", *POSTPROCESS_OPTIONS, "device", "precision", "batch_size", "tile",
                     "threads", "pixel_size")


def _note_defaults(p: argparse.ArgumentParser, *names: str) -> None:
    """Keep the parser's defaults of the options ``names`` on its Namespace (``_defaults``),
    for :func:`options_given` to tell an option given from one left as it is."""
    p.set_defaults(_defaults={**(p.get_default("_defaults") or {}),
                              **{n: p.get_default(n) for n in names}})


def options_given(a: argparse.Namespace) -> dict[str, Any]:
    """The post-processing and model options given on the command line, by name
    (``threshold``, ``device``, ...), as the output folder's ``*.settings.json`` records them:
    those whose value is not the parser's default."""
    defaults = getattr(a, "_defaults", {})
    # every option noted, in the record's order (one noted but not listed comes last, rather
    # than going unrecorded)
    names = [k for k in _RECORDED_OPTIONS if k in defaults]
    names += [k for k in defaults if k not in _RECORDED_OPTIONS]
    return {k: getattr(a, k) for k in names if getattr(a, k) != defaults[k]}


# ---------------------------------------------------------------- predict
def _cmd_predict(a: argparse.Namespace) -> int:
    from .frames import collect_frames
    from .predict_files import check_truth_options, write_predictions

    # (write_predictions refuses them too: here before the model is loaded)
    check_truth_options(a.overlay, a.label, a.fill_outlines)
    frames = collect_frames(a.inputs, a.layout, a.subject_pattern, exclude=a.out)
    with loaded_model(a) as predictor:
        summary = write_predictions(predictor, frames, a.out, fmt=a.format, overlay=a.overlay,
                                    rle=a.rle, label=a.label, progress=ProgressBar("predict"),
                                    fill_outlines=a.fill_outlines,
                                    skip_unreadable=True, overrides=options_given(a),
                                    probabilities=a.probabilities)
    also = [w for w, given in (("overlays", a.overlay), ("probability maps", a.probabilities))
            if given]
    extra = "".join(f", {w}" for w in also[:-1]) + (f" and {also[-1]}" if also else "")
    sub = ""
    if summary.rle:
        sub = f"; submission {summary.rle}"
        if summary.rle_left_out:
            n = summary.rle_left_out
            sub += f" (test split only: {n} training frame{'s' * (n != 1)} left out)"
    elif a.rle:
        sub = f"; submission {a.rle} not written (it would lack the frames not read)"
        if Path(a.rle).exists():
            sub += "; the file there is an earlier run's"
    print(f"predicted {summary.n} frame{'s' * (summary.n != 1)} ({summary.n_empty} empty): "
          f"masks{extra} in {summary.out}{sub}")
    from .frame_outputs import SETTINGS_FILE
    from .report import postprocess_words

    print(f"post-processing: {postprocess_words(predictor.applied)} "
          f"(in {SETTINGS_FILE['predict']})")
    return report_unreadable(summary.failed, len(frames))


def report_unreadable(failed: list[Any], total: int) -> int:
    """One ``error:`` line per frame that could not be read (or held in memory at its full
    size, or its outputs written under a name the file system takes) and was skipped, and the
    exit code: 2 where there was any (the others' outputs are written), else 0. (``failed``:
    the errors, or their messages.)"""
    for e in failed:
        print(f"error: {e}", file=sys.stderr)
    if failed:
        large = any(isinstance(e, FrameTooLarge) or "out of memory at its full resolution"
                    in str(e) for e in failed)
        named = any(isinstance(e, OutputNameTooLong) or NAME_TOO_LONG in str(e)
                    for e in failed)
        what = ("could not be read" + (" or held in memory" if large else "")
                + (" or written" if named else ""))
        print(f"error: {len(failed)} of {total} frames {what} (skipped, named above)",
              file=sys.stderr)
    return EXIT_USAGE if failed else EXIT_OK


def postprocess_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("post-processing (default: what the checkpoint stores)")
    g.add_argument("--threshold", type=float, metavar="T",
                   help="probability at or above which a pixel is foreground")
    g.add_argument("--min-area", type=whole_number_arg(0), metavar="N",
                   help="remove connected components smaller than N pixels (original size: "
                        "the frame's own pixels, so frames at another resolution than "
                        "training's lose other structures)")
    g.add_argument("--min-peak", type=float, metavar="P",
                   help="remove connected components whose highest probability is under P "
                        "(0: off)")
    g.add_argument("--keep-largest", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only the largest component (with --fill-holes: the largest "
                        "once its holes are filled, as measure's object)")
    g.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=None,
                   help="fill holes inside components")
    g.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation: average the probabilities with the "
                        "horizontally flipped frame's (twice the prediction time)")
    g.add_argument("--raw", action="store_true",
                   help="no post-processing: threshold 0.5, no component rules, no tta "
                        "(refused beside any of the flags above; a presence head's gate is "
                        "part of the model and still applies)")
    _note_defaults(p, *POSTPROCESS_OPTIONS, "raw")


def pixel_size_arg(p: argparse.ArgumentParser) -> None:
    """``--pixel-size MM``, for frames whose dataset (a table, a DICOM header) gives none."""
    p.add_argument("--pixel-size", type=float, metavar="MM",
                   help="pixel size in mm for frames whose dataset (a table, a DICOM header) "
                        "gives none (where it gives another, a warning counts those frames)")
    _note_defaults(p, "pixel_size")


def model_args(p: argparse.ArgumentParser) -> None:
    """How a model runs: batch size, valid-model tile, device, threads and precision (predict,
    measure, evaluate; :func:`loaded_model` applies the threads)."""
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="frames (or tiles) per batch; a window larger than a training "
                   "input (a valid model's whole frame, a frame at its own resolution) fills "
                   "a batch by its pixels, at least one a batch (default 4)")
    p.add_argument("--tile", type=positive_int, metavar="N",
                   help="valid model: output tile side for prediction, rounded up to a side "
                   "the model produces, at least 20 at depth 4, and at most the "
                   "canvas (default: one window over the whole canvas)")
    p.add_argument("--device", default="auto",
                   help=f"{DEVICE_NAMES} (mps: a Mac's GPU; checkpoints only)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="intra-op threads on the CPU (torch's for a checkpoint, ONNX "
                        "Runtime's for an ONNX model; default: every core, which a shared "
                        "machine's other jobs slow down)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="checkpoints only (auto: bf16 where the hardware has it)")
    _note_defaults(p, "batch_size", "tile", "device", "threads", "precision")


# ---------------------------------------------------------------- export
def _cmd_export(a: argparse.Namespace) -> int:
    from .export import export_onnx

    path = export_onnx(a.checkpoint, a.onnx, opset=a.opset, tile=a.tile)
    print(f"exported {a.checkpoint} -> {path} (checked against PyTorch on ONNX Runtime)")
    if a.tile is not None:
        from .checkpoint import load_checkpoint

        variant = load_checkpoint(a.checkpoint).model.variant
        if variant != "valid":
            print(f"note: --tile applies to the valid model; this {variant} model is exported "
                  "with dynamic height and width", file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------- measure
def _cmd_measure(a: argparse.Namespace) -> int:
    from .frames import collect_frames
    from .measure_files import measure_frames

    with json_on_failure(a, a.data):
        frames = collect_frames([a.data], a.layout, a.subject_pattern, exclude=a.out)
        bar = ProgressBar("measure")

        def show(row: dict[str, Any]) -> None:      # each frame's line as it is measured
            bar.clear()    # HC where this frame carries a reference HC (see fetal_heads)
            print(format_measure_row(row, heads=fetal_heads([row])), flush=True)

        try:
            with loaded_model(a) as predictor:
                summary, rows = measure_frames(predictor, frames, a.pixel_size, a.out,
                                               progress=bar, skip_unreadable=True,
                                               overlay=a.overlay,
                                               overrides=options_given(a),
                                               on_row=show if a.out is None and not a.json
                                               else None)
        except UltrasegError as e:
            if e.result is not None:   # measured, but the table could not be written
                _print_measurements(a, *e.result)
                report_unreadable(e.result[0]["unreadable"], len(frames))
            raise
    _print_measurements(a, summary, rows)
    return report_unreadable(summary["unreadable"], len(frames))


def _print_measurements(a: argparse.Namespace, summary: dict[str, Any],
                        rows: list[dict[str, Any]]) -> None:
    """The JSON object, or the summary (each frame's line, without --out, was printed as it
    was measured)."""
    if a.json:
        print(json_text({**summary, "rows": rows}))
        return
    print(format_measure_summary(summary, heads=fetal_heads(rows)))


def fetal_heads(rows: list[dict[str, Any]]) -> bool:
    """Whether the frames measured are fetal heads, their ellipse circumference a head
    circumference: where a frame carries a reference head circumference (HC18's table). Other
    data (a breast lesion) is measured the same, but the figure is not called a head's."""
    return any(r.get("hc_ref_mm") is not None for r in rows)


def format_measure_row(r: dict[str, Any], *, heads: bool = False) -> str:
    """One frame's measurement as a line: in mm where its pixel size is known, else in px;
    the circumference named HC where ``heads`` (see :func:`fetal_heads`)."""
    from .measure import has_pixel_size

    if not r["area_px"]:
        return f"{r['name']}: no object"

    def num(v: Any, unit: str, fmt: str = ".1f") -> str:
        return "n/a" if v is None else f"{v:{fmt}} {unit}"

    hc = "HC" if heads else "ellipse circumference"
    if has_pixel_size(r):
        return (f"{r['name']}: area {num(r['area_mm2'], 'mm2')}, "
                f"perimeter {num(r['perimeter_mm'], 'mm')}, {hc} {num(r['hc_mm'], 'mm')}, "
                f"axes {num(r['major_axis_mm'], 'x')} {num(r['minor_axis_mm'], 'mm')}")
    return (f"{r['name']}: area {num(r['area_px'], 'px', '.0f')}, "
            f"perimeter {num(r['perimeter_px'], 'px')}, {hc} {num(r['hc_px'], 'px')}")


def format_measure_summary(s: dict[str, Any], *, heads: bool = False) -> str:
    """The measure summary as a few lines (``heads``: as in :func:`format_measure_row`)."""
    from .measure import hc_interval_words, touching_edge_words

    lines = [f"measured {s['n']} frames ({s['n_with_object']} with an object, "
             f"{s['n_with_pixel_size']} with a known pixel size)"]
    if s.get("n_multiple_regions"):
        n = s["n_multiple_regions"]
        lines.append(f"{n} frame{'s' if n != 1 else ''} held more than one region; the largest "
                     "was measured")
    if s["n_with_object"] and not s["n_with_pixel_size"]:
        lines.append("no pixel size known: figures in px (--pixel-size MM gives mm)")
    if s["hc_mm_mean"] is not None:
        lines.append(f"mean {'head' if heads else 'ellipse'} circumference "
                     f"{s['hc_mm_mean']:.2f} mm")
    if s["hc_mae_mm"] is not None:
        edge = s.get("n_reference_touches_edge")
        lines.append(f"HC error against the {s['n_with_reference']} references: mean absolute "
                     f"{s['hc_mae_mm']:.2f} mm{hc_interval_words(s)}, mean signed "
                     f"{s['hc_bias_mm']:+.2f} mm"
                     + (f" ({touching_edge_words(edge)}: fitted on "
                        f"{'its' if edge == 1 else 'their'} visible outline)" if edge else ""))
    if s.get("n_reference_missed"):
        lines.append(f"{s['n_reference_missed']} frames with a reference HC had no head found: "
                     "not in the error")
    if s.get("csv"):
        lines.append(f"per-image measurements: {s['csv']}")
    from .report import INTENDED_USE

    lines.append(INTENDED_USE)
    return "\n".join(lines)


def add_commands(sub: Any, layout_args: Callable[..., None]) -> None:
    """Register predict, export and measure on the ``ultraseg`` parser."""
    p = sub.add_parser(
        "predict", help="segment images: one mask per image at its original size",
        description="Write OUT/STEM_mask.png (0/255, the image's width and height) for every "
                    "image of the inputs; optional overlays, probability maps and a Kaggle "
                    "submission CSV.")
    p.add_argument("model", type=path_arg,
                   help="a checkpoint (best.ckpt) or an exported .onnx file")
    p.add_argument("inputs", nargs="+", metavar="INPUT", type=path_arg,
                   help="image files or folders (any dataset layout, labelled or not)")
    p.add_argument("--out", required=True, type=path_arg, help="output folder (created)")
    p.add_argument("--format", default="png", choices=["png", "tif"],
                   help="mask file format (default %(default)s)")
    p.add_argument("--overlay", action="store_true",
                   help="also write STEM_overlay.png: predicted outline orange, ground truth "
                   "blue (a labelled dataset's), yellow where they meet")
    p.add_argument("--probabilities", action="store_true",
                   help="also write STEM_prob.png: the probability map the mask is "
                        "thresholded from, as a 16-bit greyscale PNG (0..65535 for 0..1, the "
                        "image's size): averaged with the flipped frame's where tta is used "
                        "(not with --raw or --no-tta), after a presence head's gate; the "
                        "threshold and rules never apply to it, --raw or not")
    p.add_argument("--rle", metavar="FILE.csv", type=path_arg,
                   help="write a Kaggle submission (img,pixels; run-length encoded masks); "
                        "of a Kaggle root with train/ and test/, only the test frames")
    model_args(p)
    postprocess_args(p)
    layout_args(p, label="with --overlay: draw label K of a label mask as the ground truth "
                         "(default: the label the checkpoint was trained on)",
                fill="with --overlay: the masks are drawn closed contours: draw them filled "
                     "(default: as the checkpoint was trained; the hc18 layout always fills)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "export", help="export a checkpoint to ONNX (runs without PyTorch)",
        description="Write an ONNX model (input 'image' (N, 1, H, W) float32, output "
                    "probabilities) that carries the checkpoint's metadata.")
    p.add_argument("checkpoint", type=path_arg, help="a checkpoint (best.ckpt)")
    p.add_argument("--onnx", required=True, metavar="FILE.onnx", type=path_arg,
                   help="the file to write")
    p.add_argument("--opset", type=positive_int, metavar="N",
                   help="ONNX opset written, or an error (default: the exporter's)")
    p.add_argument("--tile", type=positive_int, metavar="N",
                   help="valid model: output tile side of the fixed-size graph, rounded up "
                   "to a side the model produces, at least 20 at depth 4, as predict rounds "
                   "it (default: the tile the checkpoint predicts its canvas with)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "measure", help="area, perimeter and fitted-ellipse circumference (a fetal head's "
                        "HC) of the segmented object",
        description="Segment each image and measure its object: area, perimeter and "
                    "fitted-ellipse circumference, in mm where the pixel size is known, with "
                    "the error against reference circumferences where the dataset has them.")
    p.add_argument("model", type=path_arg,
                   help="a checkpoint (best.ckpt) or an exported .onnx file")
    p.add_argument("data", type=path_arg, help="a dataset folder (e.g. HC18) or one image file")
    p.add_argument("--out", type=path_arg, help="folder for measurements.csv")
    p.add_argument("--overlay", action="store_true",
                   help="with --out: also write STEM_measure.png, the frame with the object's "
                        "outline (orange) and the ellipse measured on it (bluish green)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object: the "
                   "summary and rows (frames skipped: 'unreadable'), or where an error stops "
                   "the command {path, failed, problems, problem_lines}")
    pixel_size_arg(p)
    model_args(p)
    postprocess_args(p)
    layout_args(p, label=None)  # measures the prediction; no ground truth to choose from
    p.set_defaults(func=_cmd_measure)
