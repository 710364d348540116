"""Quality on real ultrasound: train a preset on each shared dataset, score held-out subjects.

    python benchmarks/quality.py [--datasets busi nerve hc18] [--presets cpu seed]
                                 [--time-limit 20m] [--runs DIR] [--record]

For each dataset and preset: ``ultraseg train`` with ``--test-fraction 0.2`` (a fifth of the
subjects held out from training, epoch selection and post-processing tuning alike), then
``ultraseg evaluate --split RUN/split.json --subset test`` on those held-out frames, with and
without test-time augmentation. ``--record`` writes benchmarks/results/quality.json and the
table in benchmarks/QUALITY.md. The last stdout line is one JSON object.
Reads ../shared/datasets in place; exits with a message when it is absent.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = (HERE.parent / ".." / "shared" / "datasets").resolve()
LAYOUTS = {"busi": "busi", "nerve": "folders", "hc18": "hc18"}


def score(dataset: str, rows: list[dict], summary: dict) -> dict:
    """Headline figures of one evaluation."""
    out = {"n": summary["n"], "dice_mean": summary["dice_mean"],
           "dice_nonempty_mean": summary["dice_nonempty_mean"],
           "dice_mean_raw": summary["raw"]["dice_mean"], "hd95_median": summary["hd95_median"]}
    if dataset == "busi":
        lesion = [r["dice"] for r in rows if r.get("class") != "normal"]
        normal = [bool(r["pred_empty"]) for r in rows if r.get("class") == "normal"]
        out["dice_lesion"] = float(np.mean(lesion)) if lesion else None
        out["normal_empty_rate"] = float(np.mean(normal)) if normal else None
    if "hc_mae_mm" in summary:
        out["hc_mae_mm"] = summary["hc_mae_mm"]
    return out


def run_one(dataset: str, preset_name: str, time_limit: str, runs: Path) -> dict:
    from ultraseg.config import merge, parse_duration, preset
    from ultraseg.evaluate import evaluate
    from ultraseg.predict import load
    from ultraseg.train import train

    run = runs / f"{dataset}-{preset_name}"
    cfg = merge(preset(preset_name), {
        "data": {"path": str(DATA / dataset), "layout": LAYOUTS[dataset]},
        "train": {"time_limit_s": parse_duration(time_limit), "test_fraction": 0.2,
                  "val_fraction": 0.2, "seed": 0}})
    t = time.monotonic()
    if (run / "best.ckpt").exists() and (run / "report.html").exists():
        logging.info("reusing finished run %s", run)
        minutes = json.loads((run / "metrics.json").read_text())["train_minutes"]
    else:
        result = train(cfg, run)
        minutes = result.seconds / 60
        (run / "metrics.json").write_text(json.dumps({"train_minutes": minutes}))
    entry = {"dataset": dataset, "preset": preset_name, "train_minutes": round(minutes, 2),
             "command": f"ultraseg train {DATA / dataset} --out {run} --preset {preset_name} "
                        f"--time-limit {time_limit} --test-fraction 0.2 --seed 0"}
    for tta in (False, True):
        predictor = load(run / "best.ckpt", tta=tta)
        summary, rows = evaluate(predictor, DATA / dataset, LAYOUTS[dataset],
                                 split_file=run / "split.json", subset="test",
                                 out=run / ("eval-test-tta" if tta else "eval-test"))
        entry["tta" if tta else "plain"] = score(dataset, rows, summary)
    entry["eval_minutes"] = round((time.monotonic() - t) / 60 - minutes, 2)
    logging.info("%s", json.dumps(entry))
    return entry


def headline(entries: list[dict], preset_name: str) -> dict:
    by = {e["dataset"]: e["plain"] for e in entries if e["preset"] == preset_name}
    out = {}
    if "busi" in by:
        out.update(busi_dice_lesion=by["busi"]["dice_lesion"],
                   busi_normal_empty_rate=by["busi"]["normal_empty_rate"])
    if "nerve" in by:
        out["nerve_dice"] = by["nerve"]["dice_mean"]
    if "hc18" in by:
        out.update(hc18_dice=by["hc18"]["dice_mean"], hc18_hc_mae_mm=by["hc18"].get("hc_mae_mm"))
    mins = [e["train_minutes"] for e in entries if e["preset"] == preset_name]
    out["max_train_minutes"] = max(mins) if mins else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["busi", "nerve", "hc18"])
    ap.add_argument("--presets", nargs="+", default=["cpu"])
    ap.add_argument("--time-limit", default="20m")
    ap.add_argument("--runs", default=str(HERE / "runs"))
    ap.add_argument("--record", action="store_true", help="write results/quality.json")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not DATA.is_dir():
        print(f"shared datasets not found at {DATA}: nothing to benchmark", file=sys.stderr)
        return 2
    entries = [run_one(d, p, a.time_limit, Path(a.runs)) for p in a.presets for d in a.datasets]
    result = {"machine": f"{platform.processor() or platform.machine()}, "
                         f"{__import__('os').cpu_count()} cores",
              "time_limit": a.time_limit, "runs": entries,
              **headline(entries, a.presets[0])}
    if a.record:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "quality.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
