"""``ultraseg demo``: the whole flow on phantom data, on a fresh machine with no data at all."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from .config import RunConfig, TrainConfig, merge, preset
from .errors import UltrasegError, command_line

log = logging.getLogger(__name__)

TRAIN_FRAMES, TEST_FRAMES, FRAME_SIZE = 300, 60, 256
TRAIN_SEED, TEST_SEED = 0, 1


def run_demo(out: str | Path, progress: Callable[[dict[str, Any]], None] | None = None,
             minutes: float = 2.5) -> dict[str, Any]:
    """Make phantom frames, train the 'demo' preset on them, evaluate on unseen phantom frames.

    Writes the run folder (``best.ckpt``, ``report.html``, ...) directly in ``out``, the phantom
    data in ``out/data`` and the evaluation in ``out/evaluation``. Returns the evaluation summary.
    """
    from . import report
    from .evaluate import evaluate
    from .fileio import output_lock
    from .phantom import make_dataset
    from .predict import load
    from .io.outputs import check_no_foreign_images
    from .run_folder import RUN_FILES, holds_run
    from .train import train

    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) \
            or not 0 < minutes < float("inf"):       # before any phantom frame is written
        raise UltrasegError(f"--minutes must be a number of minutes > 0, got {minutes!r}")
    out = Path(out)
    with output_lock(out, "demo"):       # the whole demo: train and evaluate included
        train_data, test_data = out / "data" / "train", out / "data" / "unseen"
        cfg = merge(preset("demo"), {"data": {"path": str(train_data), "layout": "folders",
                                              "cache_dir": ""},
                                     "train": {"time_limit_s": 60.0 * minutes}})
        resume = holds_run(out)
        if resume:                                        # before any phantom frame is written
            _check_unfinished_demo(out, cfg)
            log.warning("%s: a demo stopped before it finished: going on with its run", out)
        check_no_foreign_images(out, RUN_FILES)           # train would refuse it after the data
        for folder, n, seed in ((train_data, TRAIN_FRAMES, TRAIN_SEED),
                                (test_data, TEST_FRAMES, TEST_SEED)):
            if _holds_phantom(folder, n):
                # a set a demo stopped before its first epoch had written (the same seeds give
                # the same bytes): used again, not refused as files in the way (a set it was
                # stopped while writing is no half set: make_dataset moves it in when whole)
                log.info("using the phantom frames an earlier demo wrote in %s", folder)
            else:
                make_dataset(folder, n=n, size=FRAME_SIZE, seed=seed)
        result = train(None if resume else cfg, out, resume=resume, progress=progress,
                       time_remedy=_time_remedy)
        if progress:
            progress({"event": "stage", "message": "evaluating on unseen phantom frames"})
        summary, _ = evaluate(load(out / "best.ckpt"), test_data, "folders",
                              out=out / "evaluation")
        report.write_html(out, title="ultraseg demo (phantom data)", summary=result.summary,
                          config=RunConfig.load(out / "config.json").to_dict(),   # as recorded
                          history=result.history, best_epoch=result.best_epoch,
                          evaluation=evaluation_table(summary), warnings=result.warnings)
        note = _time_note(out, result.history, result.stopped,
                          RunConfig.load(out / "config.json").train)
        if note:
            log.warning("%s", note)
        log.info("demo finished: %s", summary)
        return summary


def _time_remedy(done: int, epochs: int) -> str:
    """What a warning that the demo's model has not learnt advises where its time limit ended
    training after ``done`` of its ``epochs`` (train's names flags the demo does not take)."""
    return (f"the time limit ended training after {done} of its {epochs} epochs: more "
            "--minutes, as the demo's last warning says")


def _time_note(out: Path, history: list[dict[str, Any]], stopped: str | None,
               tc: TrainConfig) -> str | None:
    """Where the time limit ended the demo's training before its epochs (the last perhaps cut
    short), a note saying so, naming the ``ultraseg demo`` that gives them about the time they
    take at the pace seen (an epoch cut short counted as the share of it trained; a quarter
    more, in whole minutes), into a new folder (this one now holds a finished demo, which the
    demo refuses); else None."""
    from .finish import cut_by_time_limit, epochs_trained

    if not (tc.time_limit_s and cut_by_time_limit(history, stopped, tc.epochs)):
        return None
    minutes = tc.time_limit_s / 60.0
    more = max(math.ceil(minutes * tc.epochs / epochs_trained(history, stopped) * 1.25),
               math.floor(minutes) + 1)
    cut = "" if history[-1]["complete"] else f", epoch {len(history)} cut short"
    out = Path(os.path.abspath(out))    # `--out .` has no name to change, `a/..` the wrong one
    again = command_line("ultraseg", "demo", ("--out", out.with_name(f"{out.name}-{more}min")),
                         "--minutes", str(more))
    return (f"the time limit (--minutes {minutes_arg(minutes)}) ended training after "
            f"{len(history)} of the demo's {tc.epochs} epochs{cut}: the model had too little "
            f"time to learn on this machine; `{again}` gives it about the time for all "
            f"{tc.epochs}")


#: The words the report's Evaluation table gives evaluate's summary keys (units said); a key
#: not here is shown with spaces for its underscores.
EVALUATION_LABELS = {
    "dice_mean": "Dice, all frames (0-1)",
    "dice_nonempty_mean": "Dice, frames with a structure (0-1)",
    "dice_mean_ci95": "Dice, all frames: 95 % interval (subjects resampled)",
    "dice_nonempty_mean_ci95": "Dice, frames with a structure: 95 % interval (subjects "
                               "resampled)",
    "dice_mean_ci95_method": "Dice, the 95 % intervals: method",
    "iou_mean": "IoU (mean, 0-1)", "precision_mean": "precision (mean, 0-1)",
    "recall_mean": "recall (mean, 0-1)",
    "hd95_median": "HD95, median (px)",
    "hd95_n": "frames in the HD95 median (a structure in truth and prediction)",
    "hd95_mm_median": "HD95, median (mm)", "hd95_mm_n": "frames in the HD95 median (mm)",
    "empty_correct_rate": "empty frames predicted empty (share, 0-1)",
    "n_subjects": "subjects", "postprocess": "post-processing", "label": "label scored",
    "fill_outlines": "outline masks filled", "data": "dataset",
    "ultraseg_version": "ultraseg version", "torch_version": "PyTorch version",
    "onnxruntime_version": "ONNX Runtime version", "precision": "numeric precision",
    "hc_mae_mm": "head-circumference error, mean absolute (mm)",
    "hc_bias_mm": "head-circumference error, mean signed (mm)",
    "hc_n": "frames in the head-circumference error",
    "hc_missed": "frames with a reference and no head found",
    "hc_touches_edge": "frames in the head-circumference error whose head touches the edge",
    "hc_mae_mm_ci95": "head-circumference error, mean absolute: 95 % interval (subjects "
                      "resampled, mm)",
    "hc_mae_mm_ci95_method": "head-circumference error, the 95 % interval: method",
    "hc_n_subjects": "subjects in the head-circumference error",
}


def evaluation_table(summary: dict[str, Any]) -> dict[str, Any]:
    """The report's Evaluation table of an evaluation ``summary`` on the unseen phantom
    frames: each figure labelled in words with its unit (:data:`EVALUATION_LABELS`), the
    post-processing as words; the raw block, side and checkpoint left out (the Summary
    table above names the checkpoint), and the mm figures and ``by_class`` where they do not
    apply (null)."""
    from .evaluate import MM_KEYS, format_interval
    from .report import postprocess_words

    def shown(key: str, value: Any) -> Any:
        if key.endswith("_ci95"):       # (mm to 2 decimals, as the HC error is printed)
            return format_interval(value, 2 if "_mm_" in key else 3)
        if key == "postprocess" and isinstance(value, dict):
            return postprocess_words(value)
        return value

    return {"frames (unseen phantom, seed 1)": summary["n"],
            **{EVALUATION_LABELS.get(k, k.replace("_", " ")): shown(k, v)
               for k, v in summary.items()
               if k not in ("raw", "n", "subset", "split", "checkpoint")
               and not (k in MM_KEYS and v is None)       # (no pixel size: no mm rows)
               and not (k == "by_class" and v is None)}}  # (no class: none by class)


def minutes_arg(minutes: float) -> str:
    """``--minutes`` as typed to get ``minutes`` back (to the tolerance a demo is resumed
    with): ten significant digits, no exponent for the usual values."""
    return f"{minutes:.10g}"


def goes_on(out: str | Path) -> bool:
    """Whether ``out`` holds a run the demo goes on with: one that saved an epoch, and whose
    demo stopped before its evaluation was written (after that, the folder is a finished
    demo's, which the demo refuses)."""
    out = Path(out)
    return not (out / "evaluation" / "summary.json").exists() and (out / "last.ckpt").is_file()


def _check_unfinished_demo(out: Path, cfg: RunConfig) -> None:
    """Refuse ``out``, which holds a run, unless it is this demo's (its config.json asks for
    ``cfg``'s recipe) stopped before the demo's evaluation was written: the demo goes on with
    it. One that differs in its time limit alone is named with its --minutes (compared to a
    millionth, as :func:`minutes_arg` prints it)."""
    from .run_folder import recipe_differences

    own = None
    if goes_on(out):
        try:
            own = RunConfig.load(out / "config.json")
        except (UltrasegError, OSError):
            pass
    limit = None if own is None else own.train.time_limit_s
    if limit is None or recipe_differences(
            replace(cfg, train=replace(cfg.train, time_limit_s=limit)), own):
        raise UltrasegError("already holds a training run (a finished demo's, another "
                            "demo's or another); choose another --out", out)
    mine = cfg.train.time_limit_s
    if mine is None or not math.isclose(mine, limit, rel_tol=1e-6):
        minutes = minutes_arg(limit / 60.0)
        raise UltrasegError(f"holds a demo stopped before it finished, run with --minutes "
                            f"{minutes}: `{command_line('ultraseg', 'demo', ('--out', out))} "
                            f"--minutes {minutes}` goes on with it", out)


def _holds_phantom(folder: Path, n: int) -> bool:
    """Whether ``folder`` holds exactly the file names of a phantom set of ``n`` frames."""
    from .phantom import frame_name

    names = [frame_name(i) for i in range(n)]
    try:
        return ({p.name for p in (folder / "images").iterdir()} == {f"{s}.png" for s in names}
                and {p.name for p in (folder / "masks").iterdir()}
                == {f"{s}_mask.png" for s in names})
    except OSError:
        return False
