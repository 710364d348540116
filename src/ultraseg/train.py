"""The training loop: cached arrays -> batches -> U-Net -> checkpoints, metrics and a report.

Reads top to bottom: prepare the run folder, data and split; build the model and optimiser;
for each epoch train on batches, validate, write ``metrics.csv`` and checkpoints; then choose
post-processing on the validation split and write the report (:mod:`ultraseg.finish`). A time
limit's budget (what is kept back for the end, the schedule's horizon) is
:mod:`ultraseg.budget`'s.

Randomness is explicit: the model is initialised from ``seed`` and every epoch draws its
batches and augmentations from generators seeded with ``(seed, epoch)``, so a run resumed
after epoch ``k`` continues exactly as the uninterrupted run would have.

Under ``torchrun`` the same loop runs in every process (see :mod:`ultraseg.distributed`): each
rank trains on its rows of the same global batch, validation sums are all-reduced, decisions
to stop are agreed, and only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import __version__
from .augment import WARPING, augment_batch, cutmix
from .budget import (_horizon, _no_time_for_another_epoch, _reserve, _reserve_fixed,
                     _val_cost_ratio)
from .checkpoint import (Checkpoint, load_checkpoint, make_meta, non_finite, save_checkpoint,
                         some_names)
from .config import (AUTO_PRESENCE_MIN_EMPTY, ModelConfig, PostprocessConfig,
                     RunConfig, TrainConfig, check_data_path, check_flag, names_stored)
from .data import (Arrays, _held, _held_out, _holders, _holders_row, _lost, _one_holder,
                   _other_split, duplicates_across_split, few_subjects_note, few_validation_note,
                   load_arrays, lost_note, no_validation, read_split, run_split, union_note,
                   write_split)
from .distributed import SINGLE, Dist, frame_digests, is_main, session
from .errors import (DIVERGED, DataError, UltrasegError, diverged_parts,
                     diverged_stop, is_out_of_memory)
from .finish import (Progress, TrainResult, _boundary_offset, _finish, _plot_predictions,
                     _plot_samples, _score_validation, _validation_figures, time_limit_stop)
from .fileio import as_path, atomic_write_text, csv_text, output_lock
from .geometry import largest_valid_output
from .io import Dataset, open_dataset, with_white
from .io.grey import said_once
from .io.masks import check_label
from .losses import compute_loss
from .metrics import dice, improves
from .model import build_model, context_margin, count_parameters
from .optim import DenseAdam
from .predict import Predictor
from .preprocess import normalise, zscore_stats
from .report import sampled_rows
from .run_folder import (REFUSED_RUN_FILES, EarlyWarnings, execution_of, mark_run_folder, open_run,
                         recorded_presence_head, recorded_resolved, remove_refused_run,
                         remove_temporaries, run_log, with_execution, write_run_config)
from .runtime import (autocast, autocast_off, cpu_has_avx512, cudnn_autotune, precision_name,
                      modes_kept, resolve_device, resolve_precision, threads,
                      torch_runner)
from .shared import warn_if_oversubscribed

log = logging.getLogger(__name__)




# ---------------------------------------------------------------------------------- batches
class Batches:
    """Training batches from cached uint8 canvases, drawn with an explicit generator.

    valid model: random output windows of ``tile`` pixels; the input is the window plus the
    context margin from the mirror-padded canvas (overlap-tile). same model: whole canvases.
    """

    def __init__(self, arrays: Arrays, index: np.ndarray, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.index = index
        m = cfg.model
        size = arrays.images.shape[-1]
        self.valid = m.variant == "valid"
        self.per = cfg.train.tiles_per_image if self.valid else 1  # samples per frame per epoch
        check_working_size(m, size)       # (check_config has; for Batches built by hand)
        if self.valid:
            self.margin = context_margin(m.depth)
            pad = ((0, 0), (self.margin, self.margin), (self.margin, self.margin))
            self.images = np.pad(arrays.images[index], pad, mode="reflect")
        else:
            self.images = arrays.images[index]
        self.masks = arrays.masks[index]
        self.size = size
        if cfg.preprocess.normalise == "zscore":  # statistics of the whole canvas, as at prediction
            self.mean, self.std = zscore_stats(arrays.images[index])

    def __len__(self) -> int:
        return math.ceil(len(self.index) * self.per / self.cfg.train.batch_size)

    def epoch(self, rng: np.random.Generator):
        """Yield (x, y) float32 tensors (N, 1, h, w), (N, 1, h', w') for one epoch."""
        order = rng.permutation(np.repeat(np.arange(len(self.index)), self.per))
        bs = self.cfg.train.batch_size
        t, m = self.cfg.model.tile, getattr(self, "margin", 0)
        for start in range(0, len(order), bs):
            rows = order[start:start + bs]
            if self.valid:
                ys = rng.integers(0, self.size - t + 1, len(rows))
                xs = rng.integers(0, self.size - t + 1, len(rows))
                x = np.stack([self.images[r, y:y + t + 2 * m, c:c + t + 2 * m]
                              for r, y, c in zip(rows, ys, xs)])
                y = np.stack([self.masks[r, yy:yy + t, c:c + t] for r, yy, c in zip(rows, ys, xs)])
            else:
                x, y = self.images[rows], self.masks[rows]
            xf = torch.from_numpy(x).float().unsqueeze(1)
            if self.cfg.preprocess.normalise == "zscore":
                mean = torch.from_numpy(self.mean[rows]).view(-1, 1, 1, 1)
                std = torch.from_numpy(self.std[rows]).view(-1, 1, 1, 1)
                xf = (xf - mean) / std
            else:
                xf = xf / 255.0
            yield xf, torch.from_numpy(y).float().unsqueeze(1)


def lr_at(progress: float, cfg: RunConfig) -> float:
    """Learning rate at a training progress in [0, 1]: constant, or cosine decay to 1 % of ``lr``.

    Progress is the share of the schedule's epochs done (see
    :func:`ultraseg.budget._horizon`).
    """
    base = cfg.train.lr
    if cfg.train.schedule == "constant":
        return base
    frac = min(max(progress, 0.0), 1.0)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))


# ---------------------------------------------------------------------------------- one step
def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """Adam with the run's learning rate and weight decay, as the fused kernel where torch has
    one for the weights' device (CPU, CUDA): one pass over the weights per step instead of
    several (5-13 % of a width-64 training step on two CPU cores; same updates to rounding),
    handed each channels_last weight as a contiguous view (:class:`ultraseg.optim.DenseAdam`:
    about 4 % more)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params)
    return DenseAdam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=fused)


def training_layout(device: torch.device, dtype: torch.dtype | None) -> torch.memory_format:
    """The memory layout the weights and inputs train in: channels_last, which oneDNN's bf16
    and AVX-512 kernels and cuDNN want, except on a CPU computing in fp32 without AVX-512
    (AVX2 only, or not x86): contiguous.

    Measured on two cores (fp32, seconds per step, best of several): on an AVX2-only CPU
    oneDNN's fp32 backward convolutions ran slower channels_last -- the original width-64
    network at 252 px, batch 4, 3.25-3.43 contiguous against 3.94-4.44 channels_last, the
    cpu preset's width-16 network at 192 px, batch 8, within noise (0.93-1.05 against
    0.82-1.02); on an AVX-512 CPU without bf16 channels_last won both, 2.17-2.28 against
    2.42-2.63 and 0.50-0.59 against 0.79-0.82 (``benchmarks/layout.py``). A fixed rule, not
    a timing at the start of each run: a timed choice could differ between two runs of one
    command, or a run and its resumption, and so change their results."""
    if device.type == "cpu" and dtype is None and not cpu_has_avx512():
        return torch.contiguous_format
    return torch.channels_last


