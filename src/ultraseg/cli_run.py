"""Subcommands that use a model: train, evaluate, demo (predict, export, measure: cli_predict)."""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .config import (DEVICE_NAMES, MAX_DEPTH, MAX_SEED, MAX_WIDTH, PRESETS, ZOOM_LIMITS,
                     ModelConfig, PreprocessConfig, RunConfig, TrainConfig, UnknownSettings,
                     check_data_path, choices, default_preset_name, merge, names_read,
                     parse_duration, preset, read_config_json)
from .cli import (StatusLine, bar, json_on_failure, path_arg, positive_int,
                  whole_number_arg)
from .errors import UltrasegError
from .fileio import json_text

if TYPE_CHECKING:  # pragma: no cover
    from .train import TrainResult

log = logging.getLogger(__name__)

EXIT_OK = 0


class ProgressPrinter:
    """Renders training progress: a bar on a terminal's stderr, one line per epoch on stdout.

    Where the reader of stdout or stderr goes away (``ultraseg train ... | head -1``, or
    ``2>&1 | head``), or the stream cannot be written (``>/dev/full``, an I/O error, a closed
    file), training goes on to its end: the printer says so once where stderr still has a
    reader, and the stream gone is sent to the null device (the run's epochs are in its
    metrics.csv and train.log); a display is no reason to lose a run. Both streams are written
    through a :class:`~ultraseg.cli.StatusLine`, as predict's bar is.
    """

    def __init__(self, stream: Any = None) -> None:
        self.line = StatusLine(stream)
        self.stdout = StatusLine(sys.stdout)

    @property
    def quiet(self) -> bool:
        """stdout's reader has gone."""
        return self.stdout.quiet

    @property
    def err_quiet(self) -> bool:
        """stderr's reader has gone."""
        return self.line.quiet

    def __call__(self, e: dict[str, Any]) -> None:
        if e["event"] == "batch" and self.line.tty:
            done = e["batch"] / e["batches"]
            eta = e["elapsed"] / done - e["elapsed"] if done else 0
            self.line.status(f"epoch {e['epoch']}/{_of(e)} {bar(done)} "
                             f"{e['batch']}/{e['batches']} loss {e['loss']:.4f} ETA {eta:4.0f}s ")
        elif e["event"] == "epoch":
            self.line.clear()
            partial = "" if e["complete"] else "  (partial: time limit)"
            val = ("" if math.isnan(e["val_dice"]) else  # NaN: no validation split
                   f"val loss {e['val_loss']:.4f}  val Dice {e['val_dice']:.4f}  ")
            self._out(f"epoch {e['epoch']}/{_of(e)}  train loss {e['train_loss']:.4f}  "
                      f"{val}({e['seconds']:.0f} s){partial}")
        elif e["event"] == "stage":
            self._err(e["message"] + " ...\n")
        elif e["event"] == "validation" and self.line.tty:   # frames scored at their own size
            if e["frame"] < e["frames"]:
                self.line.status(f"validation frame {e['frame']}/{e['frames']} "
                                 f"({e['elapsed']:.0f} s) ")
            else:
                self.line.clear()

    def _out(self, line: str) -> None:
        e = self.stdout.write(line + "\n")
        if e is not None:
            why = ("stdout's reader has gone" if isinstance(e, BrokenPipeError) else
                   f"stdout cannot be written ({getattr(e, 'strerror', None) or e})")
            self._err(f"note: {why}; training goes on (its epochs: metrics.csv and train.log "
                      "in the run folder)\n")

    def _err(self, text: str) -> None:
        self.line.write(text)


def _of(e: dict[str, Any]) -> str:
    """The epochs an epoch is counted against: ``epochs``, or where a time limit fits fewer
    (the schedule's ``horizon``, measured after epochs 1 and 2), those, naming the cap."""
    horizon = e.get("horizon")     # (a caller's own events may not carry it)
    if horizon is None or horizon >= e["epochs"]:
        return str(e["epochs"])
    return f"{max(horizon, e['epoch'])} (time limit; cap {e['epochs']})"


