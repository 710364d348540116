"""Speed: ultraseg's training step and prediction against the plain PyTorch loop (issue 5).

    python benchmarks/speed.py [--quick] [--predict-frames N]
    PYTHONPATH=src python3 benchmarks/speed.py --device cuda [--quick] [--out DIR] [--data DIR]
    python benchmarks/speed.py --record-cuda DIR/speed-cuda.json

Measures in one run, on the same frames and the same weights:

* ``train_speedup``: training images/s of ``ultraseg train``'s step at the original geometry
  (valid U-Net, 252 -> 68 tiles, batch 4; bf16 autocast where the CPU has it, channels_last,
  batches drawn by ``ultraseg.train.Batches``) over a plain loop (fp32, eager, contiguous,
  batches already in memory), each side in fresh Python processes: the reference as the
  original notebook runs it (alone, glibc's default allocator), ultraseg as the ``ultraseg``
  command sets up its own process (see below). ``plain_processes`` processes of each side,
  alternating, and each side's fastest process counts; within each process each side's best
  round counts (as ``timeit`` does: other work on shared cores only adds time). The same
  number of tries for both: until 2026-11-30 ultraseg's figure came from the benchmark's own
  process alone against the best of the reference's processes (recorded beside it as
  ``train_images_per_s_same_process``).
  ``train_speedup_same_allocator``: both sides in the benchmark's own process (set up as the
  command sets it up), in rounds alternating, so the reference is given ultraseg's allocator
  setting too: what ultraseg's computation gains, apart from the process set-up (the median
  of the per-round ratios is recorded beside it).
  ``train_gflops``: 3 x the forward FLOPs per image (counted from the layer shapes with
  ``torch.utils.flop_counter``) x images/s.
* ``pipeline_overhead``: the real ``ultraseg.train.train`` on a folder of phantom PNG frames, in
  a child process: the wall time of the training batches of its second (warm) epoch, divided by
  the best of two passes of the same number of steps on batches already in memory (one before
  the run, one after). The data cache is off (cold), which only moves decoding before the
  epochs, outside the timed loop.
* ``infer_speedup``: whole 580x420 frames (the Kaggle sample TIFFs when present, else phantom
  frames) at their own resolution: ``ultraseg``'s predictor (bf16 weights where the CPU has
  bf16, channels_last, one mirror-padded 604x764 window per frame) over the plain reference
  (fp32, eager, contiguous, 252 -> 68 tiles batched by 4), in the same fresh processes as
  training; each frame's best of a few repeats. ``infer_speedup_same_allocator``: against
  the reference in ultraseg's process, repeats alternating.
  ``infer_mask_agreement``: the fraction of pixels whose mask is the same in the fast path and
  in fp32 with the same windows (precision alone; on a CPU without native bf16 the fast path
  is fp32 too, ``details.infer.precision``, so it compares nothing of precision there, and
  the table says "fp32 both sides" with no target). ``infer_mask_agreement_vs_reference``: the
  same against the 68-pixel-tile fp32 reference, which also counts the differences that come
  from the tiles' different alignment to the 16-pixel pooling grid. The weights are random
  (seed 1) with the final layer's bias shifted so that 10 % of the pixels are foreground in
  fp32: a random network's logits cluster around 0, and unshifted half of the pixels would
  sit next to the threshold. A random network is far more sensitive to the pooling alignment
  than a trained one, so the second figure is a pessimistic bound.
* ``train_peak_rss_gb`` / ``predict_peak_rss_gb``: peak resident memory (VmHWM) of the training
  child above, and of a child that loads a saved checkpoint as ``ultraseg predict`` does and
  streams a folder of frames (500 in the full run: real nerve frames when present, else
  phantom ones) through it, writing one mask PNG per frame. ``predict_native_peak_rss_gb``:
  the same child on 580x420 frames with a checkpoint that keeps frames at their own
  resolution -- the path ``infer_speedup`` times, whose one large window per frame holds the
  most memory (40 frames: streaming, the peak is that of one batch, not of the count).
* ``peak_fp32_gflops`` / ``peak_bf16_gflops``: the best of a few runs of one 3x3 convolution
  (128 -> 128 channels on 256 x 256, channels_last, oneDNN) in each precision -- what these
  cores give the network's own operation at a good shape. (A 2048 x 2048 fp32 matrix product
  reached only 204 GFLOP/s here, below what the fp32 reference's convolutions achieve, so it
  is no ceiling; on a CPU without native bf16 the bf16 figure is oneDNN's emulation, which the
  table says.) From them: ``train_ceiling`` (bf16 peak / the reference's achieved training
  GFLOP/s with the same allocator, its best: the most any bf16 computation at the same
  geometry could gain over the reference's computation) and ``infer_ceiling`` (the same for
  prediction, times the FLOPs the one-window plan saves over 68-pixel tiles). On a CPU without
  native bf16 ultraseg computes in fp32 (bf16 is emulated there, several times slower than
  fp32), and both ceilings use the fp32 peak: ``ceiling_precision`` says which.
* ``--device cuda``: the training and prediction comparisons alone, on the GPU: ultraseg's
  step and predictor as they run there (AMP bf16 where the GPU has it, channels_last, cuDNN's
  autotuning: ``ultraseg.runtime.cudnn_autotune``) against the same plain reference (fp32,
  eager, contiguous, cuDNN's default algorithms; note that PyTorch lets cuDNN convolutions use
  TF32 on Ampere and later GPUs: recorded as ``cudnn_allow_tf32``), at batch 4 and 32, with
  peak GPU memory (of both sides together: the reference's model and batches stay on the
  GPU), then the compiled predictor. No CPU figure is taken: those come from a CPU run.
  Each finished section is written at once to ``OUT/speed-cuda.json`` (``--out``; default
  ``benchmarks/results``, with ``--quick`` or ``--no-write`` a new temporary folder, named on
  stderr) and printed to stderr, so a run cut short keeps what it measured.
  ``--record-cuda FILE`` puts such a file (brought back from a GPU machine) into
  ``results/speed-cuda.json`` and the "Speed (GPU)" section of ``RESULTS.md``, beside the CPU
  figures, which stay as they are; it refuses a ``--quick`` run's.

The process set-up: the ``ultraseg`` command keeps glibc's freed memory for reuse in its own
process (``ultraseg.cli.keep_freed_memory``). Without it, glibc maps every block over 32 MB
afresh and hands it back when freed, so each pass faults the width-64 network's activations
in again; a plain script pays that. The benchmark's own processes (the parent, where
ultraseg's figures and the same-allocator reference are taken, and the training and
prediction children) set it as the command does; only the plain-reference children turn it
off (``ULTRASEG_KEEP_FREED_MEMORY=0``). Why the headline is the plain-process comparison: the
issue's reference is the plain loop "as the original notebook" runs it, and a notebook does
not tune glibc, any more than it picks ultraseg's precision or thread settings; the
allocator setting is one of ultraseg's levers. The same-allocator figures show how much of
the gain is the computation itself.

``--quick`` (width-8 model, few frames and steps) finishes in under a minute and prints the
same keys: it shows the script works; the targets apply to the full run. The full run also
writes ``benchmarks/results/speed.json`` and the "Speed" section of ``benchmarks/RESULTS.md``.
The last stdout line is the JSON object.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from host import conv_peak, cpu_name

HERE = Path(__file__).resolve().parent
DATA = (HERE.parent / ".." / "shared" / "datasets").resolve()   # --data sets another
KAGGLE_FRAMES = ("kaggle_nerve_sample/train/1_1.tif", "kaggle_nerve_sample/test/1.tif")
FOREGROUND_FRACTION = 0.10   # share of foreground pixels the shifted head bias gives in fp32


@dataclass(frozen=True)
class Settings:
    width: int
    train_rounds: int          # alternating rounds of reference and ultraseg steps (best of)
    train_steps: int           # steps per round and side
    infer_frames: int          # 580x420 frames predicted by both paths
    infer_reps: int            # alternating repeats of both paths per frame (best of)
    pipeline_frames: int       # phantom frames of the training child (80 % train)
    predict_frames: int        # frames streamed by the prediction child
    native_frames: int = 40    # 580x420 frames streamed at their own resolution (peak RSS)
    plain_processes: int = 4   # child processes timing the reference as a plain script
    cuda_batches: tuple[int, ...] = (4, 32)
    cuda_train_steps: int = 20  # steps per round on a GPU (a step takes milliseconds there)
    infer_compiled: bool = True  # also time torch_runner(compile=True) (not the headline)


FULL = Settings(width=64, train_rounds=6, train_steps=1, infer_frames=2, infer_reps=2,
                pipeline_frames=60, predict_frames=500)
QUICK = Settings(width=8, train_rounds=4, train_steps=2, infer_frames=1, infer_reps=2,
                 pipeline_frames=24, predict_frames=40, native_frames=2, plain_processes=1,
                 cuda_batches=(4,), cuda_train_steps=2,
                 infer_compiled=False)


# ------------------------------------------------------------------------------------ helpers
def vm_hwm_gb() -> float:
    """Peak resident memory of this process so far (VmHWM), GB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def machine() -> dict[str, Any]:
    import torch

    from ultraseg.runtime import cpu_has_bf16

    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_bf16": cpu_has_bf16(), "torch": torch.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return info