def forward_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: RunConfig,
                 device: torch.device, dtype: torch.dtype | None,
                 layout: torch.memory_format = torch.channels_last) -> torch.Tensor:
    """The training loss of ``model`` on a batch (N, 1, h, w) / (N, 1, h', w'): moved to
    ``device`` (input in ``layout``, :func:`training_layout`), forward under autocast
    ``dtype`` (None: fp32)."""
    x = x.to(device, non_blocking=True).contiguous(memory_format=layout)
    y = y.to(device, non_blocking=True)
    with autocast(device, dtype):
        logits = model(x)
    return compute_loss(cfg.train.loss, logits, y, cfg.train.presence_weight,
                        cfg.train.batch_dice, cfg.train.dice_skip_empty)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """Back-propagate ``loss`` and update the weights (gradients freed, not zeroed)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def make_ema(model: torch.nn.Module, cfg: RunConfig) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and batch-norm statistics
    (``torch.optim.swa_utils.AveragedModel``; ``update_parameters(model)`` after every step
    moves it ``1 - ema_decay`` of the way to the weights), or None when ``ema_decay`` is 0.
    Its first update copies the weights. Validation, the best checkpoint and so prediction
    use the average; training goes on with the weights themselves."""
    decay = cfg.train.ema_decay
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


# ---------------------------------------------------------------------------------- validation
def validate(model: torch.nn.Module, frames: np.ndarray, masks: np.ndarray, cfg: RunConfig,
             device: torch.device, dtype: torch.dtype | None, ctx: Dist = SINGLE
             ) -> tuple[float, float]:
    """Loss and mean Dice (empty rule) over whole validation frames.

    ``frames``: uint8 (N, S, S) on the working canvas, as the cache holds them (``masks``
    likewise, in {0, 1}). They are normalised, scored and summed a batch (``batch_size``
    frames) at a time, so validation holds one batch's canvases and probabilities whatever N:
    all of them at once in float32 cost ~1.3 MB a frame at 192 px. The figures are those of
    every frame at once: the loss's terms are per-frame means, and a batch Dice pools
    ``batch_size`` frames as training pools them.

    Distributed: each rank scores its share of the frames (``ctx.rows``) and the sums are
    all-reduced, so every rank returns the same loss and Dice. (Both are per-image means, so
    the shares add up to the single-process value; with ``batch_dice`` the loss pools groups
    of ``batch_size`` frames within each share.)

    ``model`` is scored in eval mode and left in the train/eval mode it was given (each
    module's); it is left on ``device``, channels_last, its weights unchanged.
    """
    if frames.dtype != np.uint8:
        raise TypeError(f"validate takes the uint8 frames the cache holds, got {frames.dtype}")
    mine = ctx.rows(len(frames))
    frames, masks = frames[mine], masks[mine]
    loss_sum, dice_sum, step = 0.0, 0.0, cfg.train.batch_size
    if len(frames):
        with modes_kept(model):  # the runner scores in eval mode; the caller's mode is back
            predictor = Predictor(torch_runner(model, device, dtype), cfg.model, cfg.preprocess,
                                  batch_size=step)
            for i in range(0, len(frames), step):
                probs = predictor.proba_canvas(np.stack(
                    [normalise(im, cfg.preprocess.normalise) for im in frames[i:i + step]]))
                truth = masks[i:i + step]
                logits = torch.logit(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6).unsqueeze(1))
                loss_sum += len(probs) * float(compute_loss(
                    cfg.train.loss, logits, torch.from_numpy(truth).float().unsqueeze(1),
                    batch_dice=cfg.train.batch_dice, dice_skip_empty=cfg.train.dice_skip_empty))
                dice_sum += float(np.sum([dice(pr >= 0.5, m > 0) for pr, m in zip(probs, truth)]))
    loss_sum, dice_sum, n = ctx.all_reduce_sum([loss_sum, dice_sum, len(frames)], device)
    return loss_sum / n, dice_sum / n


