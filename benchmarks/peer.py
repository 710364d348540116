"""The issue's MONAI peer, trained and scored on ultraseg's own split of a shared dataset.

    python benchmarks/peer.py --dataset busi [--time-limit 20m] [--runs DIR] [--record]

Issue 6 quotes a competent peer assembled from MONAI: ``BasicUNet`` with 16-128 channels,
Dice + cross-entropy, flips, bf16, 256 px, 20 minutes on two CPU cores (about 0.77 lesion
Dice on BUSI, 0.77 on nerve, 0.967 on HC18, on a split we do not know). This script builds
that peer from MONAI's own parts (``monai.networks.nets.BasicUNet`` with features
(16, 16, 32, 64, 128, 16), ``monai.losses.DiceCELoss(sigmoid=True)``) and trains it on the
frames ``quality.py``'s cpu-preset run trains on (the same held-out subjects, the same
validation subjects: ultraseg's split with seed 0), so the two are compared on equal footing:
- data: ultraseg's cached canvases (padded to square, resized to 256 px), intensities x / 255
  (MONAI's ``ScaleIntensity``), horizontal flips with probability 0.5;
- Adam, learning rate 1e-3, constant; batch 8; bf16 autocast, channels_last;
- every epoch, Dice on the validation canvases; the best epoch's weights are kept;
- the held-out frames are scored by ``ultraseg.evaluate`` at their own resolution, threshold
  0.5, no post-processing, exactly as quality.py scores the cpu preset.
Training stops when another epoch would pass the time limit (validation included).
``--record`` writes results/peer-DATASET.json. The last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from quality import DATA, HERE, LAYOUTS, score

log = logging.getLogger("peer")

FEATURES = (16, 16, 32, 64, 128, 16)


def peer_config(dataset: str, time_limit: str):
    """ultraseg's view of the peer: a 'same' network of depth 4 (so the predictor pads to a
    multiple of 16) at 256 px, x / 255, flips, batch 8, the cpu preset's split settings."""
    from ultraseg.config import merge, parse_duration, preset

    return merge(preset("cpu"), {
        "preset": "monai-peer",
        "model": {"variant": "same", "width": 16, "depth": 4},
        "preprocess": {"size": 256, "normalise": "unit"},
        "data": {"path": str(DATA / dataset), "layout": LAYOUTS[dataset]},
        "train": {"time_limit_s": parse_duration(time_limit), "test_fraction": 0.2,
                  "val_fraction": 0.2, "seed": 0, "batch_size": 8, "lr": 1e-3,
                  "augment": "flip", "schedule": "constant", "loss": "bce+dice"}})


def run_peer(dataset: str, time_limit: str, runs: Path) -> dict:
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    from ultraseg.augment import augment_batch
    from ultraseg.data import load_arrays, run_split, write_split
    from ultraseg.evaluate import evaluate
    from ultraseg.io import open_dataset
    from ultraseg.predict import Predictor
    from ultraseg.runtime import autocast, resolve_precision, torch_runner
    from ultraseg.train import Batches, validate

    t0 = time.monotonic()
    cfg = peer_config(dataset, time_limit)
    tc = cfg.train
    deadline = t0 + tc.time_limit_s
    out = runs / f"peer-{dataset}"
    out.mkdir(parents=True, exist_ok=True)
    ds = open_dataset(cfg.data.path, cfg.data.layout, cfg.data.subject_pattern)
    arrays = load_arrays(ds, cfg.preprocess, cfg.data.cache_dir)
    train_idx, val_idx, test_idx = run_split(arrays.subjects, tc.test_fraction,
                                             tc.val_fraction, tc.seed)  # as ultraseg.train
    write_split(out / "split.json", arrays.names, arrays.subjects, train_idx, val_idx, tc.seed,
                tc.val_fraction, test_idx)
    batches = Batches(arrays, train_idx, cfg)
    val_frames, val_masks = arrays.images[val_idx], arrays.masks[val_idx]

    torch.manual_seed(tc.seed)
    device = torch.device("cpu")
    dtype = resolve_precision("auto", device)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=FEATURES)
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr)
    loss_fn = DiceCELoss(sigmoid=True)
    history, best, best_dice, best_epoch = [], None, -1.0, 0
    epoch_s = val_s = 0.0
    for epoch in range(1, 10_000):
        if time.monotonic() + epoch_s + val_s > deadline:
            break
        rng = np.random.default_rng([tc.seed, epoch])
        gen = torch.Generator().manual_seed(tc.seed * 100_003 + epoch)
        net.train()
        t = time.monotonic()
        losses = []
        for x, y in batches.epoch(rng):
            x, y = augment_batch(x, y, "flip", gen)
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, dtype):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        epoch_s = time.monotonic() - t
        t = time.monotonic()
        _, val_dice = validate(net, val_frames, val_masks, cfg, device, dtype)
        val_s = time.monotonic() - t
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)),
                        "val_dice": val_dice, "seconds": round(epoch_s + val_s, 1)})
        log.info("epoch %d: loss %.4f, val Dice %.4f (%.0f s)", epoch, np.mean(losses),
                 val_dice, epoch_s + val_s)
        if val_dice > best_dice:
            best, best_dice, best_epoch = copy.deepcopy(net.state_dict()), val_dice, epoch
    minutes = (time.monotonic() - t0) / 60
    net.load_state_dict(best)
    predictor = Predictor(torch_runner(net, device, dtype), cfg.model, cfg.preprocess,
                          batch_size=tc.batch_size, source="monai-peer")
    summary, rows = evaluate(predictor, DATA / dataset, LAYOUTS[dataset],
                             split_file=out / "split.json", subset="test",
                             out=out / "eval-test")
    return {"dataset": dataset, "peer": f"monai.networks.nets.BasicUNet(features={FEATURES}), "
            "DiceCELoss(sigmoid=True), Adam 1e-3, batch 8, 256 px, x / 255, flips, bf16",
            "time_limit": time_limit, "train_minutes": round(minutes, 2),
            "epochs": len(history), "best_epoch": best_epoch, "val_dice": best_dice,
            "test": score(dataset, rows, summary), "history": history,
            "command": f"python benchmarks/peer.py --dataset {dataset} --time-limit "
                       f"{time_limit} --record"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(LAYOUTS), required=True)
    ap.add_argument("--time-limit", default="20m")
    ap.add_argument("--runs", default=str(HERE / "runs"))
    ap.add_argument("--record", action="store_true", help="write results/peer-DATASET.json")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not (DATA / a.dataset).is_dir():
        print(f"shared dataset {a.dataset} not found in {DATA}: nothing to benchmark",
              file=sys.stderr)
        return 2
    result = run_peer(a.dataset, a.time_limit, Path(a.runs))
    if a.record:
        (HERE / "results" / f"peer-{a.dataset}.json").write_text(json.dumps(result, indent=1)
                                                                 + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "history"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
