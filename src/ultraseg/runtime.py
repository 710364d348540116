"""Torch execution details shared by training and prediction: device, precision, the runner."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .errors import UltrasegError

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu. 'cuda' without a GPU is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UltrasegError("--device cuda asked for, but no CUDA GPU is available")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UltrasegError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for 'auto' | 'fp32' | 'bf16' (None = plain fp32).

    'auto' picks bf16 on a GPU that supports it and on a CPU with native bf16, else fp32.
    """
    if precision == "fp32":
        return None
    if precision not in ("auto", "bf16"):
        raise UltrasegError(f"unknown precision {precision!r}; valid: auto, fp32, bf16")
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
    else:
        ok = cpu_has_bf16()
    if precision == "bf16" and not ok:
        log.warning("bf16 requested but not supported natively on %s; it will be slow", device)
        return torch.bfloat16
    return torch.bfloat16 if ok else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block and restore the caller's setting after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_runner(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a model as a numpy backend: (N, 1, h, w) float32 -> probabilities, float32."""
    model = model.to(device).eval().to(memory_format=torch.channels_last)

    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(device, dtype):
            prob = torch.sigmoid(model(x).float())
        return prob.cpu().numpy()

    return run


def torch_predictor(path: str | Path, device: str = "auto", precision: str = "auto",
                    **options: Any):
    """A :class:`~ultraseg.predict.Predictor` running a checkpoint with PyTorch."""
    from .checkpoint import build_from_checkpoint, load_checkpoint
    from .predict import Predictor

    ckpt = load_checkpoint(path)
    model = build_from_checkpoint(ckpt, path)
    dev = resolve_device(device)
    run = torch_runner(model, dev, resolve_precision(precision, dev))
    return Predictor(run, ckpt.model, ckpt.preprocess, ckpt.postprocess, ckpt.meta,
                     source=str(path), **options)
