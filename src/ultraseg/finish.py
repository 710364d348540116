"""The end of a run: the validation frames scored at their original size, the post-processing
(test-time augmentation included) chosen on them, the head-circumference boundary offset
calibrated on those with a reference, and the report's figures, summary and notes.

:func:`_finish` does it once training has stopped, from the best checkpoint, and returns the
run's :class:`TrainResult`; :mod:`ultraseg.train` calls it (and draws a finished run's
figures again from here). A time-limited run's choice keeps to its deadline
(:func:`ultraseg.budget._end_s`).
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .budget import _end_s
from .checkpoint import load_checkpoint, save_checkpoint
from .config import PostprocessConfig, PreprocessConfig, RunConfig, _number
from .data import Arrays, SplitCopies, union_note
from .errors import UltrasegError, command_line, is_out_of_memory
from .io import select_label
from .metrics import EMPTY_RULE, dice
from .model import build_model
from .predict import Predictor
from .report import postprocess_words, sampled_rows
from .runtime import torch_runner

# the end of a training run logs as training does: a notebook that sets ultraseg.train's
# level (or a handler on it) sees these lines too, as before they had a module of their own
log = logging.getLogger("ultraseg.train")

Progress = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    #: The best epoch's validation Dice (None: no validation split), as best.ckpt records it.
    best_dice: float | None
    epochs_run: int
    seconds: float
    stopped: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)   # (as summary:
    # out of the repr a notebook shows, which would grow with the epochs)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    val_dice_original: float | None = None
    val_dice_postprocessed: float | None = None
    summary: dict[str, Any] = field(default_factory=dict, repr=False)
    world_size: int = 1
    is_main: bool = True   # False in ranks > 0 of a torchrun job, which write and report nothing
    #: Post-processed validation Dice over the frames whose truth holds a structure (None:
    #: none does, or no validation split).
    val_dice_nonempty: float | None = None
    #: The validation frames of empty truth, and those of them predicted empty (None: no
    #: validation split, or a run finished before these were recorded).
    val_empty_frames: int | None = None
    val_empty_right: int | None = None
    #: The validation head-circumference error, mean absolute (mm), with the boundary offset
    #: chosen on them, the frames it is over (those where a head was found) and the frames
    #: with a reference HC, those with no head found included (None: no frames with a
    #: reference HC, fewer than choose the offset, or a run that did not record them).
    val_hc_mae_mm: float | None = None
    val_hc_frames: int | None = None
    val_hc_reference_frames: int | None = None
    #: The warnings the run gave while training (train.log's at WARNING and above), each
    #: once in order, as report.html shows them; a resumed run's, those before it too.
    warnings: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        # absolute, as config.json's data path: a relative 'runs/x' read after the caller (a
        # notebook) changes folder names another folder
        self.run_dir = Path(self.run_dir).resolve()


def cut_by_time_limit(history: list[dict[str, Any]], stopped: str | None, epochs: int) -> bool:
    """Whether the time limit ended training before its ``epochs`` (the last epoch trained
    perhaps cut short): ``history`` and ``stopped`` as :class:`TrainResult` has them."""
    return bool(history and stopped and stopped.startswith("time limit")
                and (len(history) < epochs or not history[-1]["complete"]))


def time_limit_stop(epoch: int, batch: int, batches: int) -> str:
    """How train records a stop the time limit made during ``epoch`` after ``batch`` of its
    ``batches`` (read back by :func:`epochs_trained`: one format for both)."""
    return f"time limit reached during epoch {epoch} (batch {batch}/{batches})"


def epochs_trained(history: list[dict[str, Any]], stopped: str | None) -> float:
    """The epochs ``history`` trained, a last one the time limit cut short counted as the
    share of its batches trained: ``stopped``'s "(batch i/n)", as :func:`time_limit_stop`
    words it (a stop that does not say, from a checkpoint older than it, counts it whole)."""
    if not history or history[-1]["complete"]:
        return float(len(history))
    said = re.search(r"\(batch (\d+)/(\d+)\)", stopped or "")
    share = int(said[1]) / int(said[2]) if said and int(said[2]) else 1.0
    return len(history) - 1 + share


#: The fewest validation frames a post-processing choice the time limit cut short is made on
#: (or more than half of them, where there are fewer than 20): on fewer the defaults are kept.
MIN_CHOICE_FRAMES = 10


def _finish(cfg: RunConfig, out: Path, ds, arrays: Arrays, train_idx: np.ndarray,
            val_idx: np.ndarray, device: torch.device, dtype: torch.dtype | None,
            history: list[dict[str, Any]], best_epoch: int, best_dice: float | None,
            stopped: str | None, t0: float, meta: Callable, progress: Progress,
            choosing: bool = True, copies: SplitCopies | None = None,
            test_idx: np.ndarray | None = None,
            warnings: Callable[[], list[str]] = list, *,
            held: np.ndarray, time_remedy: Callable[[int, int], str] | None = None
            ) -> TrainResult:
    """Choose post-processing (test-time augmentation included) on the validation frames at
    their original size, and where they carry reference head circumferences the boundary
    offset measurements use (:func:`_calibrate_measure`); write the report.

    Without validation frames the post-processing stays at its defaults, the Dice figures are
    None and the report has no prediction figure; so does it where they hold no structure
    (``choosing`` False: they are scored, but choose nothing). The report shows the run's
    ``warnings()`` and best.ckpt keeps them (a report written again from it shows them).
    ``held``: whether each frame's mask holds a structure (:func:`ultraseg.data._held`).
    ``time_remedy``: see :func:`ultraseg.train.train`.
    """
    if len(val_idx):
        progress({"event": "stage", "message": "choosing post-processing on the validation split"})
    best = load_checkpoint(out / "best.ckpt")
    model = build_model(cfg.model)
    model.load_state_dict(best.state_dict)
    predictor = Predictor(torch_runner(model, device, dtype), cfg.model, cfg.preprocess,
                          batch_size=cfg.train.batch_size)
    by_name = {s.name: s for s in ds.labelled}
    val_samples = [by_name[arrays.names[i]] for i in val_idx]
    # a time-limited run keeps _end_s for the checkpoint and the report after the choice
    limit = cfg.train.time_limit_s
    deadline = t0 + limit - _end_s(limit) if limit else None
    seen = None
    if val_samples:
        try:
            seen = _score_validation(predictor, val_samples, cfg,
                                     cfg.train.tune_postprocess and choosing, deadline,
                                     progress=progress)
        except (MemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            raise UltrasegError(
                f"out of memory choosing the post-processing on the {len(val_samples)} "
                f"validation frames at their original size ({str(e).splitlines()[0]}); "
                f"training is done and {out / 'best.ckpt'} holds the default post-processing: "
                "fewer or smaller validation frames need less (a new run with a lower "
                "--val-fraction)", out) from e
    pp = seen.pp if seen else PostprocessConfig()
    raw = seen.raw if seen else None
    scores = seen.scores if seen else []
    tuned = float(np.mean(scores)) if seen else None
    nonempty, empty_right, n_empty = _empty_figures(seen) if seen else (None, None, None)
    trend = _loss_trend(history, flags=time_remedy is None)    # (the demo takes no --lr)
    if trend:
        log.warning("%s: %s", out, trend)
    if seen:
        chosen = bool(cfg.train.tune_postprocess and choosing and not seen.not_chosen)
        log.info("validation Dice at original resolution: %.4f raw (threshold 0.5, no flip), "
                 "%.4f with %s", raw, tuned, postprocess_words(pp.to_dict()))
        cut = time_remedy and cut_by_time_limit(history, stopped, cfg.train.epochs)
        _warn_if_nothing_found(out, seen, pp, tuned, lr=bool(trend and time_remedy is None),
                               chosen=chosen, flags=time_remedy is None,
                               remedy=time_remedy(len(history), cfg.train.epochs)
                               if time_remedy and cut else None)
    ceiling = _perfect_ceiling(seen, pp) if seen else None
    measure_meta = dict(best.meta.get("measure") or {})
    if seen and cfg.train.tune_postprocess and (deadline is None
                                                 or time.monotonic() < deadline):
        measure_meta = _calibrate_measure(seen.hc_samples, seen.hc_regions,
                                          seen.hc_probs(pp), pp, cfg, measure_meta)
    elif seen and cfg.train.tune_postprocess and seen.hc_samples:
        log.warning("head-circumference boundary offset not chosen on the %d validation frames "
                    "with a reference: the time limit came first; the outlines' half-width "
                    "kept, no validation HC error", len(seen.hc_samples))
    seconds = time.monotonic() - t0
    if limit and seconds > limit:   # (a step under way, and what must follow it, finish past it)
        log.warning("the run took %.0f s against its %g s time limit: what was under way as "
                    "it ran out (a training step, a validation, the scoring of the validation "
                    "frames) finished past it", seconds, limit)
    metrics = dict(best.meta["metrics"], val_dice_original=raw, val_dice_postprocessed=tuned,
                   val_dice_nonempty=nonempty, val_empty_frames=n_empty,
                   val_empty_predicted_empty=empty_right,
                   val_chose=choosing, train_seconds=round(seconds, 1),
                   epochs_run=len(history), stopped=stopped,
                   world_size=cfg.train.world_size, device=str(device),
                   precision="bf16" if dtype else "fp32", warnings=warnings())

    from . import report

    def figure(v: float | None) -> float | str:
        return "n/a (no validation split)" if v is None or math.isnan(v) else round(v, 4)

    summary = {
        "dataset": f"{ds.root} ({ds.layout})",
        "frames (train / val / test)": _frames_row(out, arrays.subjects, train_idx, val_idx,
                                                   test_idx),
        **({"target": f"labels {list(arrays.labels)} as one structure (their union; --label "
                      "K trains label K alone)"}
           if union_note(arrays.labels, cfg.preprocess.label) else {}),
        **({"copies across the split": f"{copies.identical} identical and {copies.near} "
                                           "near-duplicate frame pairs on two sides (train.log "
                                           f"names them): {copies.consequence()}"}
           if copies else {}),
        "best epoch": (_with_note(best_epoch, _never_improved(best_epoch, history, len(val_idx)))
                       if seen and choosing else
                       f"{best_epoch} (the last: no validation split)" if not seen else
                       f"{best_epoch} (the last: no validation mask holds a structure, so "
                       f"validation chose nothing)"),
        "best val Dice (canvas)": figure(best_dice),
        report.RAW_DICE_ROW: figure(raw), "val Dice, post-processed": figure(tuned),
        "val Dice, non-empty frames (post-processed)":
            figure(nonempty) if nonempty is not None or not seen else
            "n/a (no validation frame holds a structure)",
        "empty validation frames predicted empty":
            (f"{empty_right} of {n_empty}" if n_empty else "n/a (no validation frame is empty)")
            if seen else figure(None),
        **({"validation frames scored at original size":
            f"{len(seen.frames)} of {seen.of} (a random sample: the time limit had passed; the "
            "figures at original size are over these)"}
           if seen and seen.frames is not None and len(seen.frames) < seen.of else {}),
        "empty rule": EMPTY_RULE,
        "post-processing": postprocess_words(pp.to_dict()) + (
            f" (the defaults: not chosen: {seen.not_chosen})" if seen and seen.not_chosen else
            "" if choosing or not seen else " (the defaults: not chosen)")
                           + (f"; {ceiling}" if ceiling else ""),
        **({"head-circumference boundary offset (px)":
            _offset_row(measure_meta)} if "offset_frames" in measure_meta else {}),
        **({"validation head-circumference error, mean absolute (mm)":
            f"{measure_meta['val_hc_mae_mm']:.2f} ({measure_meta['val_hc_mae_mm_start']:.2f} "
            "with the outlines' half-width)" + _hc_frames(measure_meta, " validation")}
           if "val_hc_mae_mm" in measure_meta else {}),
        **report.time_rows(seconds, history),
        "device / precision": f"{device} / {'bf16' if dtype else 'fp32'}"
                              + (f" ({cfg.train.world_size} processes)"
                                 if cfg.train.world_size > 1 else ""),
        "stopped early": stopped or "no", "checkpoint": str(out / "best.ckpt"),
    }
    save_checkpoint(out / "best.ckpt", best.state_dict,
                    meta(dict(metrics, report=summary), pp, measure_meta))

    progress({"event": "stage", "message": "writing the report"})
    report.plot_curves(history, out / "curve.png", best_epoch=best_epoch,
                       chosen=choosing or not seen, n_val=len(val_idx))
    _plot_samples(out, arrays, train_idx, held)
    if seen:
        _plot_predictions(out, predictor, val_samples if seen.frames is None else
                          [val_samples[i] for i in seen.frames], seen, cfg, pp, choosing)

    report.write_html(out, title=f"ultraseg run: {out.name}", summary=summary,
                      config=cfg.to_dict(), history=history, best_epoch=best_epoch,
                      warnings=warnings(),
                      captions=report.captions_for(seen is not None, choosing))
    return TrainResult(out, best_epoch, best_dice, len(history), seconds, stopped, history, pp,
                       raw, tuned, summary, world_size=cfg.train.world_size,
                       warnings=warnings(), **_validation_figures(metrics, measure_meta))


def _validation_figures(metrics: dict[str, Any], measure_meta: dict[str, Any]
                        ) -> dict[str, Any]:
    """The :class:`TrainResult` fields of the figures best.ckpt keeps in its ``metrics`` and
    ``measure`` (a run's end and a finished run resumed read them alike: the resumed run
    lost its head-circumference figures while each listed them itself)."""
    return {"val_dice_nonempty": metrics.get("val_dice_nonempty"),
            "val_empty_frames": metrics.get("val_empty_frames"),
            "val_empty_right": metrics.get("val_empty_predicted_empty"),
            "val_hc_mae_mm": measure_meta.get("val_hc_mae_mm"),
            "val_hc_frames": measure_meta.get("offset_frames"),
            "val_hc_reference_frames": measure_meta.get("reference_frames")}


def _offset_row(measure_meta: dict[str, Any]) -> str:
    """The report's boundary offset: '2.02 (chosen on 12 validation frames; the outlines'
    half-width 1.27; px on frames 800 px long, scaled with a frame's longer side)', the last
    part where the checkpoint says at which frame side its pixels are."""
    from .measure import side_words

    side = side_words(measure_meta)
    return (f"{measure_meta['boundary_offset_px']} (chosen on {measure_meta['offset_frames']} "
            f"validation frames; the outlines' half-width "
            f"{measure_meta['outline_half_width_px']}{f'; px{side}' if side else ''})")


def _hc_frames(measure_meta: dict[str, Any], which: str = "") -> str:
    """', over N of M{which} frames with a reference (K with no head found)' where
    ``measure_meta`` records the frames with a reference (a run from before did not: '')."""
    if "reference_frames" not in measure_meta:
        return ""
    from .measure import over_frames_with_a_reference

    return ", " + over_frames_with_a_reference(measure_meta["offset_frames"],
                                               measure_meta["reference_frames"], which)


def _frames_row(out: Path, subjects: Sequence[str], train_idx: np.ndarray, val_idx: np.ndarray,
                test_idx: np.ndarray | None) -> str:
    """The report's row of frames and subjects on each side of the split, saying what the
    held-out side is for and how it is scored."""
    def side(idx: np.ndarray) -> str:
        n = len({subjects[i] for i in idx})
        return f"{len(idx)} ({n} subject{'s' * (n != 1)}"

    test_idx = test_idx if test_idx is not None else np.arange(0)
    best, split = out / "best.ckpt", out / "split.json"
    command = command_line("ultraseg", "evaluate", best, "DATA", ("--split", split),
                           "--subset", "test")
    held_out = (f"{side(test_idx)}; not used in training or selection: `{command}` scores "
                f"them; in Python, evaluate({str(best)!r}, DATA, split_file={str(split)!r}, "
                "subset='test'))" if len(test_idx) else
                "0 (none held out: --test-fraction holds subjects out; in Python, "
                "train.test_fraction)")
    return f"{side(train_idx)}) / {side(val_idx)}) / {held_out}"


def _empty_figures(seen: _Validation) -> tuple[float | None, int, int]:
    """Of the validation frames ``seen`` scored under the post-processing chosen: the mean Dice
    over those whose truth holds a structure (None: none does), the frames of empty truth
    predicted empty, and the frames of empty truth (the all-frames mean scores those right
    1 by the empty rule: with many of them it says little of the structures found)."""
    full = [d for d, e in zip(seen.scores, seen.empty) if not e]
    empty_areas = [a for a, e in zip(seen.areas, seen.empty) if e]
    return (float(np.mean(full)) if full else None, sum(a == 0 for a in empty_areas),
            len(empty_areas))


def _never_improved(best_epoch: int, history: list[dict[str, Any]],
                    n_val: int | None = None) -> str | None:
    """Where validation chose ``best_epoch`` of the epochs run (``history``'s rows) and the
    complete epochs after it, none better, are at least 2 and a quarter of the complete ones:
    a phrase saying so (curve.png alone showed it), else None. An epoch the time limit cut
    short (``complete`` False: a few batches, maybe validated on a sample) is not counted, nor
    one validated on a sample of the ``n_val`` validation frames (it could not be chosen)."""
    full = [bool(r.get("complete", True)) and not sampled
            for r, sampled in zip(history, sampled_rows(history, n_val))]
    after = sum(f for r, f in zip(history, full) if int(r["epoch"]) > best_epoch)
    if after < max(2, sum(full) / 4):
        return None
    cut = len(history) - best_epoch - after     # cut short after the kept epoch
    return (f"validation never improved after epoch {best_epoch} of {len(history)}: "
            + (f"the {after} full epochs after it did not help" if cut else
               f"the last {after} epochs did not help"))


def _with_note(value: Any, note: str | None) -> Any:
    """A summary cell: ``value``, followed by ``note`` in brackets where there is one."""
    return f"{value} ({note})" if note else value


#: An epoch's mean training loss above which the learning rate is called too high: the losses
#: (bce, dice, their sum, a presence head's) of a run that learns stay within a few units.
LOSS_BOUND = 100.0


def _loss_trend(history: list[dict[str, Any]], flags: bool = True) -> str | None:
    """What the epochs' mean training losses say of the learning rate, or None: one that
    reached :data:`LOSS_BOUND` or rose above 10 times the first epoch's (too high), or one
    that moved less than 1 % from the first over 3 epochs or more (too small). ``flags``:
    name train's --lr as the remedy (not where the caller takes none: the demo)."""
    lower, higher = (" (a lower --lr)", " (a higher --lr)") if flags else ("", "")
    losses = [(int(r["epoch"]), float(r["train_loss"])) for r in history
              if _number(r.get("train_loss")) and math.isfinite(float(r["train_loss"]))]
    if not losses:
        return None

    def words(v: float) -> str:
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"

    (first_epoch, first), (top_epoch, top) = losses[0], max(losses, key=lambda r: r[1])
    if top > LOSS_BOUND:
        return (f"the training loss reached {words(top)} (epoch {top_epoch}), far above the few "
                f"units of a run that learns: the learning rate is likely too high{lower}")
    if top_epoch != first_epoch and top > 10 * first:
        return (f"the training loss rose from {words(first)} (epoch {first_epoch}) to "
                f"{words(top)} (epoch {top_epoch}): the learning rate is likely too "
                f"high{lower}")
    if len(losses) >= 3 and max(abs(v - first) for _, v in losses) < 0.01 * abs(first):
        return (f"the training loss hardly moved over {len(losses)} epochs ({words(first)} to "
                f"{words(losses[-1][1])}): the learning rate may be too small{higher}")
    return None


#: Of the validation frames holding a structure, the share with none predicted from which
#: the model is said to find nothing; of all of them, the share marked over half their pixels
#: from which it is said to mark nearly everything.
MISSED_SHARE, MARKED_SHARE = 0.9, 0.9
#: The fewest validation frames holding a structure on which :data:`MISSED_SHARE` is judged
#: where some frame has one predicted, and on which a late run's sample (one batch) is judged
#: at all: on 1-3 a model that learnt misses them all often enough.
MIN_MISSED_FRAMES = 5


def _warn_if_nothing_found(out: Path, seen: _Validation, pp: PostprocessConfig,
                           tuned: float | None, lr: bool = False, chosen: bool = True,
                           remedy: str | None = None, flags: bool = True) -> None:
    """Say so where the post-processing ``pp`` (``chosen`` on validation, else applied as it
    was) leaves no structure on (nearly) every validation frame holding one
    (:data:`MISSED_SHARE`, of :data:`MIN_MISSED_FRAMES` or more where a structure is predicted
    somewhere, or where the frames are a late run's sample): the all-frames Dice ``tuned`` is
    then mostly the empty frames' (0 where every frame holds a structure); and where it marks
    at least half of nearly every frame (:data:`MARKED_SHARE`) while the structures are
    much smaller (under a quarter of the frame, median). ``lr``: the training loss exploded
    or stood still (:func:`_loss_trend`), so the remedy names --lr too. ``remedy``: what the
    warnings advise in place of train's flags (the demo's, where its time limit cut it short);
    ``flags`` False: a caller that takes no --lr (the demo), so none is named."""
    rules = postprocess_words(pp.to_dict())
    with_pp = ("with the post-processing chosen" if chosen else
               "with the post-processing applied (not chosen on validation)")
    marking = remedy or ("a lower --lr, or train longer" if flags else "train longer")
    remedy = remedy or "train longer, or on more frames" + (", or a different --lr" if lr else "")
    n = len(seen.empty)
    n_full = sum(not e for e in seen.empty)
    missed = sum(not e and not a for a, e in zip(seen.areas, seen.empty))
    score = tuned if tuned is not None else math.nan
    sample = (f" ({len(seen.frames)} of the {seen.of} frames scored: the time limit had "
              "passed)" if seen.frames is not None and len(seen.frames) < seen.of else "")
    if sample and n_full < MIN_MISSED_FRAMES:
        pass    # a late run's sample of one batch: too few frames holding one to judge by
    elif n_full == n and not any(seen.areas):     # no empty frame to score 1
        log.warning("%s: %s (%s) no structure is predicted on any "
                    "%svalidation frame, and each of the %d validation frames holds one%s: val "
                    "Dice %.4f; the model has not learnt to find it (%s)", out, with_pp, rules,
                    "sampled " if sample else "", n_full, sample, score, remedy)
    elif n_full and not any(seen.areas):
        log.warning("%s: %s (%s) no %svalidation frame has a "
                    "structure predicted%s: its val Dice %.4f is the empty frames' alone (empty "
                    "rule: %s) and the %d frames with a structure score 0; the model has not "
                    "learnt to find it (%s)", out, with_pp, rules,
                    "sampled " if sample else "", sample,
                    score, EMPTY_RULE, n_full, remedy)
    elif n_full >= MIN_MISSED_FRAMES and missed >= MISSED_SHARE * n_full:
        log.warning("%s: %s (%s) no structure is predicted on %d "
                    "of the %d %svalidation frames that hold one%s: val Dice %.4f; the model "
                    "has not learnt to find it (%s)", out, with_pp, rules, missed, n_full,
                    "sampled " if sample else "", sample, score, remedy)
    if n and len(seen.frame_px) == n and len(seen.truth_px) == n:
        marked = sum(2 * a >= px for a, px in zip(seen.areas, seen.frame_px))
        truth = float(np.median([t / px for t, px in zip(seen.truth_px, seen.frame_px)]))
        if marked >= MARKED_SHARE * n and truth < 0.25:
            log.warning("%s: %s (%s) the model marks at least half "
                        "of the frame on %d of the %d %svalidation frames%s, where the structure "
                        "covers a median %.1f %% of it: it has not learnt to tell the structure "
                        "from the background (%s)", out, with_pp, rules, marked, n,
                        "sampled " if sample else "", sample, 100 * truth, marking)


def _plot_samples(out: Path, arrays: Arrays, train_idx: np.ndarray, held: np.ndarray) -> None:
    """The report's ``sample.png``: a few training frames (canvases) with their masks;
    ``held``: whether each frame's mask holds a structure (:func:`ultraseg.data._held`)."""
    from . import report

    shown = train_idx[report.pick_samples([bool(held[i]) for i in train_idx],
                                          subjects=[arrays.subjects[i] for i in train_idx])]
    report.plot_samples([arrays.images[i] for i in shown], [arrays.masks[i] > 0 for i in shown],
                        out / "sample.png",
                        [arrays.names[i] + ("" if held[i] else "\n(empty mask)")
                         for i in shown])


def _plot_predictions(out: Path, predictor: Predictor, samples: list, seen: _Validation,
                      cfg: RunConfig, pp: PostprocessConfig, chosen: bool) -> None:
    """The report's ``seg_sample.png``: a few validation frames ``samples`` (picked by their
    scores in ``seen``), their masks and the masks ``pp`` predicts; ``chosen``: whether they
    chose the epoch and the post-processing (as training decided it, on its canvases)."""
    from . import report

    shown = report.pick_examples(seen.scores, seen.empty, seen.areas)
    images, truths, masks = _shown_frames(predictor, [samples[i] for i, _ in shown], cfg, pp)
    report.plot_predictions(images, truths, masks, out / "seg_sample.png",
                            [f"{samples[i].name}\n({why})" for i, why in shown],
                            what=report.VALIDATION_TITLE if chosen else
                            report.VALIDATION_TITLE_NOT_CHOSEN)


@dataclass
class _Validation:
    """What the end of training keeps of the validation frames (in their order): no frame.

    ``hc_levels``: of the frames with a pixel size and a reference head circumference (those
    :func:`_calibrate_measure` measures on), the probabilities as :func:`_levels` of ``cuts``,
    one array per alternative (plain, then with test-time augmentation where it was tried).
    """

    pp: PostprocessConfig
    raw: float
    scores: list[float]
    areas: list[int]
    empty: list[bool]
    cuts: tuple[float, ...] = ()
    hc_samples: list = field(default_factory=list)
    hc_regions: list = field(default_factory=list)
    hc_levels: list[list[np.ndarray]] = field(default_factory=list)
    #: where the post-processing was chosen: how many structures each frame's mask holds, and
    #: the masks a rule of the grids could change were they predicted perfectly
    #: (:func:`_changeable`, cropped), for :func:`_perfect_ceiling`
    truth_parts: list[int] = field(default_factory=list)
    changeable: list[np.ndarray] = field(default_factory=list)
    not_chosen: str | None = None   # why the post-processing was not chosen (the defaults)
    frames: list[int] | None = None  # the frames scored, of ``of`` (None: all of them)
    of: int = 0
    #: each frame's pixels of structure in its mask, and its pixels (empty: not kept)
    truth_px: list[int] = field(default_factory=list)
    frame_px: list[int] = field(default_factory=list)

    def hc_probs(self, pp: PostprocessConfig) -> Iterator[np.ndarray]:
        """Those frames' probabilities as ``pp`` predicts them, one frame at a time, to the
        cuts: :func:`ultraseg.postprocess.apply` with ``pp`` makes the same masks of them."""
        values = np.asarray((0.0, *self.cuts))
        for levels in self.hc_levels:
            yield values[levels[int(pp.tta)]]


def _changeable(truth: np.ndarray, max_area: int) -> tuple[int, np.ndarray | None]:
    """How many structures (8-connected) the bool mask ``truth`` holds, and, where a rule of
    the grids could change it predicted perfectly (more than one structure, one smaller than
    ``max_area``, the grid's largest minimum area, or a hole), the mask cropped to them with a
    margin of one background pixel (else None): a crop that changes none of those, a
    background region open to the frame's border being open to the margin."""
    from .postprocess import _components, _holes

    t = np.asarray(truth, dtype=bool)
    rows, cols = np.flatnonzero(t.any(1)), np.flatnonzero(t.any(0))
    if not rows.size:
        return 0, None
    crop = np.pad(t[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], 1)
    _, sizes = _components(crop)
    n = len(sizes) - 1
    kept = n > 1 or int(sizes[1:].min()) < max_area or bool(_holes(crop).any())
    return n, crop if kept else None


_CHANGES = {"keep-largest": "keep-largest drops a second structure",
            "min-area": "min-area removes a small one", "fill-holes": "hole filling fills a hole",
            "threshold": "the threshold"}


def _perfect_ceiling(seen: _Validation, pp: PostprocessConfig) -> str | None:
    """Log how many validation masks the post-processing ``pp`` chosen on them would change
    were they predicted perfectly (:func:`ultraseg.postprocess.changes_to_truth`: a ceiling
    whatever the network predicts, as keep-largest dropping a true second lesion), and warn
    where keep-largest drops a second structure of some of them. Returns the
    report's words for it, None where it changes none (or the post-processing was not chosen
    on them: no masks kept)."""
    from collections import Counter

    from .postprocess import changes_to_truth

    n = len(seen.truth_parts)
    if not n or seen.not_chosen:    # the defaults kept: nothing was chosen on them
        return None
    rules: Counter[str] = Counter()
    changed = 0
    for truth in seen.changeable:
        found = changes_to_truth(truth, pp)
        changed += bool(found)
        rules.update(found)
    # the masks keep-largest changes, not those of several structures: with fill-holes it
    # keeps an island in a ring's hole
    dropped = rules["keep-largest"]
    if dropped:
        log.warning("keep-largest was chosen on the validation frames, and on %d of the %d "
                    "validation masks it drops a second structure (8-connected): it keeps "
                    "the largest alone, so a second one is lost on such frames even where the "
                    "network finds it (--no-keep-largest on predict, evaluate and measure "
                    "keeps it)", dropped, n)
    if not changed:
        log.info("the chosen post-processing, applied to the %d true validation masks, "
                 "changes none of them: it costs a perfect prediction nothing", n)
        return None
    why = "; ".join(f"{words} on {rules[r]}" for r, words in _CHANGES.items() if rules[r])
    text = (f"would change {changed} of {n} validation masks even if predicted perfectly "
            f"({why})")
    log.info("the chosen post-processing %s", text)
    return text


def _cuts() -> tuple[float, ...]:
    """The probabilities the choice of post-processing compares with (its grids' thresholds
    and minimum peaks, and the default threshold), ascending."""
    from .postprocess import DEFAULT_MIN_PEAKS, DEFAULT_THRESHOLDS

    return tuple(sorted({*DEFAULT_THRESHOLDS, *(q for q in DEFAULT_MIN_PEAKS if q > 0),
                         PostprocessConfig().threshold}))


def _levels(prob: np.ndarray, cuts: tuple[float, ...]) -> np.ndarray:
    """uint8 (H, W): how many of ``cuts`` (ascending, under 256) each probability reaches,
    compared as :func:`ultraseg.postprocess.apply` compares (``>=``; a NaN, which apply
    refuses, reaches none here). Each level read
    back as its cut (``(0.0, *cuts)[level]``) is at or over any of the cuts exactly where the
    probability is, and so is a component's highest: a byte a pixel for four, and the same
    masks for any threshold and minimum peak among the cuts."""
    out = np.zeros(np.shape(prob), np.uint8)
    for c in cuts:
        out += prob >= c
    return out


def _val_frames(samples: list, label: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each sample's image and its mask for ``label``, read as they are asked for."""
    for s in samples:
        image, mask = s.load()
        yield image, select_label(mask, label)


def _score_validation(predictor: Predictor, samples: list, cfg: RunConfig, tuning: bool,
                      deadline: float | None, chosen: PostprocessConfig | None = None,
                      progress: Progress | None = None) -> _Validation:
    """Predict the validation frames at their original size a batch at a time and score each
    as it comes, then forget it: its Dice with the default post-processing, and with
    ``tuning`` under every setting of :class:`ultraseg.postprocess.GridSearch`'s grids, with
    test-time augmentation too while the time limit allows (the mirrored pass runs beside the
    plain one, on the same batches); then the choice, and each frame's Dice and predicted area
    under it. Memory holds one batch of frames however many there are.

    The frames come in the random order :func:`ultraseg.postprocess.tune` scores them in:
    where another frame on the grid and then the frames not read yet, at the pace so far,
    would not be scored by ``deadline``, the choice is made on those scored so far (a random
    sample) and the frames after them are scored under it alone; where those are fewer than
    :data:`MIN_CHOICE_FRAMES` and no more than half the frames, the defaults are kept instead
    (``not_chosen`` says why). Where ``deadline`` had passed before the first frame, nothing
    is chosen and the first batch of that order alone is scored (``frames``, of ``of``): the
    figures are over those.

    Without ``tuning`` the frames are scored under ``chosen`` (the defaults where None).
    ``progress`` receives ``{"event": "validation", "frame": k, "frames": n, "elapsed": s}``
    as each frame is scored.
    """
    from .postprocess import GridSearch
    from .postprocess import apply as apply_pp
    from .preprocess import seen_region

    n = len(samples)
    order = GridSearch.order(n)
    not_chosen = None
    # past the deadline before the first frame: nothing is chosen, and one batch of the frames
    # alone (a random sample) is scored, not every frame at its original size
    late = deadline is not None and time.monotonic() >= deadline
    if late:
        scored_n = min(n, predictor.batch_size)
        if tuning:
            not_chosen = ("the time limit had passed before the validation frames were scored "
                          "at their original size")
        log.warning("post-processing %s; %d of the %d validation frames scored at their "
                    "original size (a random sample): the time limit had passed",
                    "not chosen, the defaults kept" if tuning else "not chosen here", scored_n,
                    n)
        tuning = False
    pp: PostprocessConfig | None = None if tuning else chosen or PostprocessConfig()
    search = None
    tta = False
    if tuning:
        # the grid's minimum areas follow the smallest frame: read their sizes first
        smallest = min(int(np.prod(s.load_image().shape[:2])) for s in samples)
        search = GridSearch(smallest, alternatives=2)
        tta = deadline is None or time.monotonic() < deadline
        if not tta:
            log.warning("test-time augmentation not tried: the time limit comes first")
            search.keep_alternatives(1)
    cuts = _cuts()
    measured = cfg.train.tune_postprocess
    raws, scores, areas = [0.0] * n, [0.0] * n, [0] * n
    empty, gridded = [False] * n, {}
    truth_px, frame_px = [0] * n, [0] * n
    parts, changeable = ([0] * n if tuning else []), {}
    hc: dict[int, tuple[Any, Any, list[np.ndarray]]] = {}
    t_start = time.monotonic()
    per_frame = 0.0     # seconds reading, predicting and plainly scoring a frame so far
    grid_s = 0.0        # seconds scoring frames on the grid so far
    for start in range(0, n, predictor.batch_size):
        if late and start:
            break
        rows = [int(f) for f in order[start:start + predictor.batch_size]]
        now = time.monotonic()
        if (pp is None and tta and deadline is not None and start
                and now + (now - t_start) / start * (n - start) >= deadline):
            # the rest, mirrored pass and grid, at this pace must fit
            log.warning("test-time augmentation not tried: the time limit comes first")
            tta = False
            search.keep_alternatives(1)
            for _, _, levels in hc.values():
                del levels[1:]
        t_batch = time.monotonic()
        frames = list(_val_frames([samples[f] for f in rows], cfg.preprocess.label))
        images = [image for image, _ in frames]
        plain = list(predictor.predict_proba_many(images))
        augmented = (list(predictor.tta_from_plain(images, plain))
                     if (tta if pp is None else pp.tta) else None)
        for j, f in enumerate(rows):
            raws[f] = dice(apply_pp(plain[j], PostprocessConfig()), frames[j][1])
            empty[f] = not frames[j][1].any()
            truth_px[f], frame_px[f] = int(np.count_nonzero(frames[j][1])), frames[j][1].size
        done = start + len(rows)
        per_frame = (per_frame * start + time.monotonic() - t_batch) / done
        for j, f in enumerate(rows):
            image, truth = frames[j]
            p = plain[j]
            if tuning:                  # what the choice would change of a perfect mask
                parts[f], crop = _changeable(truth, search.areas[-1])
                if crop is not None:
                    changeable[f] = crop
            # another frame on the grid, and then the frames not read yet, read, predicted
            # and scored under the choice, must fit before the deadline: where they would
            # not, choose on those so far
            if (pp is None and deadline is not None and start + j and time.monotonic()
                    + grid_s / len(search) + per_frame * (n - done) > deadline):
                if len(search) >= min(MIN_CHOICE_FRAMES, n // 2 + 1):
                    log.warning("post-processing chosen on %d of the %d validation frames (a "
                                "random sample): the time limit came first", len(search), n)
                    pp, _ = search.choose()
                else:   # one random, maybe empty, frame can pick any setting of the grids
                    not_chosen = (f"the time limit left {len(search)} of the {n} validation "
                                  f"frames, fewer than {min(MIN_CHOICE_FRAMES, n // 2 + 1)}")
                    log.warning("post-processing not chosen: %s; the defaults kept",
                                not_chosen)
                    pp = PostprocessConfig()
            alts = [p] if augmented is None else [p, augmented[j]]
            if pp is None:
                t_grid = time.monotonic()
                search.add(alts, truth)
                grid_s += time.monotonic() - t_grid
                gridded[f] = len(search) - 1
            else:
                m = apply_pp(alts[int(pp.tta)], pp)
                scores[f], areas[f] = dice(m, truth), int(m.sum())
            meta = samples[f].meta
            if measured and meta.get("pixel_size_mm") and meta.get("hc_mm") is not None:
                hc[f] = (samples[f], seen_region(image, cfg.preprocess),
                         [_levels(a, cuts) for a in alts])
            if progress is not None:
                progress({"event": "validation", "frame": start + j + 1, "frames": n,
                          "elapsed": time.monotonic() - t_start})
        del frames, images, plain, augmented
    if pp is None:
        pp, _ = search.choose()
    for f, row in gridded.items():
        scores[f], areas[f] = search.frame(row, pp)
    chosen = sorted(hc)
    # (a late run's sample, else None: every frame)
    sample = sorted(int(f) for f in order[:predictor.batch_size]) if late else None
    frames = sample if sample is not None else list(range(n))
    return _Validation(pp, float(np.mean([raws[f] for f in frames])),
                       [scores[f] for f in frames], [areas[f] for f in frames],
                       [empty[f] for f in frames], cuts,
                       [hc[f][0] for f in chosen], [hc[f][1] for f in chosen],
                       [hc[f][2] for f in chosen], parts,
                       [changeable[f] for f in sorted(changeable)], not_chosen, sample, n,
                       [truth_px[f] for f in frames], [frame_px[f] for f in frames])


def _shown_frames(predictor: Predictor, samples: list, cfg: RunConfig, pp: PostprocessConfig
                  ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The few frames the report's figure shows, read and predicted again: their images,
    their masks and the masks ``pp`` predicts."""
    from .postprocess import apply as apply_pp

    frames = list(_val_frames(samples, cfg.preprocess.label))
    images = [image for image, _ in frames]
    probs = list(predictor.predict_proba_many(images))
    if pp.tta:
        probs = list(predictor.tta_from_plain(images, probs))
    return images, [t for _, t in frames], [apply_pp(p, pp) for p in probs]


def _calibrate_measure(samples: list, regions: Iterable, probs: Iterable[np.ndarray],
                       pp: PostprocessConfig, cfg: RunConfig, measure_meta: dict[str, Any]
                       ) -> dict[str, Any]:
    """``measure_meta`` with its ``boundary_offset_px`` chosen on the validation frames
    ``samples``, each with a reference head circumference and a pixel size (HC18: those
    :func:`_score_validation` keeps as ``hc_samples``):
    :func:`ultraseg.measure.choose_boundary_offset`, starting from the outlines' half-width.
    As it was where fewer than :data:`~ultraseg.measure.MIN_CALIBRATION_FRAMES` frames have a
    predicted object.

    ``regions``: each frame's :func:`ultraseg.preprocess.seen_region`; ``probs``: its
    probabilities, taken one at a time.

    The offset is chosen at one frame side, ``offset_frame_side_px`` (the outlines' frames'
    where ``measure_meta`` has it, else the lower median of these frames' longer sides), each
    frame's ellipse scaled to it by its own longer side (:func:`ultraseg.measure.seen_side`),
    as measuring scales the offset back (:func:`ultraseg.measure.frame_boundary_offset`): a
    model's boundary lies as far beyond the curve in its working pixels on any frame."""
    from .measure import MIN_CALIBRATION_FRAMES, choose_boundary_offset, measure, seen_side
    from .postprocess import apply as apply_pp

    rows, with_reference = [], len(samples)
    for s, region, prob in zip(samples, regions, probs):
        size, ref = s.meta["pixel_size_mm"], s.meta["hc_mm"]
        m = measure(apply_pp(prob, pp), size, 0.0, region=region)
        if m["ellipse_axes"] is not None:
            rows.append((*m["ellipse_axes"], size, ref, seen_side(prob.shape, region)))
    if len(rows) < MIN_CALIBRATION_FRAMES:
        if with_reference:      # (a model finding no head at all is said too, not hidden)
            log.warning("head-circumference boundary offset not chosen: a head was found on "
                        "%d of the %d validation frames with a reference, fewer than the %d "
                        "it needs; the outlines' half-width kept, no validation HC error",
                        len(rows), with_reference, MIN_CALIBRATION_FRAMES)
        return measure_meta
    r = np.asarray(rows, dtype=np.float64)
    sides = sorted(int(row[4]) for row in rows)
    side = measure_meta.get("offset_frame_side_px") or sides[(len(sides) - 1) // 2]
    k = side / r[:, 4]                      # each frame's pixels in those of the side
    start = float(measure_meta.get("boundary_offset_px", 0.0))
    offset, before, after = choose_boundary_offset(r[:, :2] * k[:, None], r[:, 2] / k, r[:, 3],
                                                   start)
    log.info("head-circumference boundary offset chosen on %d validation frames: %.2f px on "
             "frames %g px long (the outlines' half-width %.2f px); validation HC error %.2f "
             "-> %.2f mm", len(rows), offset, side, start, before, after)
    return {**measure_meta, "boundary_offset_px": offset, "offset_frame_side_px": side,
            "outline_half_width_px": start,
            "offset_frames": len(rows), "val_hc_mae_mm": round(after, 4),
            "val_hc_mae_mm_start": round(before, 4), "reference_frames": with_reference,
            "no_head_frames": with_reference - len(rows)}


def _boundary_offset(ds, arrays: Arrays, train_idx: np.ndarray,
                     preprocess: PreprocessConfig | None = None, n: int = 25
                     ) -> dict[str, Any]:
    """How far masks filled from drawn outlines (HC18) reach beyond the annotator's curve, as
    a checkpoint's ``meta['measure']``.

    ``boundary_offset_px``: the median half-width of the outline band over up to ``n``
    training annotations, in pixels at the original resolution, and ``offset_frame_side_px``
    the (lower) median longer side of their frames (with ``preprocess.crop_border``, of the
    part the network sees), the side it holds at; ``{'boundary_offset_px': 0.0}`` for datasets
    whose masks are drawn filled. A model trained on such masks reaches as far, so
    measurements shrink the fitted ellipse by this much, scaled to each frame
    (:func:`ultraseg.measure.frame_boundary_offset`).
    """
    from .io import read_mask
    from .measure import outline_half_width, seen_side
    from .preprocess import seen_region

    by_name = {s.name: s for s in ds.labelled}
    outlines = [by_name[arrays.names[i]] for i in train_idx[:n]
                if by_name[arrays.names[i]].mask_kind == "outline"]
    widths, sides = [], []
    for s in outlines:
        outline = read_mask(s.mask_paths[0]) > 0
        width = outline_half_width(outline)
        if width > 0:
            region = (seen_region(s.load_image(), preprocess)
                      if preprocess is not None and preprocess.crop_border else None)
            widths.append(width)
            sides.append(seen_side(outline.shape, region))
    if not widths:
        return {"boundary_offset_px": 0.0}
    return {"boundary_offset_px": round(float(np.median(widths)), 4),
            "offset_frame_side_px": sorted(sides)[(len(sides) - 1) // 2]}
