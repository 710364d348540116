"""The time budget of a time-limited run (``--time-limit``, ``train.time_limit_s``): what is
kept back after training for the last validation, the post-processing choice and the report
(:func:`_reserve`), when the batch loop stops and when no further epoch fits
(:func:`_no_time_for_another_epoch`), the deadline of the post-processing choice
(:func:`_end_s`), and the epochs the learning-rate schedule spans (:func:`_horizon`).

:mod:`ultraseg.train` asks; nothing here trains, and the clock is read through ``time`` alone.
"""
from __future__ import annotations

import math
import time

import torch

from .config import RunConfig
from .data import Arrays
from .distributed import Dist
from .model import context_margin


def _no_time_for_another_epoch(now: float, deadline: float, epoch_s: float, batch_s: float,
                               val_s: float, limit_s: float | None) -> bool:
    """Whether a time-limited run stops after an epoch: another (up to a minute of it) and
    its validation would not fit, or not even one batch would fit before :func:`_reserve`,
    which the batch loop keeps. An epoch of one batch has no batch check of its own, so
    without the second rule it trained into the time kept for the post-processing choice and
    the report."""
    return (now + min(epoch_s, 60) + 2.5 * val_s > deadline
            or now + batch_s + _reserve(val_s, limit_s) > deadline)


#: Seconds a time-limited run keeps for saving the checkpoint and writing the report.
_END_S = 10.0


#: The fixed part of :func:`_reserve`: at most this many seconds, and at most this share of
#: the time limit (a limit of a minute or two would otherwise leave no time to train).
_RESERVE_S = 60.0
_RESERVE_SHARE = 0.25


def _reserve(val_s: float, limit_s: float | None = None) -> float:
    """Seconds a time-limited run keeps after its last training batch for the last validation,
    the post-processing choice on the validation frames and the report: 2.5 validations and
    60 s, or a quarter of the limit where that is less. The batch loop stops this far from the
    deadline, and the schedule's horizon counts the epochs that fit before that point, so the
    two agree.

    The choice predicts the validation frames at their own size twice (plain, then with the
    flip) and scores its grid on both: 20 s for BUSI's 100 validation frames, 45 s for
    HC18's 60 (800 x 540 each), 48 s for nerve's 351 on two 2026 AMD EPYC cores; it grows
    with the frames' pixels, which the validation pass on the working canvases (``val_s``)
    does not measure, hence the fixed part, and with how many components the network outlines
    (34 and 54 s of grid for two nerve runs): where it would pass the time limit, the choice
    is made on the validation frames scored by then, leaving the time to score the rest under
    it (:func:`ultraseg.finish._score_validation`'s ``deadline``, ``_END_S`` before the
    limit). Under a short limit that choice, made on a few small frames, takes seconds, and is
    cut short by its deadline where it would not."""
    return 2.5 * val_s + _reserve_fixed(limit_s)


def _reserve_fixed(limit_s: float | None) -> float:
    return _RESERVE_S if limit_s is None else min(_RESERVE_S, _RESERVE_SHARE * limit_s)


def _end_s(limit_s: float) -> float:
    """Seconds before the time limit by which the post-processing choice stops, leaving the
    rest for the checkpoint and the report: ``_END_S``, or half the reserve's fixed part where
    that is less (a short limit's training stops less than ``_END_S`` before it)."""
    return min(_END_S, _reserve_fixed(limit_s) / 2)


def _horizon(epochs: int, done: int, epoch_s: float, deadline: float, val_s: float,
             ctx: Dist, device: torch.device, limit_s: float | None = None) -> float:
    """Epochs the learning-rate schedule spans: ``epochs``, or, when a time limit will cut the
    run short, the ``done`` epochs plus those that still fit at ``epoch_s`` seconds each.

    Measured after epoch 1 (epoch 2 follows it) and again, for good, after epoch 2: the first
    epoch can run slower than the rest (30 % on an AVX-512 CPU without bf16, where a horizon
    sized by it brought nerve's cosine to its floor at the 8th epoch of 11). Each measure comes
    before the epoch's writes, and epoch 2's ``epoch_s`` runs from epoch 1's measure to its
    own, so it holds all an epoch takes: training, validation, the metrics and checkpoint
    writes (which can outlast a small model's fast epoch: left out, the time limit cut the
    cosine at 80 %). Epoch 1, and epoch 2 of a run resumed after it, have no measure before
    them: theirs is the epoch's training and validation. Stored in ``last.ckpt``: the
    schedule is then a function of the step alone, so a run resumed after ``kill -9`` repeats
    the uninterrupted one, and a run cut by ``--time-limit`` still reaches the end of its
    cosine. All ranks take the mean.
    """
    if deadline == math.inf:
        return float(epochs)
    fit = done + (deadline - time.monotonic() - _reserve(val_s, limit_s)) / max(epoch_s, 1e-6)
    fit = ctx.all_reduce_mean(fit, device)
    return float(min(epochs, max(2.0, math.floor(fit))))


def _val_cost_ratio(cfg: RunConfig, arrays: Arrays) -> float:
    """Cost of validating one canvas relative to one training sample's forward pass."""
    if cfg.model.variant != "valid":
        return 1.0
    from .predict import prediction_tile

    size = arrays.images.shape[-1]
    tile = prediction_tile(cfg.model, size, size)
    m = context_margin(cfg.model.depth)
    return ((tile + 2 * m) / (cfg.model.tile + 2 * m)) ** 2
