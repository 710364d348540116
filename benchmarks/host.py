"""What the benchmark scripts say about the machine they ran on, and how fast its cores are
(imported by speed.py and quality.py, which run from this folder)."""
from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The processor's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def conv_peak(dtype_name: str, channels: int = 128, side: int = 256, reps: int = 5) -> float:
    """Best GFLOP/s of one 3x3 convolution (``channels`` -> ``channels`` on a ``side`` x ``side``
    map, batch 1, channels_last, oneDNN, on the CPU) in ``dtype_name`` ('float32' |
    'bfloat16'): what these cores give the U-Net's own operation at its best shape."""
    import time

    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, side, side, generator=g).to(dtype)
    w = torch.randn(channels, channels, 3, 3, generator=g).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    w = w.contiguous(memory_format=torch.channels_last)
    best = float("inf")
    with torch.no_grad():
        F.conv2d(x, w)  # warm-up: oneDNN builds its primitive
        for _ in range(reps):
            t = time.perf_counter()
            F.conv2d(x, w)
            best = min(best, time.perf_counter() - t)
    return 2 * channels * channels * 9 * (side - 2) ** 2 / best / 1e9