@contextlib.contextmanager
def cudnn_default(device) -> Iterator[None]:
    """The plain reference's cuDNN: PyTorch's default, no autotuning (restored after)."""
    import torch

    before = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def forward_gflop(width: int, shape: tuple[int, int], depth: int = 4) -> float:
    """Forward FLOPs (GFLOP) of one image through the valid U-Net, counted from its layers."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ultraseg.config import ModelConfig
    from ultraseg.model import build_model

    with torch.device("meta"):
        net = build_model(ModelConfig(width=width, depth=depth))
        with FlopCounterMode(display=False) as counter:
            net(torch.empty(1, 1, *shape))
    return counter.get_total_flops() / 1e9


def run_config(width: int, data: Path | str = "", device: str = "cpu", **train: Any):
    """The 'seed' preset (the original recipe) at ``width``, on ``data``, without a cache."""
    from ultraseg.config import merge, preset

    return merge(preset("seed"), {"model": {"width": width},
                                  "data": {"path": str(data), "layout": "folders",
                                           "cache_dir": ""},
                                  "train": {"device": device, **train}})


# ------------------------------------------------------------------------------------ training
def ultraseg_step_fn(cfg, device, dtype, layout=None) -> tuple[Callable, str]:
    """One optimisation step exactly as ``ultraseg.train`` takes it; returns (step, source).

    ``step(model, optimizer, x, y, gen)`` -> loss (float). Uses ``ultraseg.train.forward_loss``
    and ``optimizer_step`` where the package has them; otherwise a line-by-line replica of the
    loop body of ``ultraseg.train._train`` (augment, channels_last, autocast, loss, finite check,
    zero_grad(set_to_none), backward, step).
    """
    import torch

    from ultraseg import train as train_mod
    from ultraseg.augment import augment_batch
    from ultraseg.losses import compute_loss
    from ultraseg.runtime import autocast

    layout = torch.channels_last if layout is None else layout
    forward_loss = getattr(train_mod, "forward_loss", None)
    optimizer_step = getattr(train_mod, "optimizer_step", None)
    layout_aware = hasattr(train_mod, "training_layout")
    if forward_loss is not None and optimizer_step is not None:
        def step(model, optimizer, x, y, gen) -> float:
            x, y = augment_batch(x, y, cfg.train.augment, gen)
            loss = (forward_loss(model, x, y, cfg, device, dtype, layout)
                    if layout_aware else forward_loss(model, x, y, cfg, device, dtype))
            value = loss.item()
            if not math.isfinite(value):
                raise RuntimeError(f"loss is {value}")
            optimizer_step(optimizer, loss)
            return value

        return step, "ultraseg.train.forward_loss + optimizer_step"

    def step(model, optimizer, x, y, gen) -> float:  # replica of ultraseg.train._train's loop
        x, y = augment_batch(x, y, cfg.train.augment, gen)
        x = x.to(device).contiguous(memory_format=layout)
        y = y.to(device)
        with autocast(device, dtype):
            logits = model(x)
        loss = compute_loss(cfg.train.loss, logits, y)
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"loss is {value}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return value

    return step, "replica of the loop body of ultraseg.train._train"


def ultraseg_layout(device, dtype):
    """The memory layout ``ultraseg.train`` trains in here (``training_layout`` where the
    package has it: channels_last, contiguous on a CPU computing in fp32)."""
    import torch

    from ultraseg import train as train_mod

    choose = getattr(train_mod, "training_layout", None)
    return torch.channels_last if choose is None else choose(device, dtype)


def ultraseg_optimizer(model, cfg):
    """The optimiser ``ultraseg.train`` builds: ``make_optimizer`` where the package has it,
    else the Adam of ``_train``."""
    import torch

    from ultraseg import train as train_mod

    make = getattr(train_mod, "make_optimizer", None)
    if make is not None:
        return make(model, cfg)
    return torch.optim.Adam(model.parameters(), lr=cfg.train.lr,
                            weight_decay=cfg.train.weight_decay)


def reference_step(model, optimizer, x, y) -> float:
    """The plain loop of the original notebook: fp32, eager, contiguous tensors."""
    import torch

    optimizer.zero_grad()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def make_phantom(folder: Path, n: int, size: int = 256, seed: int = 0) -> Path:
    from ultraseg.phantom import make_dataset

    return make_dataset(folder, n=n, size=size, seed=seed)


def training_batches(cfg):
    """``ultraseg.train.Batches`` over every frame of ``cfg``'s folder, built as train() builds
    them."""
    from ultraseg.data import load_arrays
    from ultraseg.io import open_dataset
    from ultraseg.train import Batches

    ds = open_dataset(cfg.data.path, cfg.data.layout, cfg.data.subject_pattern)
    arrays = load_arrays(ds, cfg.preprocess, cfg.data.cache_dir)
    return Batches(arrays, np.arange(len(arrays.names)), cfg)


def endless(batches, seed: int = 0):
    """Full batches of successive epochs, forever (each epoch drawn as train() draws it)."""
    epoch = 0
    while True:
        epoch += 1
        for x, y in batches.epoch(np.random.default_rng([seed, epoch])):
            if len(x) == batches.cfg.train.batch_size:
                yield x, y


def reference_batches(batches, steps: int, device) -> list[tuple[Any, Any]]:
    """The reference's batches: drawn as ``ultraseg`` draws them, then held in memory as plain
    contiguous fp32 tensors."""
    out = []
    for x, y in endless(batches, seed=1):
        if len(out) == steps:
            break
        out.append((x.to(device).contiguous(), y.to(device)))
    return out


def measure_training(s: Settings, data: Path, device_name: str = "cpu",
                     batch_size: int = 4, steps: int | None = None) -> dict[str, Any]:
    """Images/s of the plain loop and of ultraseg's step, in alternating rounds of ``steps``
    steps (``s.train_steps`` unless given)."""
    import torch

    from ultraseg import train as train_mod
    from ultraseg.model import build_model
    from ultraseg.runtime import cudnn_autotune, resolve_device, resolve_precision

    device = resolve_device(device_name)
    cfg = run_config(s.width, data, device_name, batch_size=batch_size)
    dtype = resolve_precision(cfg.train.precision, device)
    batches = training_batches(cfg)
    source = endless(batches)
    steps = s.train_steps if steps is None else steps
    ref_batches = reference_batches(batches, steps, device)
    torch.manual_seed(0)
    ref_model = build_model(cfg.model).to(device)
    layout = ultraseg_layout(device, dtype)
    fast_model = copy.deepcopy(ref_model).to(memory_format=layout)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=cfg.train.lr)
    fast_opt = ultraseg_optimizer(fast_model, cfg)
    step, step_source = ultraseg_step_fn(cfg, device, dtype, layout)
    gen = torch.Generator().manual_seed(0)
    ref_model.train()
    fast_model.train()

    def ref_round() -> None:
        with cudnn_default(device):
            for x, y in ref_batches:
                reference_step(ref_model, ref_opt, x, y)

    def fast_round() -> None:
        with cudnn_autotune(device):     # as ultraseg.train.train runs on a GPU
            for _ in range(steps):
                x, y = next(source)
                step(fast_model, fast_opt, x, y, gen)

    ref_round()          # warm-up: allocator, oneDNN / cuDNN primitives
    fast_round()
    ref_t, fast_t = [], []
    for r in range(s.train_rounds):  # alternate the order too: drift hits both sides alike
        for side in (("ref", "fast") if r % 2 == 0 else ("fast", "ref")):
            if side == "ref":
                ref_t.append(timed(ref_round, device))
            else:
                fast_t.append(timed(fast_round, device))
    images = steps * batch_size
    ref_ips = images / min(ref_t)  # best round of each: contention on shared cores only adds
    fast_ips = images / min(fast_t)
    return {
        "ref_images_per_s": round(ref_ips, 3), "images_per_s": round(fast_ips, 3),
        "speedup": round(fast_ips / ref_ips, 3),
        "speedup_median_of_rounds": round(statistics.median(
            r / f for r, f in zip(ref_t, fast_t)), 3),
        "precision": "bf16" if dtype else "fp32", "step": step_source,
        "layout": "channels_last" if layout == torch.channels_last else "contiguous",
        "optimizer": ("ultraseg.train.make_optimizer" if hasattr(train_mod, "make_optimizer")
                      else "torch.optim.Adam as ultraseg.train._train builds it"),
        "round_seconds": {"reference": [round(t, 3) for t in ref_t],
                          "ultraseg": [round(t, 3) for t in fast_t]},
    }


def child_pipeline(args: dict[str, Any]) -> dict[str, Any]:
    """In a child: ``ultraseg.train.train`` on a folder (2 epochs) between two passes of the
    same number of steps on batches already in memory."""
    import torch

    from ultraseg.model import build_model
    from ultraseg.runtime import resolve_device, resolve_precision
    from ultraseg.train import train

    cfg = run_config(args["width"], args["data"], args["device"], epochs=2)
    device = resolve_device(args["device"])
    dtype = resolve_precision(cfg.train.precision, device)
    batches = training_batches(cfg)
    n = math.ceil(round((1 - cfg.train.val_fraction) * len(batches.index))
                  / cfg.train.batch_size)  # about train()'s steps per epoch; corrected below
    layout = ultraseg_layout(device, dtype)
    held = []
    for x, y in endless(batches):
        if len(held) == 2 * n + 2:
            break
        held.append((x.to(device).contiguous(memory_format=layout), y.to(device)))
    del batches
    step, _ = ultraseg_step_fn(cfg, device, dtype, layout)

    def pure(steps: int) -> float:
        """Seconds for ``steps`` steps of a fresh model on the held batches (after a warm-up)."""
        torch.manual_seed(0)
        model = build_model(cfg.model).to(device).to(memory_format=layout).train()
        optimizer = ultraseg_optimizer(model, cfg)
        gen = torch.Generator().manual_seed(0)
        step(model, optimizer, *held[-1], gen)
        return timed(lambda: [step(model, optimizer, x, y, gen) for x, y in held[:steps]],
                     device)

    before = pure(n)
    epochs: dict[int, dict[str, float]] = {}

    def progress(e: dict[str, Any]) -> None:
        if e.get("event") == "batch":
            epochs[e["epoch"]] = {"seconds": e["elapsed"], "batches": e["batch"]}

    t = time.perf_counter()
    train(cfg, Path(args["out"]) / "run", progress=progress)
    run_s = time.perf_counter() - t
    peak = vm_hwm_gb()
    steps = epochs[2]["batches"]
    passes = [before * steps / n, pure(steps)]
    return {"epoch_loop_s": [round(epochs[k]["seconds"], 3) for k in sorted(epochs)],
            "steps_per_epoch": steps, "pure_s": [round(p, 3) for p in passes],
            "train_run_s": round(run_s, 2), "peak_rss_gb": round(peak, 3)}


# ------------------------------------------------------------------------------------ inference
def kaggle_frames(n: int) -> list[str]:
    """The Kaggle sample frames at ``DATA`` (relative to it) that :func:`infer_images` reads,
    at most ``n``: phantom frames stand in for the rest."""
    return [rel for rel in KAGGLE_FRAMES if (DATA / rel).is_file()][:n]


def nerve_files(n: int) -> list[Path] | None:
    """``n`` real nerve frames at ``DATA`` that :func:`predict_files` streams; None where fewer
    are there (it streams phantom ones instead)."""
    nerve = DATA / "nerve" / "images"
    files = sorted(nerve.glob("*.jpg"))[:n] if nerve.is_dir() else []
    return files if len(files) == n else None


def infer_images(n: int) -> tuple[list[np.ndarray], str]:
    """``n`` 420x580 uint8 frames: the Kaggle sample TIFFs when present, then phantom frames."""
    from ultraseg.io.images import read_image
    from ultraseg.phantom import make_frame

    sources = kaggle_frames(n)
    images = [read_image(DATA / rel) for rel in sources]
    rng = np.random.default_rng(0)
    while len(images) < n:
        images.append(make_frame(rng, 580)[0][80:500])
        sources.append("phantom")
    return images, ", ".join(sorted(set(sources)))


def decisive_model(width: int, device, images: list[np.ndarray]):
    """Random weights (seed 1), head bias shifted so that 10 % of fp32 pixels are foreground.

    Returns (model, the fp32 mask of each frame with ultraseg's windows, after the shift).
    """
    import torch

    from ultraseg.config import ModelConfig, PreprocessConfig
    from ultraseg.model import build_model
    from ultraseg.predict import Predictor
    from ultraseg.runtime import torch_runner

    torch.manual_seed(1)
    cfg = ModelConfig(width=width)
    model = build_model(cfg).to(device)
    # (a copy: torch_runner turns its model channels_last, and the reference runs contiguous)
    pred = Predictor(torch_runner(copy.deepcopy(model), device, None), cfg,
                     PreprocessConfig(size=None))
    probs = [pred.predict_proba(im) for im in images]
    logits = np.concatenate([_logit(p).ravel() for p in probs])
    shift = float(np.quantile(logits, 1 - FOREGROUND_FRACTION))
    with torch.no_grad():
        model.head.bias -= shift
    # the fp32 masks of the shifted model: logit - shift > 0 (the head is the last, linear layer)
    return model, [(_logit(p) > shift) for p in probs]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def _store(out: dict, key: str, fn: Callable, *args: Any) -> None:
    out[key] = fn(*args)


def reference_predict(model, device, tile: int = 68, batch: int = 4):
    """The plain reference: fp32, eager, contiguous, 252 -> 68 tiles batched by 4."""
    import torch

    from ultraseg.geometry import context_margin
    from ultraseg.tiling import predict_tiled

    model = copy.deepcopy(model).to(device).eval()

    def run(tiles: np.ndarray) -> np.ndarray:
        with torch.no_grad(), cudnn_default(device):
            return torch.sigmoid(model(torch.from_numpy(tiles).to(device))).cpu().numpy()

    def predict(image: np.ndarray) -> np.ndarray:
        return predict_tiled(run, image.astype(np.float32) / 255.0, tile,
                             context_margin(model.cfg.depth), batch)[0]

    return predict


def measure_inference(s: Settings, device_name: str = "cpu") -> dict[str, Any]:
    """Seconds per 580x420 frame of the plain reference and of ultraseg's predictor, and how
    far their masks agree."""
    from ultraseg.config import ModelConfig, PreprocessConfig
    from ultraseg.geometry import context_margin
    from ultraseg.predict import Predictor, prediction_window
    from ultraseg.runtime import resolve_device, resolve_precision, torch_runner
    from ultraseg.tiling import plan_tiles

    device = resolve_device(device_name)
    images, source = infer_images(s.infer_frames)
    model, fp32_masks = decisive_model(s.width, device, images)
    dtype = resolve_precision("auto", device)
    cfg = ModelConfig(width=s.width)
    # the reference copies the model first: torch_runner turns it channels_last in place
    reference = reference_predict(model, device)
    # (on a GPU the runner autotunes cuDNN as ultraseg predict does: runtime.cudnn_autotune)
    fast = Predictor(torch_runner(model, device, dtype), cfg, PreprocessConfig(size=None))
    for _ in range(2):      # warm-up: oneDNN primitives; cuDNN's autotuning (2nd call on)
        fast.predict_proba(images[0])
    ref_t, fast_t, same, vs_ref = [], [], [], []
    for image, m32 in zip(images, fp32_masks):
        out: dict[str, np.ndarray] = {}
        ref_reps, fast_reps = [], []
        for r in range(s.infer_reps):  # alternating, best of each (contention only adds time)
            for side in (("ref", "fast") if r % 2 == 0 else ("fast", "ref")):
                fn = reference if side == "ref" else fast.predict_proba
                reps = ref_reps if side == "ref" else fast_reps
                reps.append(timed(partial(_store, out, side, fn, image), device))
        ref_t.append(min(ref_reps))
        fast_t.append(min(fast_reps))
        mask = out["fast"] >= 0.5
        same.append(float(np.mean(mask == m32)))
        vs_ref.append(float(np.mean(mask == (out["ref"] >= 0.5))))
    # the opt-in compiled backend: recorded, not the headline
    compiled = time_compiled(fast, model, device, dtype, images[0]) if s.infer_compiled else {}
    h, w = images[0].shape
    th, tw = prediction_window(cfg, h, w)
    margin = context_margin(cfg.depth)
    square = fast.with_options(tile=max(h, w))  # one square window: what rectangles save
    for _ in range(2):                          # (a new shape: its warm-up)
        square.predict_proba(images[0])
    square_s = timed(lambda: square.predict_proba(images[0]), device)
    return {
        "frames": len(images), "frame_shape": [h, w], "source": source,
        "ref_s_per_frame": round(float(np.mean(ref_t)), 3),
        "s_per_frame": round(float(np.mean(fast_t)), 3),
        "speedup": round(float(np.sum(ref_t) / np.sum(fast_t)), 3),
        "square_window_s": round(square_s, 3),
        "mask_agreement": round(float(np.mean(same)), 5),
        "mask_agreement_vs_reference": round(float(np.mean(vs_ref)), 5),
        "compiled": compiled or None,
        "precision": "bf16" if dtype else "fp32",
        "ref_gflop_per_frame": round(forward_gflop(s.width, (252, 252))
                                     * len(plan_tiles(h, w, 68)), 1),
        "window": [th + 2 * margin, tw + 2 * margin],
        "gflop_per_frame": round(forward_gflop(s.width, (th + 2 * margin, tw + 2 * margin)), 1),
    }


def child_plain(args: dict[str, Any]) -> dict[str, Any]:
    """In a child that keeps glibc's default allocator, as a plain script runs: the reference
    alone, its training rounds (best of) and its frame predictions (best of, per frame)."""
    import torch

    from ultraseg.config import ModelConfig
    from ultraseg.model import build_model

    s = Settings(**args["settings"])
    device = torch.device("cpu")
    cfg = run_config(s.width, args["data"])
    ref_batches = reference_batches(training_batches(cfg), s.train_steps, device)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)

    def train_round() -> None:
        for x, y in ref_batches:
            reference_step(model, opt, x, y)

    def make_predict() -> Callable[[np.ndarray], Any]:
        torch.manual_seed(1)
        return reference_predict(build_model(ModelConfig(width=s.width)), device)

    images_per_s, s_per_frame = time_one_side(s, cfg, device, train_round, make_predict)
    return {"ref_images_per_s": images_per_s, "ref_s_per_frame": s_per_frame,
            "allocator_kept_freed_memory": False}


def time_one_side(s: Settings, cfg, device, train_round: Callable[[], None],
                  make_predict: Callable[[], Callable[[np.ndarray], Any]]
                  ) -> tuple[float, float]:
    """One side of the comparison alone in its process (the plain and ultraseg children):
    training images/s (best of ``s.train_rounds`` rounds, after a warm-up round), then seconds
    per 580x420 frame of the predictor ``make_predict`` builds after training (each frame's
    best of ``s.infer_reps``, after a warm-up frame)."""
    train_round()
    train_s = min(timed(train_round, device) for _ in range(s.train_rounds))
    images, _ = infer_images(s.infer_frames)
    predict = make_predict()
    predict(images[0])
    frame_s = [min(timed(partial(predict, im), device) for _ in range(s.infer_reps))
               for im in images]
    return (round(s.train_steps * cfg.train.batch_size / train_s, 3),
            round(float(np.mean(frame_s)), 3))


def child_predict(args: dict[str, Any]) -> dict[str, Any]:
    """In a child: load a checkpoint as ``ultraseg predict`` does, stream a folder through it."""
    from PIL import Image

    from ultraseg.io.images import read_image
    from ultraseg.postprocess import apply as apply_postprocess
    from ultraseg.predict import load

    files = [Path(p) for p in args["files"]]
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    predictor = load(args["checkpoint"], device=args["device"])
    t = time.perf_counter()
    n = 0
    for path, prob in zip(files, predictor.predict_proba_many(read_image(p) for p in files)):
        mask = apply_postprocess(prob, predictor.postprocess)
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{path.stem}_mask.png")
        n += 1
    return {"frames": n, "seconds": round(time.perf_counter() - t, 2),
            "peak_rss_gb": round(vm_hwm_gb(), 3)}


def say_phantom_stand_ins(s: Settings, device: str) -> None:
    """One stderr line when the datasets' frames this run reads (:func:`infer_images`; on the
    CPU :func:`predict_files` too) are not at ``DATA``, so that phantom frames stand in."""
    found = kaggle_frames(s.infer_frames)
    missing = ([] if len(found) == s.infer_frames
               else [rel for rel in KAGGLE_FRAMES if rel not in found])
    if device == "cpu" and nerve_files(s.predict_frames) is None:
        missing.append(f"nerve/images ({s.predict_frames} frames)")
    if missing:
        print(f"datasets not found at {DATA} ({', '.join(missing)}): phantom frames; figures "
              "will not compare with the recorded ones (--data sets where)", file=sys.stderr)


def predict_files(n: int, tmp: Path) -> tuple[list[str], str]:
    """``n`` frames to stream: real nerve frames when present, else phantom PNGs."""
    files = nerve_files(n)
    if files is not None:
        return [str(p) for p in files], "nerve (256x256 JPEG)"
    folder = make_phantom(tmp / "predict_frames", n)
    return [str(p) for p in sorted((folder / "images").glob("*.png"))], "phantom (256x256 PNG)"


def save_checkpoint_for(width: int, path: Path, native: bool = False) -> None:
    """The seed recipe's model at ``width``; ``native``: frames kept at their own resolution
    (``preprocess.size=None``), the path infer_speedup times, with its large windows."""
    import torch

    from ultraseg.checkpoint import make_meta, save_checkpoint
    from ultraseg.config import PostprocessConfig, merge
    from ultraseg.model import build_model

    cfg = run_config(width)
    if native:
        cfg = merge(cfg, {"preprocess": {"size": None}})
    torch.manual_seed(0)
    model = build_model(cfg.model)
    save_checkpoint(path, model.state_dict(),
                    make_meta(cfg.model, cfg.preprocess, PostprocessConfig(), {}, cfg.to_dict()))


def native_files(n: int, tmp: Path) -> list[str]:
    """``n`` 420x580 frames as PNG files (the Kaggle sample's, then phantom ones)."""
    from PIL import Image

    images, _ = infer_images(n)
    folder = tmp / "native_frames"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    return [str(p) for p in paths]


def child_ultraseg(args: dict[str, Any]) -> dict[str, Any]:
    """In a child set up as the ``ultraseg`` command sets up its process: ultraseg's side
    alone, its training rounds (best of) and its frame predictions (best of, per frame); the
    counterpart of :func:`child_plain`."""
    import torch

    from ultraseg.config import ModelConfig, PreprocessConfig
    from ultraseg.model import build_model
    from ultraseg.predict import Predictor
    from ultraseg.runtime import resolve_precision, torch_runner

    s = Settings(**args["settings"])
    device = torch.device("cpu")
    cfg = run_config(s.width, args["data"])
    dtype = resolve_precision(cfg.train.precision, device)
    source = endless(training_batches(cfg))
    torch.manual_seed(0)
    layout = ultraseg_layout(device, dtype)
    model = build_model(cfg.model).to(memory_format=layout).train()
    opt = ultraseg_optimizer(model, cfg)
    step, _ = ultraseg_step_fn(cfg, device, dtype, layout)
    gen = torch.Generator().manual_seed(0)

    def train_round() -> None:
        for _ in range(s.train_steps):
            x, y = next(source)
            step(model, opt, x, y, gen)

    def make_predict() -> Callable[[np.ndarray], Any]:
        torch.manual_seed(1)
        net = build_model(ModelConfig(width=s.width))
        return Predictor(torch_runner(net, device, dtype), net.cfg,
                         PreprocessConfig(size=None)).predict_proba

    images_per_s, s_per_frame = time_one_side(s, cfg, device, train_round, make_predict)
    return {"images_per_s": images_per_s, "s_per_frame": s_per_frame,
            "allocator_kept_freed_memory": True}


def fresh_processes(s: Settings, data: Path) -> dict[str, Any]:
    """Both sides in fresh processes, ``s.plain_processes`` of each, alternating: the reference
    as a plain script runs it (glibc's default allocator), ultraseg as its command sets its
    process up. Each side's fastest figures of any of its processes count (each side's best,
    as everywhere in this benchmark: the same number of tries for both)."""
    plain, ours = [], []
    for _ in range(s.plain_processes):
        plain.append(run_child("plain", {"settings": asdict(s), "data": str(data)},
                               env={"ULTRASEG_KEEP_FREED_MEMORY": "0"}))
        ours.append(run_child("ultraseg", {"settings": asdict(s), "data": str(data)}))
    return {"ref_images_per_s": max(r["ref_images_per_s"] for r in plain),
            "ref_s_per_frame": min(r["ref_s_per_frame"] for r in plain),
            "images_per_s": max(r["images_per_s"] for r in ours),
            "s_per_frame": min(r["s_per_frame"] for r in ours),
            "processes": plain, "ultraseg_processes": ours}


def run_child(kind: str, args: dict[str, Any], env: dict[str, str] | None = None
              ) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--data", str(DATA), "--child", kind,
                           json.dumps(args)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    if proc.returncode:
        raise RuntimeError(f"{kind} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ the run
def measure_cuda(s: Settings, out_dir: Path, quick: bool) -> dict[str, Any]:
    """The training and prediction comparisons on the GPU alone (see the module docstring),
    each section written to ``out_dir/speed-cuda.json`` and said on stderr as it ends."""
    import torch

    t0 = time.perf_counter()
    result: dict[str, Any] = {"quick": quick, "settings": asdict(s), "machine": machine(),
                              "frames_source": None}
    out_dir.mkdir(parents=True, exist_ok=True)

    def done(name: str, value: dict[str, Any]) -> None:
        result[name] = value
        result["seconds"] = round(time.perf_counter() - t0, 1)
        (out_dir / "speed-cuda.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"[{result['seconds']:.0f} s] {name}: {json.dumps(value)}", file=sys.stderr,
              flush=True)

    with tempfile.TemporaryDirectory(prefix="ultraseg-speed-") as tmp_name:
        data = make_phantom(Path(tmp_name) / "phantom", s.pipeline_frames)
        for bs in s.cuda_batches:
            torch.cuda.reset_peak_memory_stats()
            r = measure_training(s, data, "cuda", batch_size=bs, steps=s.cuda_train_steps)
            r["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
            r["gflops"] = round(3 * forward_gflop(s.width, (252, 252)) * r["images_per_s"], 1)
            done(f"train_batch{bs}", r)
    torch.cuda.reset_peak_memory_stats()
    eager = replace(s, infer_compiled=False)      # the compiler last: the slowest, riskiest
    r = measure_inference(eager, "cuda")
    r["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    r["frames_per_s"] = round(1 / r["s_per_frame"], 2)
    result["frames_source"] = r["source"]
    done("infer", r)
    first = result[f"train_batch{s.cuda_batches[0]}"]
    result.update(train_speedup=first["speedup"], train_images_per_s=first["images_per_s"],
                  infer_speedup=r["speedup"], infer_frames_per_s=r["frames_per_s"],
                  infer_mask_agreement=r["mask_agreement"])
    if s.infer_compiled:
        compiled = measure_compiled(s, "cuda")
        done("infer_compiled", compiled)
    return result


def time_compiled(fast, model, device, dtype, image: np.ndarray) -> dict[str, Any]:
    """The opt-in compiled predictor (``torch_runner(compile=True)``) beside ``fast``, the
    eager one, on one frame: the first call (compiling), then the best of two calls each."""
    from ultraseg.runtime import torch_runner

    out: dict[str, Any] = {}
    try:
        comp = replace(fast, run_batch=torch_runner(model, device, dtype, compile=True))
        out["compile_s"] = round(timed(partial(comp.predict_proba, image), device), 1)
        out["s_per_frame"] = round(min(
            timed(partial(comp.predict_proba, image), device) for _ in range(2)), 3)
        out["eager_s_per_frame"] = round(min(
            timed(partial(fast.predict_proba, image), device) for _ in range(2)), 3)
    except Exception as e:  # noqa: BLE001 -- no compiler, unsupported build: say so
        out["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


def measure_compiled(s: Settings, device_name: str) -> dict[str, Any]:
    """:func:`time_compiled` on its own (the GPU run's last section)."""
    import torch

    from ultraseg.config import ModelConfig, PreprocessConfig
    from ultraseg.model import build_model
    from ultraseg.predict import Predictor
    from ultraseg.runtime import resolve_device, resolve_precision, torch_runner

    device = resolve_device(device_name)
    images, _ = infer_images(1)
    dtype = resolve_precision("auto", device)
    cfg = ModelConfig(width=s.width)
    torch.manual_seed(1)
    model = build_model(cfg).to(device)
    fast = Predictor(torch_runner(model, device, dtype), cfg, PreprocessConfig(size=None))
    for _ in range(2):                  # warm-up (cuDNN's autotuning: from the 2nd call on)
        fast.predict_proba(images[0])
    return time_compiled(fast, model, device, dtype, images[0])


def benchmark(s: Settings, quick: bool) -> dict[str, Any]:
    """The CPU run (see the module docstring)."""
    t0 = time.perf_counter()
    sections: dict[str, float] = {}

    def section(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        value = fn()
        sections[name] = round(time.perf_counter() - t, 1)
        return value

    with tempfile.TemporaryDirectory(prefix="ultraseg-speed-") as tmp_name:
        tmp = Path(tmp_name)
        data = section("phantom", lambda: make_phantom(tmp / "phantom", s.pipeline_frames))
        peak = section("peak", lambda: {d: round(conv_peak(d), 1)
                                        for d in ("float32", "bfloat16")})
        gflop = forward_gflop(s.width, (252, 252))
        train = section("train", lambda: measure_training(s, data))
        pipeline = section("pipeline", lambda: run_child("pipeline", {
            "width": s.width, "data": str(data), "device": "cpu", "out": str(tmp)}))
        infer = section("infer", lambda: measure_inference(s))
        ckpt = tmp / "model.ckpt"
        save_checkpoint_for(s.width, ckpt)
        files, files_source = predict_files(s.predict_frames, tmp)
        predict = section("predict", lambda: run_child("predict", {
            "checkpoint": str(ckpt), "files": files, "out": str(tmp / "masks"),
            "device": "cpu"}))
        predict["source"] = files_source
        native_ckpt = tmp / "native.ckpt"
        save_checkpoint_for(s.width, native_ckpt, native=True)
        native = section("predict_native", lambda: run_child("predict", {
            "checkpoint": str(native_ckpt), "files": native_files(s.native_frames, tmp),
            "out": str(tmp / "native_masks"), "device": "cpu"}))
        plain = section("plain", lambda: fresh_processes(s, data))

    pure = min(pipeline["pure_s"])
    result: dict[str, Any] = {
        "quick": quick,
        "train_speedup": round(plain["images_per_s"] / plain["ref_images_per_s"], 3),
        "train_images_per_s": plain["images_per_s"],
        "train_images_per_s_same_process": train["images_per_s"],
        "train_ref_images_per_s": plain["ref_images_per_s"],
        "train_speedup_same_allocator": train["speedup"],
        "train_ref_images_per_s_same_allocator": train["ref_images_per_s"],
        "train_gflops": round(3 * gflop * plain["images_per_s"], 1),
        "train_ref_gflops": round(3 * gflop * train["ref_images_per_s"], 1),
        "forward_gflop_per_image": round(gflop, 2),
        "pipeline_overhead": round(pipeline["epoch_loop_s"][-1] / pure, 3),
        "infer_speedup": round(plain["ref_s_per_frame"] / plain["s_per_frame"], 3),
        "infer_s_per_frame": plain["s_per_frame"],
        "infer_s_per_frame_same_process": infer["s_per_frame"],
        "infer_ref_s_per_frame": plain["ref_s_per_frame"],
        "infer_speedup_same_allocator": infer["speedup"],
        "infer_ref_s_per_frame_same_allocator": infer["ref_s_per_frame"],
        "infer_gflops": round(infer["gflop_per_frame"] / plain["s_per_frame"], 1),
        "infer_ref_gflops": round(infer["ref_gflop_per_frame"] / infer["ref_s_per_frame"], 1),
        "peak_fp32_gflops": peak["float32"],
        "peak_bf16_gflops": peak["bfloat16"],
        "infer_mask_agreement": infer["mask_agreement"],
        "infer_mask_agreement_vs_reference": infer["mask_agreement_vs_reference"],
        "train_peak_rss_gb": pipeline["peak_rss_gb"],
        "predict_peak_rss_gb": predict["peak_rss_gb"],
        "predict_native_peak_rss_gb": native["peak_rss_gb"],
        "details": {"settings": asdict(s), "train": train, "pipeline": pipeline,
                    "infer": infer, "predict": predict, "predict_native": native,
                    "plain": plain,
                    "section_seconds": sections},
        "machine": machine(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    # the ceilings: the peak of the precision ultraseg computes in here (fp32 on a CPU
    # without native bf16, where bf16 is emulated at a fraction of the fp32 speed)
    result["ceiling_precision"] = train["precision"]
    top = peak["bfloat16" if train["precision"] == "bf16" else "float32"]
    result["train_ceiling"] = round(top / result["train_ref_gflops"], 2)
    result["infer_ceiling"] = round(top / result["infer_ref_gflops"]
                                    * infer["ref_gflop_per_frame"] / infer["gflop_per_frame"], 2)
    return result


TARGETS = [("train_speedup", ">=", 2.5), ("pipeline_overhead", "<=", 1.10),
           ("infer_speedup", ">=", 10.0), ("infer_mask_agreement", ">=", 0.995),
           ("train_peak_rss_gb", "<=", 3.0), ("predict_peak_rss_gb", "<=", 1.0)]


def write_results(result: dict[str, Any], command: str) -> None:
    (HERE / "results").mkdir(exist_ok=True)
    result = {**result, "command": command}      # the record says how to reproduce it
    (HERE / "results" / "speed.json").write_text(json.dumps(result, indent=1) + "\n")
    m, d = result["machine"], result["details"]
    precision = result.get("ceiling_precision", "bf16")  # what ultraseg computed in
    top = result[f"peak_{precision}_gflops"]
    # without native bf16 the fast path predicts in fp32 too (nothing of precision compared),
    # and the bf16 peak is oneDNN's emulation, which ultraseg does not use there
    fp32_both = d["infer"].get("precision") == "fp32"
    emulated = m.get("cpu_bf16") is False
    rows = [
        ("train_speedup", f"{result['train_speedup']:.2f}",
         (f"{result['train_images_per_s']:.2f} vs {result['train_ref_images_per_s']:.2f} "
          f"images/s: ultraseg's step ({d['train']['precision']}, "
          f"{d['train'].get('layout', 'channels_last')}; "
          f"{d['train']['step']}) in processes set up as the `ultraseg` command sets them up, "
          f"the reference as a plain script (each side's best of "
          f"{len(d['plain']['processes'])} fresh processes; in the benchmark's own process "
          f"ultraseg's step ran at {result['train_images_per_s_same_process']:.2f})")),
        ("train_speedup_same_allocator", f"{result['train_speedup_same_allocator']:.2f}",
         (f"the reference given ultraseg's allocator setting, in ultraseg's process: "
          f"{result['train_ref_images_per_s_same_allocator']:.2f} images/s; what the "
          "computation alone gains")),
        ("train_gflops", f"{result['train_gflops']:.0f}",
         (f"reference {result['train_ref_gflops']:.0f} (same allocator); forward "
          f"{result['forward_gflop_per_image']:.1f} GFLOP per 252x252 image; "
          f"{100 * result['train_gflops'] / top:.0f} % of the {precision} convolution peak")),
        ("pipeline_overhead", f"{result['pipeline_overhead']:.3f}",
         (f"epoch 2 of ultraseg.train.train: {d['pipeline']['epoch_loop_s'][-1]:.1f} s for "
          f"{d['pipeline']['steps_per_epoch']} steps vs {min(d['pipeline']['pure_s']):.1f}-"
          f"{max(d['pipeline']['pure_s']):.1f} s in memory (cache off)")),
        ("infer_speedup", f"{result['infer_speedup']:.2f}",
         (f"{result['infer_s_per_frame']:.2f} vs {result['infer_ref_s_per_frame']:.2f} s per "
          f"{d['infer']['frame_shape'][1]}x{d['infer']['frame_shape'][0]} frame "
          f"({d['infer']['gflop_per_frame']:.0f} vs {d['infer']['ref_gflop_per_frame']:.0f} "
          f"GFLOP), the same {len(d['plain']['processes'])} processes; one square window: "
          f"{d['infer']['square_window_s']:.2f} s")),
        ("infer_speedup_same_allocator", f"{result['infer_speedup_same_allocator']:.2f}",
         (f"the reference in ultraseg's process: "
          f"{result['infer_ref_s_per_frame_same_allocator']:.2f} s per frame")),
        ("infer_gflops", f"{result['infer_gflops']:.0f}",
         (f"reference {result['infer_ref_gflops']:.0f} (same allocator); "
          f"{100 * result['infer_gflops'] / top:.0f} % of the {precision} convolution peak")),
        ("peak_fp32_gflops", f"{result['peak_fp32_gflops']:.0f}",
         "best 3x3 convolution, 128->128 channels on 256x256, fp32, oneDNN"),
        ("peak_bf16_gflops", f"{result['peak_bf16_gflops']:.0f}",
         "the same in bf16" + ("; emulated (no native bf16): not used by ultraseg here"
                               if emulated else "")),
        ("train_ceiling", f"{result['train_ceiling']:.2f}",
         (f"{precision} peak / the same-allocator reference's training GFLOP/s: the most a "
          f"{precision} computation can gain over the reference's")),
        ("infer_ceiling", f"{result['infer_ceiling']:.2f}",
         (f"{precision} peak / the same-allocator reference's GFLOP/s x FLOPs saved by one "
          "window per frame")),
        ("infer_mask_agreement", f"{result['infer_mask_agreement']:.4f}",
         (("fp32 both sides: no native bf16, the fast path predicts in fp32 too (no "
           "precision compared); " if fp32_both else "vs fp32 with the same windows; ")
          + "vs the 68-tile fp32 reference: "
          f"{result['infer_mask_agreement_vs_reference']:.4f} (random weights, see README)")),
        ("train_peak_rss_gb", f"{result['train_peak_rss_gb']:.2f}",
         f"ultraseg.train.train, 2 epochs of {d['pipeline']['steps_per_epoch']} steps, then "
         "its post-processing tuning on validation"),
        ("predict_peak_rss_gb", f"{result['predict_peak_rss_gb']:.2f}",
         (f"{d['predict']['frames']} frames streamed ({d['predict']['source']}, worked on "
          f"at the seed recipe's 252 px), {d['predict']['seconds']:.0f} s")),
        ("predict_native_peak_rss_gb", f"{result['predict_native_peak_rss_gb']:.2f}",
         (f"{d['predict_native']['frames']} 580x420 frames at their own resolution, the "
          f"path infer_speedup times (one window per frame), "
          f"{d['predict_native']['seconds']:.0f} s")),
    ]
    target = {k: f"{op} {v}" for k, op, v in TARGETS}
    if fp32_both:
        target["infer_mask_agreement"] = "n/a (fp32 both sides)"
    run = (f"`{command}` ({result['seconds']:.0f} s), {m['date']}: {m['cpu']}, "
           f"{m['cores']} cores ({m['torch_threads']} torch threads, native bf16: "
           f"{m['cpu_bf16']}), torch {m['torch']}, Python {m['python']}.")
    lines = ["## Speed", "", run, "", "| key | value | target | what |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {v} | {target.get(k, '')} | {what} |" for k, v, what in rows]
    comp = d["infer"].get("compiled")
    if comp and "error" not in comp:
        lines += ["", (f"Opt-in `torch_runner(compile=True)` (inductor, frozen weights): "
                       f"{comp['s_per_frame']:.3f} s per frame vs {comp['eager_s_per_frame']:.3f} "
                       f"s eager, after {comp['compile_s']:.0f} s compiling (per frame size); "
                       "not used by the headline figure.")]
    elif comp:
        lines += ["", f"`torch_runner(compile=True)` failed: {comp['error']}"]
    put_section("## Speed", "\n".join(lines) + "\n")


def put_section(heading: str, section: str) -> None:
    """Put ``section`` (starting with ``heading``) into RESULTS.md in place of the section of
    that heading, or at its end."""
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
        text = text.replace(section + "## ", section + "\n## ")
    path.write_text(text)


def write_cuda_results(result: dict[str, Any]) -> None:
    """``results/speed-cuda.json`` and the "Speed (GPU)" section of RESULTS.md, from a GPU
    run's record; the CPU figures are left as they are."""
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "speed-cuda.json").write_text(json.dumps(result, indent=1) + "\n")
    m = result["machine"]
    lines = ["## Speed (GPU)", "",
             (f"`{result.get('command', CUDA_COMMAND)}` ({result.get('seconds', 0):.0f} s), "
              f"{m['date']}: {m.get('gpu')}, CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')} "
              f"(TF32 convolutions allowed: {m.get('cudnn_allow_tf32')}), torch {m['torch']}, "
              f"Python {m['python']}; frames: {result.get('frames_source')}."
              + (" Cut short: the sections below are those it finished."
                 if "infer" not in result else "")), "",
             "| what | ultraseg | plain reference | ratio | peak GPU memory (both sides) |",
             "|---|---|---|---|---|"]
    for key in sorted((k for k in result if k.startswith("train_batch")),
                      key=lambda k: int(k[len("train_batch"):])):
        t = result[key]
        lines.append(f"| training, batch {key[len('train_batch'):]} ({t['precision']}, "
                     f"{t['layout']}; {t['gflops']:.0f} GFLOP/s) | {t['images_per_s']:.1f} "
                     f"images/s | {t['ref_images_per_s']:.1f} | {t['speedup']:.2f} | "
                     f"{t['peak_gpu_memory_gb']:.2f} GB |")
    if "infer" in result:
        i = result["infer"]
        lines.append(f"| prediction, {i['frame_shape'][1]}x{i['frame_shape'][0]} frames "
                     f"({i['precision']}; mask agreement with fp32 {i['mask_agreement']:.4f}) | "
                     f"{i['s_per_frame'] * 1000:.1f} ms a frame | "
                     f"{i['ref_s_per_frame'] * 1000:.1f} ms | {i['speedup']:.2f} | "
                     f"{i['peak_gpu_memory_gb']:.2f} GB |")
    comp = result.get("infer_compiled")
    if comp and "error" not in comp:
        lines += ["", (f"Opt-in `torch_runner(compile=True)`: {comp['s_per_frame'] * 1000:.1f} "
                       f"ms a frame vs {comp['eager_s_per_frame'] * 1000:.1f} ms eager, after "
                       f"{comp['compile_s']:.0f} s compiling.")]
    elif comp:
        lines += ["", f"`torch_runner(compile=True)` failed: {comp['error']}"]
    put_section("## Speed (GPU)", "\n".join(lines) + "\n")


CUDA_COMMAND = "PYTHONPATH=src python3 benchmarks/speed.py --device cuda"


def main(argv: list[str] | None = None) -> int:
    global DATA
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small model, few frames: < 1 minute")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: the training and prediction comparisons on the GPU alone, "
                        "written to OUT/speed-cuda.json section by section")
    p.add_argument("--out", type=Path, help="--device cuda: where speed-cuda.json goes "
                                            "(default benchmarks/results; with --quick or "
                                            "--no-write a new temporary folder)")
    p.add_argument("--data", type=Path, help=f"the datasets folder holding "
                                             f"{KAGGLE_FRAMES[0].split('/')[0]}/ (default {DATA})")
    p.add_argument("--record-cuda", type=Path, metavar="FILE",
                   help="record a GPU run's speed-cuda.json in results/ and RESULTS.md")
    p.add_argument("--predict-frames", type=int, help="frames the prediction child streams")
    p.add_argument("--no-write", action="store_true", help="full run: do not write results")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.record_cuda:
        record = json.loads(a.record_cuda.read_text())
        if record.get("quick"):
            print(f"{a.record_cuda} is a --quick run (a smoke test, not the benchmark's "
                  "settings): not recorded", file=sys.stderr)
            return 2
        write_cuda_results(record)
        return 0
    if a.data:
        DATA = a.data.resolve()
    from ultraseg.cli import keep_freed_memory

    keep_freed_memory()  # as the ``ultraseg`` command does; both sides of a comparison share it
    if a.child:
        kind, args = a.child
        fn = {"pipeline": child_pipeline, "predict": child_predict, "plain": child_plain,
              "ultraseg": child_ultraseg}[kind]
        print(json.dumps(fn(json.loads(args))))
        return 0
    import torch

    s = QUICK if a.quick else FULL
    if a.device == "cuda":
        if not torch.cuda.is_available():
            print(f"--device cuda: no CUDA GPU available (torch {torch.__version__})",
                  file=sys.stderr)
            return 2
        say_phantom_stand_ins(s, "cuda")
        out_dir = a.out
        if out_dir is None and (a.quick or a.no_write):  # benchmarks/results holds records
            out_dir = Path(tempfile.mkdtemp(prefix="ultraseg-speed-cuda-"))
            print(f"{'--quick' if a.quick else '--no-write'}: speed-cuda.json goes to "
                  f"{out_dir}, not benchmarks/results (--out sets where)", file=sys.stderr)
        out_dir = out_dir or HERE / "results"
        result = {**measure_cuda(s, out_dir, a.quick),
                  "command": CUDA_COMMAND + (" --quick" if a.quick else "")}
        (out_dir / "speed-cuda.json").write_text(json.dumps(result, indent=1) + "\n")
        if not a.quick and not a.no_write and a.out is None:
            write_cuda_results(result)
        print(json.dumps(result))
        return 0
    if a.predict_frames:
        s = Settings(**{**asdict(s), "predict_frames": a.predict_frames})
    say_phantom_stand_ins(s, "cpu")
    result = benchmark(s, a.quick)
    if not a.quick and not a.no_write:
        command = "python benchmarks/speed.py"
        if a.predict_frames:
            command += f" --predict-frames {a.predict_frames}"
        write_results(result, command)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
