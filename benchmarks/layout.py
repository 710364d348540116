"""Seconds per training step of ultraseg's own step in each memory layout, fp32, on this CPU.

    python benchmarks/layout.py [PRESET ...]      (default: seed cpu)

The evidence for ``ultraseg.train.training_layout``'s fixed rule: for each preset (``seed`` at
the original geometry, width 64, 252 -> 68, batch 4; ``cpu`` at its own size and batch) it
builds a fresh model per layout, takes one warm-up step and prints the best of eight timed
steps, contiguous and channels_last alternated twice, on one fixed random batch; for ``seed``
also the plain reference step (speed.py's ``reference_step``). Timings vary by a tenth from
run to run on two shared cores; compare the pairs, not single figures.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from speed import reference_step, ultraseg_optimizer, ultraseg_step_fn  # noqa: E402

from ultraseg.config import merge, preset  # noqa: E402
from ultraseg.model import build_model  # noqa: E402

LAYOUTS = (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)) * 2


def best_of(step, reps: int = 8) -> float:
    step()  # warm-up: oneDNN builds its primitives
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return round(min(times), 3)


def main(names: list[str]) -> None:
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    for name in names:
        cfg = preset(name)
        if name == "seed":
            cfg = merge(cfg, {"model": {"width": 64}})
        batch = 4 if name == "seed" else cfg.train.batch_size
        side = 252 if name == "seed" else cfg.preprocess.size
        with torch.no_grad():
            out = build_model(cfg.model)(torch.zeros(1, 1, side, side)).shape[-1]
        x = torch.rand(batch, 1, side, side)
        y = (torch.rand(batch, 1, out, out) > 0.5).float()
        seconds: dict[str, list[float]] = {}
        for label, layout in LAYOUTS:
            model = build_model(cfg.model).to(memory_format=layout)
            optimizer = ultraseg_optimizer(model, cfg)
            step, _ = ultraseg_step_fn(cfg, cpu, None, layout)
            gen = torch.Generator().manual_seed(0)
            seconds.setdefault(label, []).append(
                best_of(lambda: step(model, optimizer, x, y, gen)))
        if name == "seed":
            model = build_model(cfg.model)
            optimizer = torch.optim.Adam(model.parameters(), 1e-3)
            seconds["reference"] = [best_of(lambda: reference_step(model, optimizer, x, y))]
        print(f"{name}: batch {batch}, {side} -> {out} px, s per step {seconds}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["seed", "cpu"])