# ---------------------------------------------------------------- train
_FLAGS = {  # flag dest -> (section, key)
    "model": ("model", "variant"), "width": ("model", "width"), "depth": ("model", "depth"),
    "tile": ("model", "tile"), "deep_supervision": ("model", "deep_supervision"),
    "norm": ("model", "norm"), "presence_head": ("model", "presence_head"),
    "presence_mode": ("model", "presence_mode"), "block": ("model", "block"),
    "attention": ("model", "attention"), "dropout": ("model", "dropout"),
    "size": ("preprocess", "size"), "label": ("preprocess", "label"),
    "fill_outlines": ("preprocess", "fill_outlines"),
    "normalise": ("preprocess", "normalise"), "pad_to_square": ("preprocess", "pad_to_square"),
    "crop_border": ("preprocess", "crop_border"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "loss": ("train", "loss"), "batch_dice": ("train", "batch_dice"),
    "dice_skip_empty": ("train", "dice_skip_empty"),
    "val_fraction": ("train", "val_fraction"),
    "test_fraction": ("train", "test_fraction"), "seed": ("train", "seed"),
    "split_seed": ("train", "split_seed"), "device": ("train", "device"),
    "precision": ("train", "precision"),
    "augment": ("train", "augment"), "affine_scale": ("train", "affine_scale"),
    "schedule": ("train", "schedule"),
    "ema_decay": ("train", "ema_decay"), "presence_weight": ("train", "presence_weight"),
    "tiles_per_image": ("train", "tiles_per_image"), "threads": ("train", "num_threads"),
    "cutmix": ("train", "cutmix"),
    "layout": ("data", "layout"), "subject_pattern": ("data", "subject_pattern"),
    "cache_dir": ("data", "cache_dir"),
}


def _read_config_file(path: str) -> dict[str, Any]:
    """A --config file: a JSON object of sections, each an object; any flaw is a user error."""
    if Path(path).is_dir():
        hint = " (a run's is its config.json)" if (Path(path) / "config.json").is_file() else ""
        raise UltrasegError(f"a folder, not a config file{hint}", path)
    if not Path(path).is_file():
        raise UltrasegError("config file not found", path)
    try:
        doc = read_config_json(path)   # as UTF-8 whatever the locale, a BOM let through
    except (OSError, ValueError) as e:      # (no UTF-8, a key given twice, too deep)
        raise UltrasegError(f"cannot read the config file ({e})", path) from e
    try:
        doc = names_read(doc)           # data.path as this locale names the folder
        RunConfig.from_dict(doc)          # its shape and every value's type, naming the file
    except UnknownSettings as e:
        raise e.in_config(path) from e
    except UltrasegError as e:
        raise UltrasegError(e.message, path) from e
    return doc


#: Flags a resumed run takes anew (where it runs: recorded in its config.json), by the
#: setting of :data:`ultraseg.run_folder.EXECUTION` they set.
_RESUME_EXECUTION = {"device": "device", "precision": "precision", "threads": "num_threads",
                     "cache_dir": "cache_dir"}
#: What a resumed run takes from its own config.json, never from flags.
_RESUME_OWN = ("preset", "config", "time_limit",
               *(d for d in _FLAGS if d not in _RESUME_EXECUTION))


def _check_resume_args(a: argparse.Namespace) -> None:
    """--resume continues a run as the uninterrupted run would have gone on: refuse settings
    it would otherwise drop in silence (a changed recipe is a new run in a new --out)."""
    given = [f"--{d.replace('_', '-')}" for d in _RESUME_OWN if getattr(a, d, None) is not None]
    if given:
        raise UltrasegError(f"--resume continues the run with its own config.json; it takes no "
                            f"{', '.join(given)} (to change the recipe, train a new run into "
                            f"another --out; where it runs, --device, --precision, --threads "
                            f"and --cache-dir, it takes anew)")
    if a.data:
        conf = Path(a.out) / "config.json"
        try:
            recorded = RunConfig.load(conf).data.path   # as this locale names the folder
        except UltrasegError:
            return                  # train() says what is wrong with the run folder
        if not recorded:
            return                  # (none recorded: the same)
        if Path(a.data).resolve() != Path(recorded).resolve():
            moved = "" if Path(recorded).exists() else (
                f"; that is gone: if DATA is where it has moved, set data.path in {conf} to "
                f"it and resume without DATA")
            raise UltrasegError(f"--resume continues on the run's own data ({recorded}, from "
                                f"its config.json), not DATA {a.data}{moved}")


def _names_every_value(doc: dict[str, Any]) -> bool:
    """Whether a config file sets every setting of every section (a run's config.json)."""
    full = RunConfig().to_dict()
    return all(isinstance(doc.get(k), dict) and set(full[k]) <= set(doc[k])
               for k in full if k != "preset")


def resolve_config(a: argparse.Namespace) -> RunConfig:
    """Preset, then --config FILE, then explicit flags: later wins. The preset is --preset's,
    else the file's ``"preset"``, else :func:`~ultraseg.config.default_preset_name`; a file
    that sets every value has no use for a preset: it keeps its own name, 'custom' where it
    names none (as ``RunConfig.from_dict`` reads it)."""
    file_cfg = _read_config_file(a.config) if a.config else {}
    if a.preset is not None and a.preset.strip() == "":
        raise UltrasegError("--preset is empty (an unset variable?): name one of "
                            f"{', '.join(PRESETS)}, or leave the flag out")
    if a.preset and a.preset not in PRESETS:
        preset(a.preset)         # an unknown name: refused as such, whatever the file sets
    full = bool(file_cfg) and _names_every_value(file_cfg)
    if a.preset and full:
        # every value is the file's: the preset would change none, and its name would label
        # another recipe
        log.warning("%s sets every setting: --preset %s changes none of them (the run is "
                    "labelled %r, as the file is); flags change single settings", a.config,
                    a.preset, file_cfg.get("preset") or "custom")
        a = argparse.Namespace(**{**vars(a), "preset": None})
    try:
        # (a file naming every value but no preset is 'custom', as the warning says, not
        # labelled with this machine's default preset, which set_by_hand compared it with)
        name = (a.preset or file_cfg.get("preset")
                or ("custom" if full else default_preset_name()))
        # a config built without a preset (RunConfig.from_dict) is 'custom': the defaults; so
        # is one whose preset is a label (a run's from merge(..., {"preset": "mine"}), a
        # quality lever's 'cpu+NAME'), where the file names every value
        label = not a.preset and (name == "custom" or name not in PRESETS and full)
        cfg = RunConfig(preset=name) if label else preset(name)
    except UltrasegError as e:
        if a.preset:
            raise
        raise UltrasegError(e.message, a.config) from e
    if file_cfg:
        try:
            cfg = merge(cfg, {k: v for k, v in file_cfg.items() if k != "preset"})
        except UltrasegError as e:
            raise UltrasegError(e.message, a.config) from e
    overrides: dict[str, dict[str, Any]] = {}
    for dest, (section, key) in _FLAGS.items():
        value = getattr(a, dest, None)
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    if a.time_limit is not None:
        no_limit = a.time_limit.strip().lower() in ("none", "off")
        overrides.setdefault("train", {})["time_limit_s"] = (
            None if no_limit else parse_duration(a.time_limit))
    overrides.setdefault("data", {})["path"] = str(a.data) if a.data else cfg.data.path
    cfg = merge(cfg, overrides)
    if a.config and not a.data:
        check_data_path(cfg.data.path, a.config)
    return cfg


def _cmd_train(a: argparse.Namespace) -> int:
    from .train import train

    execution = None
    if a.resume:
        _check_resume_args(a)
        cfg = None  # the run's own config.json is used
        execution = {key: getattr(a, dest) for dest, key in _RESUME_EXECUTION.items()
                     if getattr(a, dest, None) is not None}
    else:
        cfg = resolve_config(a)
        if not a.data and not cfg.data.path:
            raise UltrasegError("train needs DATA (or --config RUN/config.json, or --resume "
                                "with --out RUN)")
    result = train(cfg, a.out, resume=a.resume, progress=ProgressPrinter(), execution=execution)
    if not result.is_main:  # a rank > 0 under torchrun: rank 0 reports
        return EXIT_OK
    if result.val_dice_original is None:  # --val-fraction 0
        print(f"last epoch {result.best_epoch} kept (no validation split: no Dice to choose "
              f"or report); {result.seconds:.0f} s")
    else:
        print(f"best epoch {result.best_epoch}: val Dice {result.best_dice:.4f} "
              f"(original size {result.val_dice_original:.4f} at threshold 0.5, no flip; "
              f"post-processed "
              f"{result.val_dice_postprocessed:.4f}); {result.seconds:.0f} s")
        _print_empty_figures(result)
        if result.val_hc_mae_mm is not None:
            n, of = result.val_hc_frames, result.val_hc_reference_frames
            from .measure import over_frames_with_a_reference

            frames = (", " + over_frames_with_a_reference(n, of) if of is not None
                      else f" ({n} frames)")      # older runs: no count
            print(f"  validation head-circumference error, mean absolute "
                  f"{result.val_hc_mae_mm:.2f} mm{frames}")
    if result.stopped:
        print(f"note: {result.stopped}")
    print(f"checkpoint: {Path(a.out) / 'best.ckpt'}\nreport: {Path(a.out) / 'report.html'}")
    return EXIT_OK


def _print_empty_figures(result: TrainResult) -> None:
    """The line under the val Dice: the non-empty frames' Dice, the empty frames predicted
    empty and the empty rule (the all-frames Dice counts each such frame 1), where the run
    recorded them."""
    from .metrics import EMPTY_RULE

    if result.val_empty_frames is None:     # (a run finished before they were recorded)
        return
    nonempty = ("n/a (no validation frame holds a structure)"
                if result.val_dice_nonempty is None else f"{result.val_dice_nonempty:.4f}")
    empties = (f"empty validation frames predicted empty: {result.val_empty_right} of "
               f"{result.val_empty_frames} (empty rule: {EMPTY_RULE})" if result.val_empty_frames
               else "no validation frame is empty")
    print(f"  val Dice, non-empty frames (post-processed) {nonempty}; {empties}")


def _duration(seconds: float | None) -> str:
    """A time limit as --time-limit takes it: None 'none', 1200 '20m', 5400 '1h30m'."""
    if seconds is None:
        return "none"
    if seconds % 60:
        return f"{seconds:g}s"
    hours, minutes = divmod(int(seconds) // 60, 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or not hours else "")


def _by_preset(section: str, key: str, show: Callable[[Any], str] = str) -> str:
    """'seed 252, cpu 192, demo 128': what each preset sets ``section.key`` to, read from
    :data:`~ultraseg.config.PRESETS` (the help follows the presets)."""
    return ", ".join(f"{name} {show(getattr(getattr(preset(name), section), key))}"
                     for name in PRESETS)


def _train_args(p: argparse.ArgumentParser, layout_args: Callable) -> None:
    p.add_argument("data", nargs="?", type=path_arg, help="dataset folder")
    p.add_argument("--out", required=True, type=path_arg, help="run folder to write")
    p.add_argument("--preset", help="recipe: seed, cpu, demo (default: cpu without a GPU, "
                   "seed with one)")
    p.add_argument("--config", type=path_arg,
                   help="JSON config file (sections data/preprocess/model/train)")
    p.add_argument("--model", choices=choices(ModelConfig, "variant"), help="U-Net variant")
    p.add_argument("--width", type=whole_number_arg(1, MAX_WIDTH),
                   help="channels of the first block (64 in the paper; "
                   f"{_by_preset('model', 'width')})")
    p.add_argument("--depth", type=whole_number_arg(1, MAX_DEPTH),
                   help="number of poolings (4 in the paper; "
                   f"{_by_preset('model', 'depth')})")
    p.add_argument("--tile", type=positive_int, help="valid model: output tile side (68)")
    p.add_argument("--deep-supervision", action=argparse.BooleanOptionalAction, default=None,
                   help="same model: also train 1/2- and (depth 3 or more) 1/4-resolution "
                        "outputs (depth 2 or more)")
    p.add_argument("--norm", choices=choices(ModelConfig, "norm"),
                   help="same model: normalisation after each convolution (batch); the valid model "
                        "has none (its config.json keeps the default, batch; instance is "
                        "refused)")
    p.add_argument("--block", choices=choices(ModelConfig, "block"),
                   help="'residual': a shortcut around each encoder level's two convolutions "
                   "(plain)")
    p.add_argument("--attention", action=argparse.BooleanOptionalAction, default=None,
                   help="an attention gate on every skip connection (Attention U-Net; off)")
    p.add_argument("--dropout", type=float,
                   help="dropout probability on the deepest two encoder levels in training "
                   "(the paper's, at a rate it does not give; 0.5 is common; default 0: none)")
    p.add_argument("--presence-head", action=argparse.BooleanOptionalAction, default=None,
                   help="same model: a per-frame 'structure present?' output on the "
                   "bottleneck: no pixel exceeds it, so a frame it gives less than the "
                   "threshold comes out empty (how it meets the pixels: --presence-mode; "
                   "the cpu preset builds it where >= 5%% of the training frames, and at "
                   "least 10, are empty)")
    p.add_argument("--presence-mode", choices=choices(ModelConfig, "presence_mode"),
                   help="with --presence-head: 'gate' (every pixel's probability times the "
                   "frame's, in training too), 'classifier' (trained beside the pixels; at "
                   "prediction a frame called absent comes out empty, the others unchanged) "
                   "or 'detached' (gated at prediction; in training the segmentation learns "
                   "ungated and the gate from its false structures)")
    p.add_argument("--presence-weight", type=float,
                   help="weight of the presence head's own cross-entropy in the loss (1, the "
                   "cpu preset 0.25; 0: trained through the gated pixel loss alone)")
    p.add_argument("--size", type=positive_int, help="working resolution (frames padded square, "
                   f"resized; {_by_preset('preprocess', 'size')})")
    p.add_argument("--normalise", choices=choices(PreprocessConfig, "normalise"),
                   help="intensity scaling: unit is x / 255, zscore each frame's own mean and "
                   "spread (seed unit, cpu zscore)")
    p.add_argument("--pad-to-square", action=argparse.BooleanOptionalAction, default=None,
                   help="pad each frame to a square before resizing it to --size (on); off "
                   "stretches it to the square")
    p.add_argument("--crop-border", action=argparse.BooleanOptionalAction, default=None,
                   help="trim uniform bands at the frame's edges (added padding, blank "
                   "margins) before the canvas; predicted as background (off)")
    p.add_argument("--epochs", type=positive_int,
                   help="epochs at most (seed 5, cpu 300 under its time limit)")
    p.add_argument("--batch-size", type=positive_int,
                   help="frames (valid model: tiles) per step (seed 4, cpu 8)")
    p.add_argument("--lr", type=float, help="Adam's (peak) learning rate (seed 1e-3, cpu 2e-3)")
    p.add_argument("--loss", choices=choices(TrainConfig, "loss"),
                   help="training loss (seed bce, cpu bce+dice)")
    p.add_argument("--batch-dice", action=argparse.BooleanOptionalAction, default=None,
                   help="the loss's Dice term over each batch's pixels pooled, not per frame "
                   "(off)")
    p.add_argument("--dice-skip-empty", action=argparse.BooleanOptionalAction, default=None,
                   help="the loss's Dice term scores only frames whose mask is not empty; the "
                   "cross-entropy (and a presence head) answers for the empty ones (off)")
    p.add_argument("--augment", choices=choices(TrainConfig, "augment"),
                   help="training augmentation (seed none, cpu strong: flips, small affine, "
                   "gamma/contrast, speckle; see the README)")
    p.add_argument("--affine-scale", type=float, nargs=2, metavar=("LO", "HI"),
                   help="range of the strong/elastic augmentation's random zoom, within "
                   f"{ZOOM_LIMITS[0]:g} to {ZOOM_LIMITS[1]:g} (0.85 1.15; "
                   "the valid model's augmentation has no warps, so no zoom)")
    p.add_argument("--schedule", choices=choices(TrainConfig, "schedule"),
                   help="learning-rate schedule (seed constant, cpu cosine)")
    p.add_argument("--ema-decay", type=float, metavar="D",
                   help="validate and keep an exponential moving average of the weights, "
                   "updated every step with decay D (e.g. 0.999; default 0: off)")
    p.add_argument("--cutmix", type=float, metavar="P",
                   help="CutMix: the share of training batches in which each frame gets a box "
                   "of another frame of the batch pasted in, image and mask alike (default 0: "
                   "off)")
    p.add_argument("--tiles-per-image", type=positive_int,
                   help="valid model: random tiles per image per epoch (1)")
    p.add_argument("--val-fraction", type=float,
                   help="share of the frames not held out (--test-fraction; by subject) that "
                   "validate: choose the epoch and the post-processing (preset: 0.2); 0 trains "
                   "on every frame not held out and keeps the last epoch")
    p.add_argument("--test-fraction", type=float,
                   help="share of frames (by subject) held out from training and tuning (0)")
    p.add_argument("--seed", type=whole_number_arg(0, MAX_SEED),
                   help="seeds the initial weights, the batch order and the "
                   "augmentation, and the split unless --split-seed is given (0)")
    p.add_argument("--split-seed", type=whole_number_arg(0, MAX_SEED),
                   help="seeds the held-out and validation subjects "
                   "alone, so runs with other --seed values share one split (default: --seed)")
    p.add_argument("--device", help=f"{DEVICE_NAMES} (mps: a Mac's GPU)")
    p.add_argument("--precision", choices=choices(TrainConfig, "precision"),
                   help="auto: bf16 autocast where the CPU or GPU computes it natively, else "
                   "fp32 (every preset, seed included)")
    p.add_argument("--threads", type=positive_int, help="torch intra-op threads (default: torch's, "
                   "every core)")
    p.add_argument("--time-limit", help="cap on the whole run, e.g. 20m, 90s, data loading "
                   "in, the command's start-up on top: training stops where the last "
                   "validation, the post-processing choice and the report still fit (cut short "
                   "where they would not; a step under way finishes); a resumed run gets what "
                   "is left of it; 'none' lifts a "
                   f"preset's cap ({_by_preset('train', 'time_limit_s', _duration)})")
    p.add_argument("--cache-dir", help="where the frames decoded onto the working canvas are "
                   "cached for the next run (default $XDG_CACHE_HOME/ultraseg or "
                   "~/.cache/ultraseg; files readable by their owner only, each replacing "
                   "the earlier ones of its dataset and settings; safe to delete; '' "
                   "disables)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out with its own "
                   "config.json (setting flags are refused)")
    layout_args(p)
    p.set_defaults(layout=None)


# ---------------------------------------------------------------- evaluate
def _cmd_evaluate(a: argparse.Namespace) -> int:
    from .cli_predict import loaded_model, options_given
    from .evaluate import evaluate, format_summary

    with json_on_failure(a, a.data):
        try:
            # predict's model flags and post-processing, the same way
            with loaded_model(a) as predictor:
                summary, _ = evaluate(predictor, a.data, a.layout, a.subject_pattern, a.split,
                                      a.subset, a.out, label=a.label,
                                      pixel_size_mm=a.pixel_size, fill_outlines=a.fill_outlines,
                                      overrides=options_given(a))
        except UltrasegError as e:
            if e.result is not None:   # scored, but its files could not be written (full disk)
                print(json_text(e.result[0]) if a.json else format_summary(e.result[0]))
            raise
    if a.json:
        print(json_text(summary))
    else:
        print(format_summary(summary))
        if a.out:
            print(f"per-image metrics: {Path(a.out) / 'per_image.csv'}")
    return EXIT_OK


# ---------------------------------------------------------------- demo
def _cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(a.out, progress=ProgressPrinter(), minutes=a.minutes)
    print(f"demo: Dice over non-empty frames on {result['n']} unseen phantom frames: "
          f"{result['dice_nonempty_mean']:.3f}")
    print(f"report: {Path(a.out) / 'report.html'}")
    return EXIT_OK


def add_commands(sub: Any, layout_args: Callable[..., None]) -> None:
    """Register the model subcommands on the ``ultraseg`` parser."""
    from .cli_predict import model_args, pixel_size_arg, postprocess_args

    p = sub.add_parser("train", help="train a U-Net on a dataset",
                       description="Train a U-Net; writes checkpoints, metrics and a report to --out.")
    _train_args(p, layout_args)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="per-image metrics of a checkpoint on a labelled dataset",
                       description="Dice, IoU, precision, recall, HD95 per image at original size.")
    p.add_argument("model", metavar="checkpoint", type=path_arg,
                   help="best.ckpt of a run, or an exported .onnx")
    p.add_argument("data", type=path_arg, help="labelled dataset folder")
    layout_args(p, label="score against label K of a label mask (default: the label the "
                         "checkpoint was trained on)",
                fill="the masks are drawn closed contours: score against them filled "
                     "(default: as the checkpoint was trained; the hc18 layout always fills)")
    p.add_argument("--split", type=path_arg,
                   help="a run's split.json: evaluate only one side of it")
    p.add_argument("--subset", choices=["train", "val", "test"],
                   help="which side of --split to evaluate (default val; needs --split)")
    p.add_argument("--out", type=path_arg, help="folder for per_image.csv and summary.json")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object: the "
                   "summary, or where an error stops the command {path, failed, problems, "
                   "problem_lines}")
    pixel_size_arg(p)
    model_args(p)
    postprocess_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("demo", help="phantom data -> train -> evaluate -> report, in minutes",
                       description="On a fresh machine with no data: make phantom frames, train "
                                   "a small U-Net, evaluate it on unseen phantom frames.")
    p.add_argument("--out", default="ultraseg-demo", type=path_arg,
                   help="run folder (default ./ultraseg-demo)")
    p.add_argument("--minutes", type=float, default=2.5,
                   help="cap on training time (2.5; the demo's 12 epochs usually end it first)")
    p.set_defaults(func=_cmd_demo)

    from . import cli_predict  # predict, export, measure

    cli_predict.add_commands(sub, layout_args)