# ---------------------------------------------------------------------------------- the run
#: metrics.csv's columns: one row per epoch.
METRICS_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds", "complete",
                   "val_frames")


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.csv``: ``history``'s rows as ultraseg's other tables write theirs
    (:func:`~ultraseg.fileio.csv_text`: an undefined value, a run's val_loss without a
    validation side, is an empty cell)."""
    atomic_write_text(path, csv_text(METRICS_COLUMNS, history))


def check_config(cfg: RunConfig) -> None:
    """Refuse settings training cannot use -- an empty data path (or a relative one found
    beside its config file alone: :func:`config.check_data_path`), the Dice-shaping switches
    beside a loss without a Dice term, a working size the model cannot take -- as a user
    error naming the settings, before anything is written. (A value of the wrong type, a
    config file's "5" for 5, or an unknown name is refused when the section is built:
    :func:`config.check_types`; a training setting out of its own range, a zero batch size,
    too: :meth:`config.TrainConfig.__post_init__`.)"""
    check_label(cfg.preprocess.label)
    if not cfg.data.path.strip():
        raise UltrasegError("data.path is empty: name the dataset (DATA on the command line; "
                            "in Python ultraseg.merge(cfg, {\"data\": {\"path\": ...}}))")
    check_data_path(cfg.data.path, cfg.source)     # (a RunConfig.load's file's)
    names_stored(cfg.to_dict())     # names its config.json can hold (a locale's encoding)
    t = cfg.train
    for name in ("in_channels", "out_channels"):      # frames are grayscale, one structure
        if getattr(cfg.model, name) != 1:
            raise UltrasegError(f"model.{name} must be 1 (ultraseg trains on grayscale frames "
                                f"for one structure), got {getattr(cfg.model, name)!r}")
    shaping = t.dice_shaped
    if shaping:     # (they were ignored in silence)
        raise UltrasegError(f"{' and '.join(shaping)} shape{'s' * (len(shaping) == 1)} the "
                            f"loss's Dice term, and train.loss (--loss) {t.loss} has none: use "
                            "train.loss (--loss) bce+dice (or dice)")
    if cfg.model.presence_mode == "classifier" and t.presence_weight == 0:
        raise UltrasegError("a classifier-mode presence head learns from its own loss alone: "
                            "train.presence_weight (--presence-weight) must be > 0")
    head, mode = cfg.model.presence_head, cfg.model.presence_mode
    if head == "auto":          # what resolve_presence_head could decide: check the head too
        head = cfg.model.variant == "same"
        mode = mode if head else "gate"     # (a mode of an 'auto' head never built: none)
    with torch.device("meta"):  # the model's own checks (variant, sizes, options), no memory
        build_model(replace(cfg.model, presence_head=head, presence_mode=mode))
    check_working_size(cfg.model, cfg.preprocess.size)     # (the model's own problems first)


def ignored_settings(cfg: RunConfig) -> list[str]:
    """What a config sets that its model has no use for (one line each): the valid model's
    output tile and tiles per image on a 'same' model, which trains on whole canvases; a
    zoom range where the augmentation zooms nothing (no warps, or the valid model's tiles); a
    presence head's loss weight where no head is built (the 'auto' head's is said where it is
    decided: :func:`resolve_presence_head`); a split seed where nothing is split (no
    validation, nothing held out). Warned about, not refused: a run recorded with them still
    resumes."""
    notes = []
    if cfg.model.variant == "same":
        valid = []
        if cfg.model.tile != ModelConfig().tile:
            valid.append(f"model.tile (--tile) {cfg.model.tile}")
        if cfg.train.tiles_per_image != TrainConfig().tiles_per_image:
            valid.append(f"train.tiles_per_image (--tiles-per-image) "
                         f"{cfg.train.tiles_per_image}")
        notes += [f"{note}: a setting of the valid model (--model valid, the seed preset's); "
                  f"this 'same' model trains on whole {cfg.preprocess.size or 'frame'}-px "
                  f"canvases and ignores it" for note in valid]
    scale = tuple(cfg.train.affine_scale)
    if scale != TrainConfig().affine_scale:
        zoom = f"train.affine_scale (--affine-scale) {scale[0]} {scale[1]}: the zoom range of"
        if cfg.train.augment not in WARPING:
            notes.append(f"{zoom} the strong and elastic augmentations; --augment "
                         f"{cfg.train.augment} zooms nothing and ignores it")
        elif cfg.model.variant != "same":
            notes.append(f"{zoom} the warps, which the valid model's augmentation leaves out "
                         f"(its target is the centre of its input tile); it ignores it")
    t = cfg.train
    if t.split_seed is not None and t.val_fraction == 0 and t.test_fraction == 0:
        notes.append(f"train.split_seed (--split-seed) {t.split_seed}: seeds the validation "
                     f"and held-out subjects; with train.val_fraction (--val-fraction) 0 and "
                     f"no train.test_fraction (--test-fraction) there are none to draw, and "
                     f"the run ignores it")
    if cfg.model.presence_head is False and cfg.set_by_hand("train", "presence_weight"):
        notes.append(f"train.presence_weight (--presence-weight) {cfg.train.presence_weight}: "
                     f"the weight of a presence head's loss; this model has none "
                     f"(--presence-head builds one) and ignores it")
    return notes


def check_working_size(model: ModelConfig, size: int | None) -> None:
    """Refuse a working ``size`` (None: not known yet, nothing to check) the model cannot
    train at: a valid model's output tile larger than it; a 'same' model's size not divisible
    by 2**depth, or leaving one pixel at the bottleneck (``size`` 2**depth: instance
    normalisation cannot train on a single pixel, and batch normalisation fails on a last
    batch of one frame; 2 x 2 is the least that trains)."""
    if size is None:
        return
    if model.variant == "valid":
        if size < model.tile:
            fits = largest_valid_output(size, model.depth)
            raise UltrasegError(f"working size {size} is smaller than the output tile "
                                f"{model.tile}: "
                                f"{'' if fits is None else f'model.tile (--tile) {fits}, or '}"
                                f"preprocess.size (--size) at least {model.tile}")
        return
    step = 2**model.depth
    if size % step:
        raise UltrasegError(f"the 'same' model needs a working size divisible by {step}; "
                            f"use preprocess.size (--size) {size + (-size % step)}")
    if size < 2 * step:
        raise UltrasegError(f"working size {size} is too small for a depth-{model.depth} "
                            f"U-Net: its bottleneck needs 2 x 2 pixels or more for its "
                            f"normalisation to train; preprocess.size (--size) at least "
                            f"{2 * step}, or a smaller model.depth (--depth)")


def resolve_presence_head(cfg: RunConfig, masks: np.ndarray,
                          held_own: np.ndarray | None = None) -> RunConfig:
    """``cfg`` with ``model.presence_head='auto'`` decided by the training masks ``masks``
    (N, h, w), or by whether each holds a structure ((N,) bool, as :func:`_held` gives): a
    presence head where at least :data:`~ultraseg.config.AUTO_PRESENCE_MIN_EMPTY` of them, and
    at least 10, are empty (a head that learns "is the structure there?" needs frames where it
    is not), else none; never on the valid model, which sees frames in tiles.
    ``held_own``: whether each holds one at its own size ((N,) bool), where known: the log
    line says how many are empty there too, where resizing emptied some.
    Any other value is returned as it is."""
    if cfg.model.presence_head != "auto":
        return cfg
    empty = int((~_held(masks)).sum())
    if cfg.model.variant != "same":
        on = False
        log.info("presence head: off (the valid model sees frames in tiles)")
    else:
        on = empty >= 10 and empty >= AUTO_PRESENCE_MIN_EMPTY * len(masks)
        own = None if held_own is None else int((~np.asarray(held_own, bool)).sum())
        log.info("presence head: %s (%d of %d training frames have an empty mask%s; 'auto' "
                 "builds it from %d %% and 10 frames)", "on" if on else "off", empty,
                 len(masks), "" if own is None or own == empty else
                 f" at the {cfg.preprocess.size} px working size, {own} at their own size",
                 round(100 * AUTO_PRESENCE_MIN_EMPTY))
    # the head's settings asked for, and dropped with it: said in one line
    unused = [] if on else [what for what, asked in (
        (f"presence mode {cfg.model.presence_mode!r}", cfg.model.presence_mode != "gate"),
        (f"--presence-weight {cfg.train.presence_weight}",
         cfg.set_by_hand("train", "presence_weight")),
    ) if asked]
    if unused:
        log.warning("%s appl%s to a presence head, which 'auto' does not build for these "
                    "training frames (--presence-head on builds one): %s ignored",
                    " and ".join(unused), "ies" if len(unused) == 1 else "y",
                    "it is" if len(unused) == 1 else "they are")
    mode = cfg.model.presence_mode if on else "gate"  # the mode of a head not built: none
    return replace(cfg, model=replace(cfg.model, presence_head=on, presence_mode=mode))


#: A resumed run's ``stopped`` where it had finished already.
ALREADY_FINISHED = "already finished: nothing resumed"


def _finished_run(out: Path, last: Checkpoint | None, cfg: RunConfig) -> TrainResult | None:
    """The result of the run in ``out`` where it finished (its best.ckpt holds what
    :func:`ultraseg.finish._finish` records: the post-processing chosen, the training time and
    the epochs run, those ``last`` has too), else None. A finished run has no epoch left (its
    epochs, or its time limit, are used up), and finishing it again re-chose the
    post-processing under the spent limit and rewrote best.ckpt and the report."""
    path = out / "best.ckpt"
    if last is None or not path.is_file():
        return None
    best = load_checkpoint(path)
    m = best.meta.get("metrics") or {}
    if "train_seconds" not in m or m.get("epochs_run", last.train_state["epoch"]) != \
            last.train_state["epoch"]:
        return None
    # every epoch's row (best.ckpt's history stops at the best epoch)
    history = json.loads(last.train_state["history_json"])
    hc = best.meta.get("measure") or {}
    result = TrainResult(out, int(m["best_epoch"]), m.get("best_val_dice"),
                         int(m.get("epochs_run", len(history))), float(m["train_seconds"]),
                         ALREADY_FINISHED, history, best.postprocess,
                         m.get("val_dice_original"), m.get("val_dice_postprocessed"),
                         dict(m.get("report") or {}), world_size=int(m.get("world_size", 1)),
                         is_main=is_main(), warnings=list(m.get("warnings") or []),
                         **_validation_figures(m, hc))
    if result.is_main and not (out / "report.html").is_file():
        # (a run recorded before val_chose was: validation chose where a frame held a
        # structure, which its non-empty frames' Dice records)
        chosen = m.get("val_chose", m.get("val_dice_nonempty") is not None)
        missing = _rebuild_report(out, result, cfg, bool(chosen))
        result = replace(result, stopped=f"{ALREADY_FINISHED}; its report written again"
                         + (f" without {' and '.join(missing)} (the run's frames could not "
                            f"be read)" if missing else ""))
    return result


def _rebuild_report(out: Path, result: TrainResult, cfg: RunConfig, chosen: bool
                    ) -> list[str]:
    """The report of a finished run stopped while it was written: its figures and the page
    again, from the checkpoint's record, the run's split and its data (the learning curves
    alone where the data cannot be read: the page and a warning name the figures missing).
    ``chosen`` False: its validation frames chose nothing (best.ckpt's ``val_chose``).
    Returns the names of the figures missing."""
    from . import report

    log.warning("%s: the run had finished but its report was not written (interrupted?): "
                "writing it from the checkpoint", out)
    summary = result.summary or {"best epoch": result.best_epoch,
                                 **report.time_rows(result.seconds, result.history)}
    validated = result.val_dice_original is not None
    report.plot_curves(result.history, out / "curve.png", best_epoch=result.best_epoch,
                       chosen=chosen or not validated)
    missing: list[str] = []
    try:
        with threads(cfg.train.num_threads):
            _redraw_figures(out, cfg, validated, chosen)
    except (UltrasegError, OSError) as e:
        wanted = ["sample.png"] + ["seg_sample.png"] * validated
        missing = [name for name in wanted if not (out / name).is_file()]
        if missing:
            why = str(e).splitlines()[0]
            log.warning("%s: %s not drawn again: the run's frames could not be read (%s); the "
                        "report shows the rest (make the data readable where its config.json's "
                        "data.path says, delete report.html and resume to draw %s)", out,
                        " and ".join(missing), why, "them" if len(missing) > 1 else "it")
            summary = {**summary, "figures missing": f"{', '.join(missing)}: the run's frames "
                                                     f"could not be read when this page was "
                                                     f"written again ({why})"}
    report.write_html(out, title=f"ultraseg run: {out.name}", summary=summary,
                      config=RunConfig.load(out / "config.json").to_dict(),
                      history=result.history, best_epoch=result.best_epoch,
                      warnings=result.warnings,
                      captions=report.captions_for(validated, chosen))
    return missing


def _load(cfg: RunConfig) -> tuple[Dataset, Arrays]:
    """The run's dataset and its frames on the canvas, through the cache, a black-and-white
    mask's white decided over the set where ``--label`` hangs on it
    (:func:`ultraseg.io.white_for`; a cache hit keeps its build's, decoding no mask); the
    dataset's samples read their masks at their own size with that white."""
    ds = open_dataset(cfg.data.path, cfg.data.layout, cfg.data.subject_pattern,
                      cfg.preprocess.fill_outlines)
    arrays = load_arrays(ds, cfg.preprocess, cfg.data.cache_dir, white_as_set=True)
    return with_white(ds, arrays.white), arrays


def _redraw_figures(out: Path, cfg: RunConfig, validated: bool, chosen: bool) -> None:
    """The report's sample and prediction figures (the latter where the run ``validated``),
    drawn again as :func:`ultraseg.finish._finish` draws them: from the run's data and split,
    and its best.ckpt with the post-processing chosen (``chosen`` False: its validation frames
    chose nothing, as the captions and the curve say)."""
    ds, arrays = _load(cfg)
    train_idx, val_idx = read_split(out / "split.json", arrays.names, ds.root)
    held = _held(arrays.masks)
    _plot_samples(out, arrays, train_idx, held)
    if not validated or not len(val_idx):
        return
    from .runtime import torch_predictor

    # built without drawing initial weights (the caller's random state stays as it was);
    # plain probabilities: the scoring adds the mirrored pass where the choice has it
    predictor = torch_predictor(out / "best.ckpt", cfg.train.device, cfg.train.precision,
                                batch_size=cfg.train.batch_size, tta=False)
    by_name = {s.name: s for s in ds.labelled}
    samples = [by_name[arrays.names[i]] for i in val_idx]
    pp = predictor.postprocess      # the one the run chose
    seen = _score_validation(predictor, samples, cfg, False, None, pp)
    _plot_predictions(out, predictor, samples, seen, cfg, pp, chosen)


@said_once()
def train(cfg: RunConfig | None, out: str | Path, resume: bool = False,
          progress: Progress | None = None, execution: Mapping[str, Any] | None = None, *,
          time_remedy: Callable[[int, int], str] | None = None) -> TrainResult:
    """Train a U-Net as ``cfg`` says and write the run folder ``out`` (its files:
    :data:`ultraseg.run_folder.RUN_FILES`).

    ``resume=True`` continues the run in ``out`` from its ``last.ckpt`` with its own config
    (``cfg`` None, or the run's own recipe: another is refused; where it runs is taken from
    it); ``execution`` (``{"device": "cpu", "num_threads": 2}``; the keys of
    :data:`ultraseg.run_folder.EXECUTION`) replaces where it runs, not what it learns, and is
    recorded in its config.json: a run trained on a GPU goes on on a CPU.
    ``progress`` receives dicts: {"event": "batch"|"epoch"|"stage"|"validation", ...} for a
    CLI to show ("validation": each validation frame scored at its original size while the
    post-processing is chosen, ``frame`` of ``frames``).
    ``time_remedy(k, n)``: where the time limit ended training after ``k`` of its ``n`` epochs
    (the last perhaps cut short), the advice of a warning that the model has not learnt, in
    place of train's flags (the demo's: its own ``--minutes``); a caller passing one takes no
    ``--lr`` either: the warning on the training loss's trend then names none.
    Leaves the caller's torch thread count, global random state (CPU, and GPUs where it trains
    on one) and grad or inference mode as they were; a caller's default dtype (float64)
    changes nothing: the same config and seed learn the same weights.

    Under ``torchrun`` (``WORLD_SIZE`` > 1), or in a process group the caller initialised,
    trains with DistributedDataParallel (:mod:`ultraseg.distributed`): ``batch_size`` is the
    global batch, ``cfg.train.world_size`` is recorded, and ranks > 0 write nothing and return
    a result with ``is_main=False``.
    """
    resume = check_flag("resume", resume)
    if not isinstance(cfg, RunConfig) and not (cfg is None and resume):
        raise UltrasegError(f"train takes a RunConfig (ultraseg.preset(NAME), changed with "
                            f"ultraseg.merge, or RunConfig.from_dict), got {type(cfg).__name__}")
    out = as_path(out, "train (out)", what="a run folder")
    t0 = time.monotonic()
    # the folder is this run's alone from before it is opened to the end: a second command
    # into it is refused at once (ranks > 0 of a torchrun job write nothing: rank 0 holds it)
    # (what is warned before the run's log opens reaches it, and the report, too)
    with output_lock(out, "train") if is_main() else contextlib.nullcontext(), \
            EarlyWarnings() as earlier:
        return _open_and_train(cfg, out, resume, progress, execution, t0, earlier, time_remedy)


def _open_and_train(cfg: RunConfig | None, out: Path, resume: bool, progress: Progress | None,
                    execution: Mapping[str, Any] | None, t0: float,
                    earlier: EarlyWarnings,
                    time_remedy: Callable[[int, int], str] | None = None) -> TrainResult:
    """:func:`train`, holding ``out``; ``earlier`` keeps its warnings until the log opens."""
    given = cfg
    cfg, last = open_run(out, cfg, resume)
    if resume and given is not None:    # where it runs: the given config's, where it differs
        own = execution_of(cfg)
        execution = {**{k: v for k, v in execution_of(given).items() if v != own[k]},
                     **(execution or {})}
    if execution:
        cfg = with_execution(cfg, execution)
    check_config(cfg)
    for note in ignored_settings(cfg):
        log.warning("%s", note)
    finished = _finished_run(out, last, cfg) if resume else None
    if finished is not None:  # resuming it would choose its post-processing again, worse
        mark_run_folder(out)     # (a run from before the marker existed gets it now)
        log.warning("%s: the run had finished; %s", out, "nothing resumed, nothing rewritten"
                    if finished.stopped == ALREADY_FINISHED else "nothing resumed")
        recorded = str(last.train_state.get("stopped") or "")
        if diverged_parts(recorded):    # a failure still, as when it was finished
            raise _diverged_finished(out, recorded, last.train_state["epoch"])
        return finished
    if resume and not Path(cfg.data.path).exists():
        raise UltrasegError(f"the run's data {cfg.data.path} (its config.json's data.path) is "
                            f"not there: if it has moved, set data.path in "
                            f"{out / 'config.json'} to where it is now, and resume")
    if not resume:      # recorded absolute: the run's config.json works from any folder
        cfg = replace(cfg, data=replace(cfg.data, path=str(Path(cfg.data.path).resolve())))
    device = resolve_device(cfg.train.device, asked_by="--device, or a resumed run's "
                            "config.json; in Python, train.device", in_python="train.device 'cpu'")
    # the caller's random state, CUDA's included (torch.manual_seed seeds every GPU), and its
    # grad mode (a notebook's torch.set_grad_enabled(False) or no_grad block) and autocast (a
    # torch.autocast block: the run computes at the precision config.json records) as they were
    rng_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with session(device) as ctx:
        recorded = cfg.train.world_size
        if recorded != ctx.world_size:
            if resume:
                log.warning("resuming a run of %d processes with %d: the global batches stay "
                            "the same", recorded, ctx.world_size)
            elif ctx.is_main and cfg.set_by_hand("train", "world_size"):
                # (set in a config file, or another job's config.json: said as it is replaced)
                log.warning("train.world_size %d is recorded by training, not chosen: this "
                            "run has %d process%s (torchrun's --nproc_per_node starts them); "
                            "the setting is ignored", recorded, ctx.world_size,
                            "" if ctx.world_size == 1 else "es")
            cfg = replace(cfg, train=replace(cfg.train, world_size=ctx.world_size))
        if not ctx.is_main:
            with threads(cfg.train.num_threads), torch.random.fork_rng(devices=rng_devices), \
                    torch.inference_mode(False), torch.enable_grad(), autocast_off(device), \
                    cudnn_autotune(device):
                return _train(cfg, out, last, lambda e: None, t0, ctx)
        # what a run refused before its first epoch removes again (see _remove_refused_run;
        # a folder the lock made goes as the lock ends, where nothing is left in it)
        existed = out.exists(), {n for n in REFUSED_RUN_FILES if (out / n).exists()}
        with threads(cfg.train.num_threads):     # (None: torch's own count, the machine's)
            resolved = {"device": str(ctx.device(device)),
                        "precision": precision_name(cfg.train.precision, ctx.device(device)),
                        "num_threads": torch.get_num_threads()}
        if not resume or recorded != ctx.world_size or execution \
                or recorded_resolved(out) != resolved:
            write_run_config(out, cfg, resolved)
        else:       # a run from before the marker existed gets it now
            mark_run_folder(out)
        if resume:
            remove_temporaries(out)
        try:
            with run_log(out / "train.log", earlier) as warned, threads(cfg.train.num_threads), \
                    torch.random.fork_rng(devices=rng_devices), torch.inference_mode(False), \
                    torch.enable_grad(), autocast_off(device), cudnn_autotune(device):
                return _train(cfg, out, last, progress or (lambda e: None), t0, ctx, warned,
                              time_remedy)
        except BaseException as e:
            # refused, out of memory or interrupted before an epoch was saved: nothing left
            if not resume and isinstance(e, (UltrasegError, KeyboardInterrupt)) \
                    or not resume and is_out_of_memory(e):
                remove_refused_run(out, *existed)
            raise


def _train(cfg: RunConfig, out: Path, last: Checkpoint | None, progress: Progress, t0: float,
           ctx: Dist = SINGLE, warned: Iterable[str] = (),
           time_remedy: Callable[[int, int], str] | None = None) -> TrainResult:
    """The run itself; ``last`` is the checkpoint to resume from (None: a new run);
    ``warned``, the warnings this process gives as it trains (:func:`run_log`'s), for the
    report; ``time_remedy``: :func:`train`'s."""
    tc = cfg.train
    resume = last is not None
    # the report's warnings: a resumed run's before it was interrupted (last.ckpt records
    # them: its train.log is no record of which run said what), then this process's
    before = list(last.train_state.get("warnings") or []) if resume else []

    def warnings() -> list[str]:
        return list(dict.fromkeys([*before, *warned]))
    device = ctx.device(resolve_device(tc.device))
    dtype = resolve_precision(tc.precision, device)
    # the thread count used, not the one asked for (none: torch's default, the machine's):
    # the same seed gives the same weights at the same device, precision and thread count
    log.info("ultraseg %s: training on %s, precision %s, %d threads%s", __version__, device,
             "bf16" if dtype else "fp32", torch.get_num_threads(),
             f", {ctx.world_size} processes ({ctx.backend})" if ctx.enabled else "")
    if ctx.is_main:
        warn_if_oversubscribed(tc.num_threads, in_python="train.num_threads")
    if resume:   # --time-limit caps the whole run: the time up to its last saved epoch counts
        t0 -= float(last.train_state.get("seconds", 0.0))
    deadline = t0 + tc.time_limit_s if tc.time_limit_s else math.inf

    # data and split
    progress({"event": "stage", "message": "reading and caching the dataset"})
    ds, arrays = _load(cfg)
    note = union_note(arrays.labels, cfg.preprocess.label)
    if note:        # (1 = lesion, 2 = organ, or 255 = 'ignore' trained as the structure)
        log.warning("%s: %s", ds.root, note)
    tally = arrays.tally
    if tally is not None and tally.masks and tally.full == tally.masks:
        # (not "inverted": a structure drawn black on white leaves a background)
        raise DataError(f"every one of the {tally.masks} masks covers its whole frame"
                        + (f" with label {cfg.preprocess.label}"
                           if cfg.preprocess.label is not None else "")
                        + ": nothing to segment; check the export, or --label (`ultraseg "
                        "inspect DATA` lists the labels the masks hold)", ds.root)
    inverted = tally.inverted_note() if tally is not None else None
    if inverted:
        log.warning("%s: %s", ds.root, inverted)
    held = _held(arrays.masks)      # whether each frame's mask holds a structure
    lost = _lost(arrays, held)      # ... at its own size, and none at the working size
    size, what = cfg.preprocess.size, (f"label {cfg.preprocess.label}" if cfg.preprocess.label
                                       is not None else "a foreground pixel")
    if not held.any() and lost.any():   # resizing emptied every one: not the data's fault
        raise DataError(f"none of the {len(held)} masks holds {what} at the {size} px working "
                        f"size: the {int(lost.sum())} that hold one at their own size lose it "
                        "when resized (their structures shrink below a pixel); nothing to "
                        "learn; a larger --size (preprocess.size) keeps them", ds.root)
    if not held.any():              # every target empty: the model could only learn "nothing"
        label = cfg.preprocess.label
        raise DataError(f"none of the {len(arrays.masks)} masks holds "
                        + (f"label {label} (--label; `ultraseg inspect DATA` lists the labels "
                           "the masks hold)" if label is not None else "a foreground pixel")
                        + ": nothing to learn", ds.root)
    note = lost_note(int(lost.sum()), int(held.sum() + lost.sum()), size)
    if note:
        log.warning("%s: %s", ds.root, note)
    if resume:
        train_idx, val_idx = read_split(out / "split.json", arrays.names, ds.root)
    else:
        split_seed = tc.seed if tc.split_seed is None else tc.split_seed
        train_idx, val_idx, test_idx = run_split(arrays.subjects, tc.test_fraction,
                                                 tc.val_fraction, split_seed)
        if ctx.is_main:
            write_split(out / "split.json", arrays.names, arrays.subjects, train_idx, val_idx,
                        split_seed, tc.val_fraction, test_idx)
    if resume:
        test_idx = _held_out(out / "split.json", arrays.names)
    log.info("%d training frames, %d validation frames, %d held out for testing (split by "
             "subject: %s)", len(train_idx), len(val_idx), len(test_idx),
             " / ".join(str(len({arrays.subjects[i] for i in idx}))
                        for idx in (train_idx, val_idx, test_idx)) + " subjects")
    copies = duplicates_across_split(arrays, {"train": train_idx, "validation": val_idx,
                                              "test": test_idx})
    if copies:
        log.warning("%s: %s", ds.root, copies)
    if not held[train_idx].any() and lost[train_idx].any():    # resizing emptied them
        raise DataError(f"none of the {len(train_idx)} training masks holds {what} at the "
                        f"{size} px working size: {int(lost[train_idx].sum())} of them hold "
                        "one at their own size, lost when resized (their structures shrink "
                        "below a pixel); nothing to learn; a larger --size (preprocess.size) "
                        "keeps them", ds.root)
    if not held[train_idx].any():   # the split left every structure out of training
        raise DataError(f"none of the {len(train_idx)} training masks holds "
                        + (f"label {cfg.preprocess.label}" if cfg.preprocess.label is not None
                           else "a foreground pixel")
                        + f" under this split: {_holders_row(held, val_idx, test_idx)}"
                        "; nothing to learn; " + _other_split(held, val_idx, test_idx,
                                                               arrays.subjects),
                        ds.root)
    if resume and cfg.model.presence_head == "auto":   # decided when the run started
        cfg = replace(cfg, model=recorded_presence_head(cfg.model, last))
        log.info("presence head: %s (decided when the run started, as last.ckpt records)",
                 "on" if cfg.model.presence_head else "off")
    cfg = resolve_presence_head(cfg, held[train_idx], None if arrays.held_own is None
                                else arrays.held_own[train_idx])
    validating = len(val_idx) > 0
    # validation frames that hold no structure cannot tell a model that finds structures from
    # one that finds none: they would choose the epoch and the post-processing that predict
    # nothing (validation Dice 1.0); they are scored, but choose nothing
    choosing = validating and bool(held[val_idx].any())
    if not validating:
        log.info("no validation split (val fraction 0): every epoch's weights replace the "
                 "last, and post-processing stays at its defaults")
    elif not choosing:
        holders = _holders(held, arrays.subjects)
        log.warning("none of the %d validation masks holds %s under this split: validation "
                    "cannot choose, so every epoch's weights replace the last and "
                    "post-processing stays at its defaults, as with --val-fraction 0; %s",
                    len(val_idx), f"label {cfg.preprocess.label}"
                    if cfg.preprocess.label is not None else "a foreground pixel",
                    _one_holder(holders) + ": " + no_validation(
                        "trains on the validation frames too, without validation")
                    if len(holders) == 1 else
                    "another --split-seed or --val-fraction (in Python, train.split_seed or "
                    "train.val_fraction) draws a split that can")
    # (a split of 2 subjects said only where the side is not already said to be few frames)
    val_subjects = len({arrays.subjects[i] for i in val_idx})
    split_subjects = len({arrays.subjects[i] for i in (*train_idx, *val_idx)})
    few = few_validation_note(len(val_idx) if choosing else 0, val_subjects, tc.val_fraction) \
        or few_subjects_note(val_subjects if choosing else 0, split_subjects, len(val_idx),
                             len(train_idx) + len(val_idx))
    if few:
        log.warning("%s: %s", ds.root, few)
    batches = Batches(arrays, train_idx, cfg)
    # every process read the same: else their collectives stop matching (a wait for good)
    ctx.same_data({what: sorted(arrays.names[i] for i in idx) for what, idx in (
                   ("training frames", train_idx), ("validation frames", val_idx),
                   ("frames held out for testing", test_idx))}
                  | {"batches an epoch": len(batches),
                     "working size": "x".join(map(str, arrays.images.shape[1:])),
                     # a stale copy of the run folder resumed, or another --epochs: as stuck
                     "epochs done": int(last.train_state["epoch"]) if last is not None else 0,
                     "epochs to train": tc.epochs, "learning rate": tc.lr}
                  # the same names holding other pixels (another copy): digested where compared
                  | ({"pixels (image or mask)": frame_digests(arrays.names, arrays.images,
                                                              arrays.masks)}
                     if ctx.enabled else {}))
    val_frames, val_masks = arrays.images[val_idx], arrays.masks[val_idx]   # uint8

    # model and optimiser
    torch.manual_seed(tc.seed)
    layout = training_layout(device, dtype)
    model = build_model(cfg.model).to(device).to(memory_format=layout)
    log.info("model: %s U-Net, width %d, depth %d, %d parameters", cfg.model.variant,
             cfg.model.width, cfg.model.depth, count_parameters(model))
    if cfg.model.variant == "valid" and tc.augment in WARPING:
        log.warning("augmentation %r on the valid model: flips, intensity and speckle only; its "
                    "target is the centre of the input tile, so the rotation, zoom (and elastic) "
                    "warps are not applied", tc.augment)
    optimizer = make_optimizer(model, cfg)
    ema = make_ema(model, cfg)
    scored = model if ema is None else ema.module  # what validation scores and best.ckpt keeps
    history: list[dict[str, Any]] = []
    best_dice, best_loss, best_epoch, start_epoch = -1.0, math.inf, 0, 1
    best_full = False   # the best epoch was validated on every validation frame
    horizon = float(tc.epochs)  # epochs the learning-rate schedule spans (see _horizon)
    if last is not None:
        model.load_state_dict(last.state_dict)
        optimizer.load_state_dict(last.train_state["optimizer"])
        if ema is not None:
            ema.load_state_dict(last.train_state["ema"])
        history = json.loads(last.train_state["history_json"])
        best_dice = float(last.train_state["best_dice"])
        best_epoch = int(last.train_state["best_epoch"])
        best_loss = next((float(r["val_loss"]) for r in history if r["epoch"] == best_epoch),
                         math.inf)
        of_best = [sampled for r, sampled in zip(history, sampled_rows(history, len(val_frames)))
                   if r["epoch"] == best_epoch]
        best_full = bool(of_best) and not of_best[0]
        start_epoch = int(last.train_state["epoch"]) + 1
        horizon = float(last.train_state.get("horizon", tc.epochs))
        log.info("resuming after epoch %d", start_epoch - 1)
    saved = start_epoch - 1     # the last epoch whose checkpoints are on disk
    ddp = ctx.wrap(model, device)  # trains; averages gradients over ranks (the model if alone)

    # every checkpoint (best, last, one left by an interrupted run) measures with the outlines'
    # half-width; the final best.ckpt with the offset its validation frames choose (_finish)
    measure_meta = _boundary_offset(ds, arrays, train_idx, cfg.preprocess)

    def meta(metrics: dict[str, Any], pp: PostprocessConfig | None = None,
             measure: dict[str, Any] | None = None) -> dict[str, Any]:
        return {**make_meta(cfg.model, cfg.preprocess, pp or PostprocessConfig(), metrics,
                            names_stored(cfg.to_dict())), "measure": measure or measure_meta}

    stopped = _recorded_stop(last.train_state, history) if resume else None
    est_val = None          # seconds for one validation pass: guessed, then measured
    val_measured = False
    fastest_s = math.inf    # the fastest training step so far
    t_measured = None       # when the last epoch measured the horizon (see _horizon)
    n_batches = len(batches)
    diverged = None     # what went non-finite, where: the run finishes from its best epoch
    if stopped:     # interrupted while choosing its post-processing or writing its report
        log.info("the run had stopped before it was interrupted (%s): finishing it without "
                 "training on", stopped)
        start_epoch = tc.epochs + 1
    # (agreed by every process: one that trained on while another finished waited for good)
    elif resume and ctx.any(time.monotonic() + _reserve_fixed(tc.time_limit_s) > deadline,
                            device):
        stopped = (f"time limit: used up by the run before it was interrupted, after epoch "
                   f"{start_epoch - 1}")
        start_epoch = tc.epochs + 1             # nothing more to train: finish the run
    # the limit counts from the start of the run: one that reading a large dataset used up
    # would still train a batch, validate and score every validation frame, past it
    elif not resume and ctx.any(time.monotonic() >= deadline, device):
        raise UltrasegError(
            f"the time limit ({tc.time_limit_s:g} s) was used up before training began: "
            f"reading and caching the data, checking its split and building the model took "
            f"{time.monotonic() - t0:.0f} s; nothing trained. A longer --time-limit "
            "(train.time_limit_s) leaves time to train"
            + ("; the data's cache makes the next start faster" if arrays.cached == "written"
               else ""),
            out)
    for epoch in range(start_epoch, tc.epochs + 1):
        rng = np.random.default_rng([tc.seed, epoch])
        gen = torch.Generator().manual_seed(tc.seed * 100_003 + epoch)
        # dropout draws from torch's global generator (train() forks it): seeded per epoch
        # too, so a run resumed after epoch k draws what the uninterrupted run drew
        torch.manual_seed(tc.seed * 100_003 + epoch + 50_001)
        ddp.train()
        t_epoch = time.monotonic()
        losses: list[float] = []
        complete = True
        for i, (x, y) in enumerate(batches.epoch(rng)):
            x, y = augment_batch(x, y, tc.augment, gen, scale=tc.affine_scale)
            x, y = cutmix(x, y, tc.cutmix, gen)
            x, y = ctx.shard(x), ctx.shard(y)  # this rank's rows of the global batch
            t_batch = time.monotonic()
            loss = forward_loss(ddp, x, y, cfg, device, dtype, layout)
            # ranks agree on the loss (mean), so they stop alike
            loss_value = ctx.all_reduce_mean(loss.item(), device)
            if not math.isfinite(loss_value):
                diverged = f"the loss is {loss_value} at epoch {epoch}, batch {i + 1}"
                break
            for group in optimizer.param_groups:
                group["lr"] = lr_at((epoch - 1 + i / n_batches) / horizon, cfg)
            optimizer_step(optimizer, loss)
            if ema is not None:
                ema.update_parameters(model)
            losses.append(loss_value)
            batch_s = time.monotonic() - t_batch
            fastest_s = min(fastest_s, batch_s)
            if not val_measured:  # before the first validation: a forward costs ~1/3 of a
                # step, the fastest one seen: the first carries one-time set-up (3.5-5 s on
                # two cores against 0.1 s for the rest), and a validation guessed from it alone
                # stopped a 3-minute nerve run after its first batch
                est_val = (fastest_s / 3 / x.shape[0] * math.ceil(len(val_idx) / ctx.world_size)
                           * _val_cost_ratio(cfg, arrays))
            progress({"event": "batch", "epoch": epoch, "epochs": tc.epochs,
                      "horizon": round(horizon), "batch": i + 1, "batches": n_batches,
                      "loss": float(np.mean(losses)), "elapsed": time.monotonic() - t_epoch})
            # one step tells too little to stop on: the first step stops only past the limit
            reserve = _reserve(est_val, tc.time_limit_s) if val_measured or i else 0.0
            if (deadline < math.inf and i + 1 < n_batches
                    and ctx.any(time.monotonic() + batch_s + reserve > deadline, device)):
                complete = False
                stopped = time_limit_stop(epoch, i + 1, n_batches)
                break
        if diverged:
            break
        t_val = time.monotonic()
        ctx.broadcast_buffers(model)  # batch-norm statistics: rank 0's, as saved
        if ema is not None:
            ctx.broadcast_buffers(ema.module)
        # the loss is checked before each step: the epoch's last step is checked here, before
        # its weights are validated or saved (a finite loss can leave an inf running variance)
        bad = _non_finite_weights(model, ema)
        if ctx.any(bool(bad), device):
            diverged = (f"the weights hold NaN/inf after epoch {epoch} "
                        f"({some_names(bad) if bad else 'on another process'})")
            break
        val_loss, val_dice = math.nan, math.nan
        frames_v = None
        if validating:
            frames_v, masks_v = val_frames, val_masks
            # a validation that would start past the limit is no step under way: one batch
            # of the frames (a random sample, the same each run) stands for it
            if (deadline < math.inf and len(val_frames) > tc.batch_size
                    and ctx.any(time.monotonic() >= deadline, device)):
                from .postprocess import GridSearch

                # (the order the scoring at original size samples a late run's frames in)
                pick = np.sort(GridSearch.order(len(val_frames))[:tc.batch_size])
                frames_v, masks_v = val_frames[pick], val_masks[pick]
                log.warning("epoch %d validated on %d of the %d validation frames (a random "
                            "sample): the time limit had passed", epoch, len(pick),
                            len(val_frames))
            val_loss, val_dice = validate(scored, frames_v, masks_v, cfg, device, dtype, ctx)
            model.to(memory_format=layout)  # validation predicts channels_last; train as chosen
            if not math.isfinite(val_loss):     # (all-reduced: every rank stops alike)
                diverged = f"the validation loss is {val_loss} after epoch {epoch}"
                break
        est_val, val_measured = time.monotonic() - t_val, True
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else math.nan,
               "val_loss": val_loss, "val_dice": val_dice,
               "lr": optimizer.param_groups[0]["lr"],
               "seconds": round(time.monotonic() - t_epoch, 2), "complete": complete,
               "val_frames": None if frames_v is None else len(frames_v)}
        history.append(row)
        if validating:
            log.info("epoch %d: train loss %.4f, val loss %.4f, val Dice %.4f (%.0f s)", epoch,
                     row["train_loss"], val_loss, val_dice, row["seconds"])
        else:
            log.info("epoch %d: train loss %.4f (%.0f s)", epoch, row["train_loss"],
                     row["seconds"])
        if epoch <= 2 and complete:  # the second epoch re-measures (see _horizon)
            # an epoch lasts from this point in one epoch to the same in the next: the
            # previous epoch's writes count (the first epoch has none before it to count)
            now, since = time.monotonic(), t_epoch if t_measured is None else t_measured
            horizon = _horizon(tc.epochs, epoch, now - since, deadline, est_val, ctx, device,
                               tc.time_limit_s)
            t_measured = now
            if epoch == 2 and horizon < tc.epochs:     # measured for good: said once
                log.info("the time limit fits about %d of the %d epochs at this pace (%.0f s "
                         "an epoch): the learning-rate schedule spans them", round(horizon),
                         tc.epochs, now - since)
        # no validation: the latest counts
        sampled = sampled_rows([row], len(val_frames))[0]
        improved = not choosing or improves(val_dice, val_loss, best_dice, best_loss, sampled,
                                            best_full)
        if improved:
            best_dice, best_loss, best_epoch, best_full = val_dice, val_loss, epoch, not sampled
        if ctx.is_main:  # metrics first: a kill before last.ckpt re-runs this epoch identically
            _write_metrics(out / "metrics.csv", history)
            metrics = {"history": history, "best_epoch": best_epoch,
                       "best_val_dice": best_dice if validating else None,
                       "world_size": ctx.world_size}
            if improved:
                save_checkpoint(out / "best.ckpt", scored.state_dict(), meta(metrics))
            state = {"epoch": epoch, "optimizer": optimizer.state_dict(),
                     "history_json": json.dumps(history), "best_dice": best_dice,
                     "best_epoch": best_epoch, "horizon": horizon,
                     "seconds": time.monotonic() - t0,    # of the whole run, so far
                     "stopped": stopped,     # a resume finishes a run that had stopped
                     "warnings": warnings()}
            if ema is not None:
                state["ema"] = ema.state_dict()
            save_checkpoint(out / "last.ckpt", model.state_dict(), meta(metrics), state)
        saved = epoch
        # after the checkpoints: an epoch shown (the CLI's epoch line) is one --resume keeps
        progress({"event": "epoch", **row, "epochs": tc.epochs, "horizon": round(horizon)})
        if stopped:
            break
        per_epoch = time.monotonic() - t_epoch
        if (epoch < tc.epochs and deadline < math.inf and ctx.any(_no_time_for_another_epoch(
                time.monotonic(), deadline, per_epoch, batch_s, est_val, tc.time_limit_s),
                device)):
            stopped = f"time limit: no time for another epoch after epoch {epoch}"
            if ctx.is_main:     # decided after the save: recorded, as an epoch cut short is
                save_checkpoint(out / "last.ckpt", model.state_dict(), meta(metrics),
                                {**state, "stopped": stopped})
            break

    if diverged:
        stopped = _diverged_stop(out, saved, diverged, best_epoch, ctx.is_main)
    if diverged_parts(stopped):     # (its stop names the epoch kept)
        log.warning("%s", stopped)
    elif stopped:
        log.warning("%s; keeping the %s checkpoint (epoch %d)", stopped,
                    "best" if choosing else "last", best_epoch)
    best_val_dice = best_dice if validating else None  # as best.ckpt records it (NaN else)
    # every process leaves the group (DDP's reducer freed first, while it is open): rank 0
    # alone chooses post-processing and writes the report, the others waiting for it in no
    # collective, which would fail after distributed.TIMEOUT
    del ddp
    ctx.leave()
    if not ctx.is_main:
        result = TrainResult(out, best_epoch, best_val_dice, len(history),
                             time.monotonic() - t0, stopped, history, world_size=ctx.world_size,
                             is_main=False)
    else:
        result = _finish(cfg, out, ds, arrays, train_idx, val_idx, device, dtype, history,
                         best_epoch, best_val_dice, stopped, t0, meta, progress, choosing,
                         copies, test_idx, warnings, held=held, time_remedy=time_remedy)
    if diverged_parts(stopped):     # finished, yet not a run that succeeded
        raise _diverged_finished(out, stopped, saved)
    return result


def _recorded_stop(state: Mapping[str, Any], history: list[dict[str, Any]]) -> str | None:
    """Why a run had stopped training when it was interrupted after its last saved epoch
    (while it chose its post-processing or wrote its report), else None: its time limit,
    as ``last.ckpt``'s training state records it. A checkpoint from before the stop was
    recorded tells it by its last epoch's row alone, where that epoch was cut short."""
    if state.get("stopped"):
        return str(state["stopped"])
    if history and history[-1].get("complete") is False:
        return f"time limit reached during epoch {history[-1]['epoch']}"
    return None




def _non_finite_weights(model: torch.nn.Module, ema: AveragedModel | None) -> list[str]:
    """The weights and buffers of ``model``, and of its average ``ema`` (named "ema ..."),
    that hold NaN or inf."""
    bad = non_finite(model.state_dict())
    if ema is not None:
        bad += [f"ema {name}" for name in non_finite(ema.module.state_dict())]
    return bad


def _diverged_stop(out: Path, saved: int, what: str, best_epoch: int, main: bool) -> str:
    """The ``stopped`` of a run whose ``what`` went non-finite: where no epoch was saved it is
    refused (:func:`_diverged`); else recorded in last.ckpt (and best.ckpt's metrics), so a
    resume finishes it from its best epoch without training on, as a time-limit stop."""
    if not saved:
        raise _diverged(out, saved, what)
    stopped = diverged_stop(what, best_epoch)
    if main:    # last.ckpt: what --resume reads (_recorded_stop); best.ckpt too, though _finish
        # rewrites it at once, so that until then (a kill while finishing) predict, evaluate
        # and export say it diverged: two more round trips, once, where a run has failed
        for name in ("last.ckpt", "best.ckpt"):
            ck = load_checkpoint(out / name)
            meta = dict(ck.meta, metrics={**ck.meta.get("metrics", {}), "stopped": stopped})
            save_checkpoint(out / name, ck.state_dict, meta,
                            {**ck.train_state, "stopped": stopped} if ck.train_state else None)
    return stopped


def _diverged_finished(out: Path, stopped: str, saved: int | None) -> UltrasegError:
    """The error of a run that diverged and was finished from its best epoch (``stopped``,
    as :func:`_diverged_stop` words it): it exits as a failure, naming the model kept."""
    what, kept = diverged_parts(stopped) or (stopped, "?")
    last = f"; the last good checkpoint (epoch {saved}) is kept in {out / 'last.ckpt'}" \
        if saved else ""
    return UltrasegError(f"{DIVERGED}: {what}; the run was finished from epoch {kept}, kept in "
                         f"{out / 'best.ckpt'} (report.html says so){last} (try a lower --lr)",
                         out)


def _diverged(out: Path, saved: int, what: str) -> UltrasegError:
    """The error for a diverged run: ``what`` went non-finite where, and which checkpoint
    survives: that of epoch ``saved``, the last saved (0: none). Checked before every save,
    so no saved checkpoint holds NaN/inf."""
    kept = (f"the last good checkpoint (epoch {saved}) is kept in {out / 'last.ckpt'}"
            if saved else "no epoch was saved, so no checkpoint was written")
    return UltrasegError(f"{DIVERGED}: {what}; {kept} (try a lower --lr)", out)


