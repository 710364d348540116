"""Typed, frozen configuration. Every run saves its resolved config; every checkpoint carries it.

All dataclasses round-trip through plain dicts (``to_dict`` / ``from_dict``) so they can be
written as JSON and stored in checkpoints without pickle.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from .errors import CheckpointError, UltrasegError
from .fileio import home_expanded, json_name, name_from_json, read_json

T = TypeVar("T")


def _meant(names: list[Any], valid: list[str]) -> str:
    """"did you mean 'epochs'?; valid: [...]": the valid name each unknown one of ``names``
    is closest to (:func:`difflib.get_close_matches`; which one's, where there are several),
    then the valid ones."""
    close = {k: difflib.get_close_matches(k, valid, n=1) for k in names if isinstance(k, str)}
    meant = [repr(m[0]) + (f" for {k!r}" if len(names) > 1 else "")
             for k, m in close.items() if m]
    return (f"did you mean {', '.join(meant)}?; " if meant else "") + f"valid: {valid}"


#: The settings sections of a config, as a config file names them.
SECTIONS = ("data", "preprocess", "model", "train")


#: The device names a setting, ``--device`` and :func:`ultraseg.runtime.resolve_device` take
#: (whether the machine has the device is resolve_device's to say), as their messages list them.
DEVICE_NAMES = "auto, cpu, cuda, cuda:N, mps"
DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

class UnknownSettings(UltrasegError):
    """Settings a config section does not have (a typo, or a newer ultraseg's): ``section``
    (its name in a config file: ``train``, ``model``), ``keys`` and the ``valid`` ones."""

    def __init__(self, section: str, keys: list[str], valid: list[str]) -> None:
        self.section, self.keys, self.valid = section, keys, valid
        super().__init__(self.said())

    def said(self, path: str | Path | None = None) -> str:
        """'unknown keys in section "train"[ of FILE]: ['epoch'] (did you mean 'epochs'?;
        valid: [...])': the section as a config file names it, not its class, and the valid
        key each unknown one is closest to (:func:`difflib.get_close_matches`)."""
        where = f'section "{self.section}"' + (f" of {path}" if path is not None else "")
        return f"unknown keys in {where}: {self.keys} ({_meant(self.keys, self.valid)})"

    def in_config(self, path: str | Path) -> UltrasegError:
        """The refusal of the config file at ``path`` holding these settings, naming the
        section and the file."""
        err = UltrasegError(self.said(path))
        err.path = str(path)
        return err

    def in_file(self, meta: dict[str, Any], path: str | Path) -> CheckpointError:
        """The refusal of a checkpoint or export at ``path`` (its metadata ``meta``) holding
        these settings: a setting added since this ultraseg, not damage (the format number is
        raised for changes that older readers would misread, not for every setting added)."""
        from . import __version__

        return CheckpointError(f"written by a newer ultraseg (unknown keys in section "
                               f"\"{self.section}\": {self.keys}; the file says "
                               f"{meta.get('ultraseg_version', '?')}, this is {__version__}), "
                               "or edited; upgrade ultraseg to read it", path)


def _from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    data = dict(data or {})
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names, key=str)   # (a Python caller may give 1 beside "pth")
    if unknown:     # (the section as a file names it: TrainConfig's is "train")
        raise UnknownSettings(cls.__name__.removesuffix("Config").lower(), unknown,
                              sorted(names))
    return cls(**data)     # (JSON's lists as tuples, Paths as strings, types: __post_init__)


def plain_number(value: Any) -> Any:
    """A numpy scalar (np.int64, np.float32, np.bool_) as the Python number it holds; any
    other value as it is."""
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def whole_number_problem(value: Any, lo: int = 1, hi: int | None = None,
                         none_ok: bool = False) -> str | None:
    """What is wrong with ``value`` as a whole number from ``lo`` (to ``hi``; None too where
    ``none_ok``), in the words every such check uses ("must be a whole number from 1 to 12
    (or None), got 0"), else None. A numpy integer counts as the number it holds; a bool, a
    float (1.0 too) or a string is no whole number."""
    value = plain_number(value)
    if value is None and none_ok:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and lo <= value and (
            hi is None or value <= hi):
        return None
    span = f"from {lo}" + (f" to {hi}" if hi is not None else "")
    return f"must be a whole number {span}{' (or None)' * none_ok}, got {value!r}"


def whole_number(name: str, value: Any, lo: int = 1, hi: int | None = None,
                 none_ok: bool = False) -> Any:
    """``value`` of the whole-number argument ``name`` as a Python int (np.int64(8) is 8), or
    None where ``none_ok``; anything else (0 where ``lo`` is 1, 1.0, "2", True) is a user
    error naming it: "{name} must be a whole number from {lo}[ to {hi}][ (or None)], got
    {value!r}" (:func:`whole_number_problem`)."""
    problem = whole_number_problem(value, lo, hi, none_ok)
    if problem:
        raise UltrasegError(f"{name} {problem}")
    return plain_number(value)


#: The most a structure's label is (--label K, preprocess.label: 1 to this; 0 the background):
#: masks hold labels up to 255, and one whose labels pass it is refused as it is read.
MAX_LABEL = 255


def label_problem(label: Any) -> str | None:
    """What is wrong with ``label`` as a structure's label (--label K, preprocess.label; None,
    any structure, is none), in :func:`whole_number_problem`'s words and why, else None:
    :func:`ultraseg.io.masks.check_label` and the CLI's --label refuse it so."""
    if label is None:
        return None
    problem = whole_number_problem(label, 1, MAX_LABEL)
    return problem and (f"{problem} (a structure's label: 0 is the background, and masks "
                        f"hold labels up to {MAX_LABEL})")


def check_flag(name: str, value: Any, none: str = "") -> bool | None:
    """``value`` of the yes/no argument ``name`` as a bool (np.bool_ too), or None where it is
    None and ``none`` says what None means; anything else is a user error: "false" or "no"
    (from an environment variable or a text config) was taken as on."""
    if value is None and none:
        return None
    if not isinstance(plain_number(value), bool):
        what = f" (or None: {none})" if none else ""
        raise UltrasegError(f"{name} must be true or false{what}, got {value!r}")
    return bool(value)


def check_types(section: Any, prefix: str | None = None) -> None:
    """Refuse a config section (a dataclass) holding a value of another type than its field
    declares -- a config file's "16" for 16, true for 1, 5.5 frames -- as a user error naming
    the setting (``train.epochs``); a name not among a ``Literal``'s lists the valid ones.
    Every section makes this check when it is built (``__post_init__``: from a file, by
    ``merge`` or in Python). A setting's own range is checked next, as the section is built
    (each section's ``__post_init__``: a model's width and depth, the working size, the
    post-processing's threshold, a training setting's); what depends on other settings or
    sections when training starts (:func:`ultraseg.train.check_config`)."""
    cls = type(section)
    hints = _type_hints(cls)
    if prefix is None:
        prefix = cls.__name__.removesuffix("Config").lower()
    for f in fields(section):
        value = getattr(section, f.name)
        if not _fits(value, hints[f.name]):
            raise UltrasegError(f"{prefix}.{f.name} must be {_describe(hints[f.name])}; "
                                f"got {value!r}")


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (from JSON, lists already made tuples) has the type ``hint`` names:
    ``bool`` only true/false, ``int`` a whole number that is no bool, ``float`` any number but
    a bool, ``str``, ``None``, a ``Literal``'s values, a union's arms, ``tuple[X, ...]``."""
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if dataclasses.is_dataclass(hint):   # a section of a RunConfig
        return isinstance(value, hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:                # True == 1: the type must match too
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is tuple:
        return (isinstance(value, tuple) and len(value) == len(args)
                and all(_fits(v, a) for v, a in zip(value, args)))
    return True                          # a type this check does not know: left to the user


def _describe(hint: Any) -> str:
    """Words for the values a type hint allows, for an error message."""
    if hint is type(None):
        return "null"
    simple = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    if hint in simple:
        return simple[hint]
    if dataclasses.is_dataclass(hint):
        return f"a {hint.__name__}"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return repr(args[0]) if len(args) == 1 else "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"a list of {len(args)}: " + ", ".join(_describe(a) for a in args)
    return str(hint)


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    """``cls``'s annotations, evaluated (once a class: it takes most of a section's making)."""
    return typing.get_type_hints(cls)


class _Section:
    """to_dict / from_dict for a config section (a frozen dataclass)."""

    def __post_init__(self) -> None:
        # numpy's numbers (a sweep over np.arange or np.linspace) as Python's, which the type
        # checks and JSON take: np.int64(5) for 5, also inside tuples; a list (JSON's, or one
        # built in Python) as the tuple it stands for (a list also left the config
        # unhashable); a Path where a path string goes as that string
        hints = _type_hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, (tuple, list)):
                plain = tuple(plain_number(v) for v in value)
            elif isinstance(value, os.PathLike) and _fits("", hints[f.name]):
                plain = os.fspath(value)
            else:
                plain = plain_number(value)
            if plain is not value:
                object.__setattr__(self, f.name, plain)
        check_types(self)     # when built: a bad name or type is refused here, not in train

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any] | None) -> T:
        return _from_dict(cls, d)


#: ``ModelConfig.presence_head='auto'``: the share of training frames with an empty mask from
#: which the presence head is built (BUSI's training frames hold about 16 % normal images;
#: Kaggle's nerve frames 59 % without a nerve; HC18's and the 1920-frame nerve set's none).
AUTO_PRESENCE_MIN_EMPTY = 0.05


@dataclass(frozen=True)
class ModelConfig(_Section):
    """The U-Net. ``variant='valid'``: unpadded convolutions (Ronneberger et al. 2015, 252 -> 68).
    ``variant='same'``: padded convolutions with batch norm, output size == input size.
    ``deep_supervision`` ('same' only): 1x1 heads on the decoder's half- and quarter-resolution
    levels, trained against the downsampled target beside the main output (as nnU-Net does);
    prediction uses the main output alone. ``norm`` ('same' only): the normalisation after
    each convolution, 'batch' (BatchNorm2d, statistics of the batch in training and running
    averages at prediction) or 'instance' (InstanceNorm2d with a learned scale and shift,
    statistics of each image's own feature maps, in training and prediction alike: nnU-Net's
    and MONAI BasicUNet's choice). ``presence_head`` ('same' only): a per-image "is the
    structure there at all?" output on the bottleneck (global average and max pooling, then a
    linear layer; 'auto' builds none on the 'valid' variant, which sees frames in tiles); each
    pixel's probability becomes P(present) x P(pixel | present), so no pixel can exceed its
    frame's presence probability and a frame whose P(present) is below the threshold comes out
    empty (the Kaggle nerve competition's empty-mask trick). The head is trained through the
    gated pixel loss and by its own binary cross-entropy against "the mask is not empty",
    weighted by ``TrainConfig.presence_weight`` (0: the pixel loss alone).
    ``presence_head='auto'`` (the
    ``cpu`` preset's): the head is built where the training frames give it something to learn,
    at least :data:`AUTO_PRESENCE_MIN_EMPTY` of them (and 10 frames) with an empty mask, and
    not otherwise; decided when training starts, and the checkpoint holds the outcome
    (``ultraseg.train.resolve_presence_head``). ``presence_mode`` says how the
    head meets the pixels: 'gate' (as above, in training and prediction alike) or 'classifier'
    (the head is a frame classifier beside the segmentation: the pixel loss scores the
    ungated logits and the head its own cross-entropy, on the same bottleneck; outside
    training a frame the head calls absent, P(present) < 0.5, comes out empty and every other
    frame exactly as the segmentation says) or 'detached' (gated as 'gate' outside training;
    in training the pixel loss scores the ungated logits, which trains the segmentation as
    without the head, and also the logits gated over a detached copy of them, which trains
    the head and the encoder, not the decoder, on where the segmentation marks false
    structures). ``block``: 'plain' (two convolutions per level, as the paper) or 'residual'
    (each encoder level's two convolutions get a shortcut, through a 1x1 convolution where
    the channels change, added before the last ReLU: the residual encoder nnU-Net recommends
    since 2024, with one block per level; the decoder stays plain). ``attention``: every skip
    connection passes an additive attention gate before the decoder takes it (Attention
    U-Net, Oktay et al. 2018; :class:`ultraseg.model.parts.AttentionGate`). ``dropout``: the
    probability with which dropout zeroes each feature of the deepest two encoder levels in
    training (the paper's "drop-out layers at the end of the contracting path"; it gives no
    rate, and 0.5 after the fourth and fifth levels is the common re-implementation's); 0 (the
    default) builds none, and prediction never drops anything."""

    variant: Literal["valid", "same"] = "valid"
    in_channels: int = 1
    out_channels: int = 1
    width: int = 64          # channels of the first block; doubles at every level
    depth: int = 4           # number of 2x2 poolings (the original has 4: 5 blocks)
    tile: int = 68           # valid only: output tile side used for training and prediction
    deep_supervision: bool = False
    norm: Literal["batch", "instance"] = "batch"
    presence_head: bool | Literal["auto"] = False
    presence_mode: Literal["gate", "classifier", "detached"] = "gate"
    block: Literal["plain", "residual"] = "plain"
    attention: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        """``width``, ``depth`` and ``tile`` within their bounds (:func:`model_problem`),
        refused as a user error naming the setting and its flag when the section is built, as
        :class:`TrainConfig` refuses its ranges (a model file's too: its load calls it
        damaged)."""
        super().__post_init__()
        problem = model_problem(self)
        if problem:
            raise UltrasegError(f"model.{problem[0]} (--{problem[0]}) {problem[1]}")
        if not 0 <= self.dropout < 1:      # (NaN too: to_json wrote a bare NaN token)
            raise UltrasegError(f"model.dropout (--dropout) must be a number in [0, 1), got "
                                f"{self.dropout!r}")


#: Upper bounds of ``ModelConfig.width`` and ``depth``, far beyond any real U-Net's (the
#: paper's is width 64 and depth 4, nnU-Net's 2D networks 32 and 7 or 8 levels with at most
#: 512 channels; a depth of 12 pads every frame to a multiple of 4096 pixels). The deepest
#: block has ``width * 2**depth`` channels and a 3x3 convolution of that many squared weights:
#: at these bounds 2.5e15 of them (10 PB, refused as memory, not built), where width 1e9 or
#: depth 60 overflowed torch's 64-bit storage size ("Storage size calculation overflowed").
MAX_WIDTH = 4096
MAX_DEPTH = 12


def model_problem(model: ModelConfig) -> tuple[str, str] | None:
    """``(setting, what is wrong)`` for a model ``width``, ``depth`` or ``tile`` outside 1 to
    :data:`MAX_WIDTH`, :data:`MAX_DEPTH` or :data:`MAX_SIZE`, else None (their types are
    check_types's)."""
    for name, most in (("width", MAX_WIDTH), ("depth", MAX_DEPTH), ("tile", MAX_SIZE)):
        problem = whole_number_problem(getattr(model, name), 1, most)
        if problem:
            return name, problem
    return None


#: Upper bound of ``PreprocessConfig.size``, the side of the working canvas every frame is
#: resized to: 16384 (2**14, so a multiple of 2**depth at every depth up to MAX_DEPTH) is far
#: beyond any real ultrasound frame (about 1000 px) or trained size (128 to 512 px), and its
#: canvas (268 Mpx) beyond the largest image ultraseg reads (twice Pillow's 89 Mpx guard);
#: still 1 GiB as float32 a frame. A model file that says 200000 asked for 160 GB.
MAX_SIZE = 16384
#: The widest random zoom range the warps accept (train.affine_scale, --affine-scale): a
#: quarter to four times the frame's side (nnU-Net uses 0.7 to 1.4). Already at these bounds
#: a zoom of 0.25 leaves the frame a sixteenth of the canvas, the rest its replicated border,
#: and a zoom of 4 shows a sixteenth of the frame; further out a frame becomes its border or a
#: few pixels blown up, its mask all or nothing (1e-6 and 1e6 trained, silently).
ZOOM_LIMITS = (0.25, 4.0)


@dataclass(frozen=True)
class PreprocessConfig(_Section):
    """From a decoded frame to the network's input.

    ``size``: working resolution; the frame is padded to square (centred, longest side) and
    resized to ``size`` x ``size``. ``None`` keeps the frame at its own resolution, for
    prediction only (a predictor built by hand): training refuses it.
    ``pad_to_square``: False resizes the frame to the square as it is (stretching its shorter
    side) instead of padding it first. ``crop_border``: before that, trim the uniform bands
    at the frame's edges (padding a distributor added, blank margins: rows and columns whose
    pixels all lie within 2 grey levels of each other); the prediction gives them background.
    Both apply only with a ``size``.
    ``normalise``: 'zscore' (per image) or 'unit' (x / 255).
    ``fill_outlines``: the masks are drawn closed contours (outlines, HC18's), each filled into
    a solid mask (:func:`ultraseg.preprocess.fill_outline`) in any layout; the hc18 layout
    fills its annotations whatever this says. Kept in the checkpoint, so that ``evaluate`` and
    ``predict --overlay`` read ground truth as training did.
    """

    size: int | None = 252
    pad_to_square: bool = True
    crop_border: bool = False
    normalise: Literal["zscore", "unit"] = "unit"
    label: int | None = None   # None: any non-zero label is foreground; K: only label K
    fill_outlines: bool = False  # masks are closed contours: fill them (hc18 layout: always)

    def __post_init__(self) -> None:
        """``size`` within its bounds (:func:`size_problem`), refused when built."""
        super().__post_init__()
        problem = size_problem(self)
        if problem:
            raise UltrasegError(f"preprocess.{problem[0]} (--{problem[0]}) {problem[1]}")

    def to_dict(self) -> dict[str, Any]:
        """The settings; ``fill_outlines``, added after 0.1.0, only where set, so that the
        builds before it read a checkpoint, ONNX file or config.json that leaves it False
        (no preset sets it: a file without it reads as False under every one)."""
        d = super().to_dict()
        if not d["fill_outlines"]:
            del d["fill_outlines"]
        return d


@dataclass(frozen=True)
class PostprocessConfig(_Section):
    """From the network's output to a mask. Chosen on the validation split when training ends.

    ``tta``: the probabilities are the average of the network's output on the frame and,
    flipped back, on the horizontally flipped frame (test-time augmentation, twice the
    prediction time), before the threshold and the component rules
    (:mod:`ultraseg.postprocess`)."""

    threshold: float = 0.5
    min_area: int = 0              # components smaller than this (pixels at original size) go
    min_peak: float = 0.0          # so do components whose highest probability is under this
    keep_largest: bool = False
    fill_holes: bool = False
    tta: bool = False              # average with the horizontally flipped frame's output first

    def __post_init__(self) -> None:
        """Each value within its range (:func:`postprocess_problem`), refused when built: a
        threshold of 50 left every mask empty without a word."""
        super().__post_init__()
        problem = postprocess_problem(vars(self))
        if problem:
            raise UltrasegError(f"postprocess.{problem[0]} {problem[1]}")


def check_postprocess(pp: Any) -> None:
    """Refuse post-processing that is not a :class:`PostprocessConfig` (a dict) as a user
    error; its values' types and ranges ("0.3", a threshold of 50) it refused when built."""
    if not isinstance(pp, PostprocessConfig):
        raise UltrasegError(f"postprocess must be a PostprocessConfig (ultraseg."
                            f"PostprocessConfig(threshold=...)), got {type(pp).__name__}")


def size_problem(pp: PreprocessConfig) -> tuple[str, str] | None:
    """``(setting, what is wrong)`` for a working ``size`` outside 1 to :data:`MAX_SIZE`
    (None, a frame's own size, is none), else None (its type is check_types's): what a model
    file (a checkpoint, an ONNX file's metadata) records is checked when it is loaded."""
    v = pp.size
    problem = None if v is None else whole_number_problem(v, 1, MAX_SIZE)
    if problem:
        why = (f": a canvas of {v} x {v} pixels, {4 * v * v / 1e9:.1f} GB as floats a frame"
               if isinstance(v, int) and v > MAX_SIZE else "")
        return "size", problem + why
    return None


def postprocess_problem(values: dict[str, Any]) -> tuple[str, str] | None:
    """``(setting, what is wrong)`` for a post-processing value out of its range (a threshold
    or minimum peak outside [0, 1] -- nan included --, a negative minimum area), else None;
    ``values`` holds some or all of the settings, by name, each a number (check_types)."""
    for name in ("threshold", "min_peak"):
        v = values.get(name, 0.0)
        if not 0.0 <= v <= 1.0:
            return name, f"must lie in [0, 1], got {v}"
    if not values.get("min_area", 0) >= 0:
        return "min_area", f"must be >= 0, got {values['min_area']}"
    return None


#: The largest --seed and --split-seed (numpy's legacy range): each epoch's torch seed, the
#: run's times 100 003 plus the epoch, stays within torch's 64 bits.
MAX_SEED = 2**32 - 1


def _number(v: object) -> bool:
    """A real number as a config value: int or float, not a bool (a config file's true)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class TrainConfig(_Section):
    epochs: int = 5
    batch_size: int = 4
    lr: float = 1e-3
    loss: Literal["bce", "dice", "bce+dice"] = "bce"
    batch_dice: bool = False             # the Dice term pooled over each batch (nnU-Net's 2D)
    dice_skip_empty: bool = False        # the Dice term blind to frames with an empty mask
    val_fraction: float = 0.2
    test_fraction: float = 0.0           # frames (by subject) held out from training and tuning
    seed: int = 0                        # initial weights, batch order, augmentation
    split_seed: int | None = None        # held-out and validation subjects; None: ``seed``
    device: str = "auto"                 # auto | cpu | cuda
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    time_limit_s: float | None = None
    schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = 0.0
    ema_decay: float = 0.0               # 0: off; else validate / keep a moving average of weights
    presence_weight: float = 1.0         # presence-head models: weight of the head's own BCE
    augment: Literal["none", "flip", "strong", "elastic"] = "none"
    affine_scale: tuple[float, float] = (0.85, 1.15)  # strong/elastic: random zoom range
    tiles_per_image: int = 1             # valid model: random tiles drawn per image per epoch
    tune_postprocess: bool = True
    num_threads: int | None = None
    world_size: int = 1                  # recorded, not chosen: processes that trained (torchrun)
    cutmix: float = 0.0                  # share of training batches cut-mixed; 0: off

    def __post_init__(self) -> None:
        """Each setting's own range, refused as a user error naming the setting when the
        section is built (after its types: :func:`check_types`). What depends on other
        settings is :func:`ultraseg.train.check_config`'s."""
        super().__post_init__()
        t = self
        counts = {"train.epochs (--epochs)": t.epochs,
                  "train.batch_size (--batch-size)": t.batch_size,
                  "train.tiles_per_image (--tiles-per-image)": t.tiles_per_image}
        if t.num_threads is not None:
            counts["train.num_threads (--threads)"] = t.num_threads
        for name, v in counts.items():     # (each a whole number already: check_types)
            whole_number(name, v)
        seeds = {"train.seed (--seed)": t.seed}
        if t.split_seed is not None:
            seeds["train.split_seed (--split-seed)"] = t.split_seed
        for name, v in seeds.items():     # numpy's generators take no negative seed; torch's
            # take 64 bits, and each epoch's seed is the run's times 100 003 plus the epoch
            whole_number(name, v, 0, MAX_SEED)
        positive = {"train.lr (--lr)": t.lr}
        if t.time_limit_s is not None:
            positive["train.time_limit_s (--time-limit)"] = t.time_limit_s
        for name, v in positive.items():   # (each a number already, as below: check_types)
            if not 0 < v < math.inf:
                raise UltrasegError(f"{name} must be a number > 0, got {v!r}")
        s = t.affine_scale                 # (two numbers already: check_types)
        if not ZOOM_LIMITS[0] <= s[0] <= s[1] <= ZOOM_LIMITS[1]:
            raise UltrasegError(f"train.affine_scale (--affine-scale) must be two numbers "
                                f"{ZOOM_LIMITS[0]:g} <= LO <= HI <= {ZOOM_LIMITS[1]:g} (the "
                                f"random zoom's range; nnU-Net uses 0.7 1.4), got {s!r}")
        for name, v in (("train.val_fraction (--val-fraction)", t.val_fraction),
                        ("train.test_fraction (--test-fraction)", t.test_fraction)):
            if not 0 <= v < 1:
                raise UltrasegError(f"{name} must be a number in [0, 1), got {v!r}")
        if not 0 <= t.weight_decay < math.inf:
            raise UltrasegError(f"train.weight_decay must be a number >= 0, "
                                f"got {t.weight_decay!r}")
        d = t.ema_decay
        if not 0 <= d < 1:
            raise UltrasegError(f"train.ema_decay (--ema-decay) must be a number in [0, 1), "
                                f"got {d!r}")
        if not 0 <= t.cutmix <= 1:
            raise UltrasegError(f"train.cutmix (--cutmix) must be a number in [0, 1], "
                                f"got {t.cutmix!r}")
        w = t.presence_weight
        if not 0 <= w < math.inf:
            raise UltrasegError(f"train.presence_weight (--presence-weight) must be a number "
                                f">= 0, got {w!r}")
        if not DEVICE_NAME.fullmatch(t.device):  # (whether the machine has it: later)
            raise UltrasegError(f"train.device (--device) must be one of {DEVICE_NAMES}, "
                                f"got {t.device!r}")

    @property
    def dice_shaped(self) -> list[str]:
        """The settings on that shape the loss's Dice term (``train.batch_dice
        (--batch-dice)``, ``train.dice_skip_empty (--dice-skip-empty)``), where ``loss`` has
        none for them to shape."""
        if "dice" in self.loss:
            return []
        return [flag for flag, on in (("train.batch_dice (--batch-dice)", self.batch_dice),
                                      ("train.dice_skip_empty (--dice-skip-empty)",
                                       self.dice_skip_empty)) if on]


@dataclass(frozen=True)
class DataConfig(_Section):
    path: str = ""
    layout: str = "auto"
    subject_pattern: str | None = None
    cache_dir: str | None = None  # None: $XDG_CACHE_HOME/ultraseg, else ~/.cache/ultraseg; "": none

    def __post_init__(self) -> None:
        """An unknown ``layout`` and a ``subject_pattern`` that is no regex refused when the
        section is built (a config file's ``"bsui"`` was refused only after the dataset was
        read, naming neither the setting nor the file). A file name starting with ``~``
        (``"~/data/busi"`` in a config file, DATA typed in quotes) is taken as the user's home
        folder's, as a shell takes it: it was a folder named '~' in the current one."""
        super().__post_init__()
        for name in FILE_NAMES:
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, home_expanded(value))
        from .io import check_layout    # (io reads config: imported when first built)

        check_layout(self.layout, self.subject_pattern)


#: DataConfig's settings that name files. A file (config.json, a checkpoint's record of its
#: run) stores them as the UTF-8 reading of their bytes (:func:`ultraseg.fileio.json_name`),
#: so that a run made under one locale names the same folder under another.
FILE_NAMES = ("path", "cache_dir")


def names_stored(doc: dict[str, Any]) -> dict[str, Any]:
    """A config's dict (:meth:`RunConfig.to_dict`) with its file names as a file stores them;
    a name this locale cannot encode is an :class:`UltrasegError`."""
    return _data_names(doc, json_name)


def names_read(doc: Any) -> Any:
    """A config read from a file (config.json, --config, a checkpoint's record of its run)
    with its file names as this locale has them, for :meth:`RunConfig.from_dict`; anything
    else (no config: from_dict says what is wrong) as it is."""
    return _data_names(doc, name_from_json)


def _data_names(doc: Any, convert: Any) -> Any:
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        return doc
    names = {k: convert(data[k]) for k in FILE_NAMES if isinstance(data.get(k), str)}
    return {**doc, "data": {**data, **names}}


#: The block of a run's config.json recording what its 'auto' settings (train.device,
#: precision, num_threads) resolved to where it ran: a record, not a setting (read as none).
RESOLVED = "resolved"


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run. ``preset`` names the recipe it started from: where it is one
    of :data:`PRESETS`, ``from_dict`` and ``load`` build on that preset's values, as
    ``ultraseg train --config`` does. Another name is a label on the defaults (a run's own
    config.json names every value), and so is a file without one ('custom'; there the CLI
    starts a partial file from its default preset instead). The constructor builds on no preset
    (``RunConfig(preset="cpu")`` holds the defaults: build a preset's config with
    :func:`preset`, changed with :func:`merge`).

    ``source`` is the config file :meth:`load` read it from (None: built otherwise), kept by
    :func:`merge` unless it sets data.path: no setting (neither in :meth:`to_dict` nor
    compared), it lets training say where a relative data.path is found beside that file
    alone (:func:`check_data_path`)."""

    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "seed"
    source: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # each section its dataclass, refused when built as a section refuses its values: a
        # dict given for one was built, and train failed on it later with an AttributeError
        try:
            check_types(self, "RunConfig")
        except UltrasegError as e:
            if not any(isinstance(getattr(self, f.name), dict) for f in fields(self)):
                raise
            raise UltrasegError(f"{e.message} (a config from dicts of settings: "
                                "RunConfig.from_dict({'model': {...}}), or ultraseg.merge(cfg, "
                                "{'model': {...}}))") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "data": self.data.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "model": self.model.to_dict(),
            "train": self.train.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        if not isinstance(d, dict):
            raise UltrasegError(f"a config is a JSON object of sections, got {d!r:.60}")
        unknown = sorted(set(d) - {"preset", *SECTIONS, RESOLVED},
                         key=str)
        if unknown:
            raise UltrasegError(_unknown_sections(unknown))
        for name in SECTIONS:
            if name in d and not isinstance(d[name], dict):
                raise UltrasegError(f"config section {name!r} must be a JSON object of "
                                    f"settings, got {d[name]!r}")
        if not isinstance(d.get("preset", ""), str):
            raise UltrasegError(f"config 'preset' must be a name, got {d['preset']!r}")
        name = d.get("preset", "custom")
        # a named preset's values under the file's, as `ultraseg train --config` builds it (a
        # config.json a run wrote names every value: the same config either way); another
        # name (custom, cpu+lever) is a label on the defaults
        base = PRESETS.get(name, {})
        sections = {s: {**base.get(s, {}), **(d.get(s) or {})}
                    for s in SECTIONS}
        return cls(
            data=DataConfig.from_dict(sections["data"]),
            preprocess=PreprocessConfig.from_dict(sections["preprocess"]),
            model=ModelConfig.from_dict(sections["model"]),
            train=TrainConfig.from_dict(sections["train"]),
            preset=name,
        )

    def recipe(self) -> "RunConfig":
        """The config this run's recipe gives before any value set by hand: the preset its
        label names (:func:`from_dict` of the name alone), the preset a 'PRESET+NAME' label
        starts from (a quality lever's run: 'cpu+NAME' is the cpu recipe and a change), else
        the defaults ('custom', a label of the user's)."""
        return RunConfig.from_dict({"preset": self.preset.split("+")[0]})

    def set_by_hand(self, section: str, key: str) -> bool:
        """Whether the ``section``'s ``key`` differs from what :meth:`recipe` gives it (most
        presets leave a value at its default, and a value set there is set by hand too)."""
        return getattr(getattr(self, section), key) != getattr(getattr(self.recipe(), section),
                                                               key)

    def to_json(self) -> str:
        """The config as its run folder's config.json holds it (:func:`names_stored`)."""
        return json.dumps(names_stored(self.to_dict()), indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        try:
            doc = read_config_json(path)
        except (OSError, ValueError) as e:      # (no UTF-8, a key given twice, too deep)
            raise UltrasegError(f"cannot read config: {e}", path) from e
        try:
            cfg = cls.from_dict(names_read(doc))
        except UnknownSettings as e:
            raise e.in_config(path) from e
        except UltrasegError as e:
            raise UltrasegError(e.message, path) from e
        return dataclasses.replace(cfg, source=os.path.abspath(path))  # a chdir keeps it


def check_data_path(path: str, config_file: str | Path | None) -> None:
    """Refuse a relative data ``path`` read from ``config_file`` (None: none, nothing to
    check) that the current folder does not hold and the file's folder does, saying so: it is
    read from the current folder, not the file's (as ever: files rely on it), and 'no such
    file or folder' left the user to guess why. ``ultraseg train --config`` and
    :func:`ultraseg.train.train` (a :meth:`RunConfig.load`'s ``source``) both check."""
    if not config_file or not path or Path(path).is_absolute() or Path(path).exists():
        return
    folder = Path(config_file).resolve().parent
    if (folder / path).exists():
        raise UltrasegError(f"data.path {path!r} is not found from the current folder "
                            f"{Path.cwd()}; the config file's folder ({folder}) holds it: run "
                            "from there or give an absolute path", config_file)


#: A line of YAML (``train:``, ``  epochs: 3``, ``- item: x``), as no JSON line starts.
_YAML_LINE = re.compile(r"^\s*(- )?[A-Za-z_][\w.-]*\s*:(\s|$)", re.M)


def _unknown_sections(names: list[Any]) -> str:
    """'unknown config sections ['trian'] (did you mean 'train'?; valid: [...])', guessed as
    :meth:`UnknownSettings.said` guesses a key (:func:`_meant`)."""
    return f"unknown config sections {names} ({_meant(names, ['preset', *SECTIONS])})"


def read_config_json(path: str | Path) -> Any:
    """A config file's JSON (:func:`~ultraseg.fileio.read_json`); text that is no JSON is an
    :class:`UltrasegError` saying so plainly, and that YAML is not read where the file is
    named ``.yaml``/``.yml`` or its lines look like YAML's: json's own words ('Expecting
    value: line 1 column 1 (char 0)') left a YAML file's user to guess. OSError where it
    cannot be read, ValueError for other unreadable JSON (a key given twice, nested too
    deeply, no UTF-8)."""
    try:
        return read_json(path)
    except json.JSONDecodeError as e:
        yaml = Path(path).suffix.lower() in (".yaml", ".yml") or _YAML_LINE.search(e.doc)
        raise UltrasegError(
            f"config files are JSON (as a run's config.json); this is not JSON (line "
            f"{e.lineno} column {e.colno}: {e.msg})" + ("; YAML is not read: write it as JSON, "
                                       '{"train": {"epochs": 5}}' if yaml else ""),
            path) from e


#: Named recipes. ``seed`` is the original description's recipe with correct valid geometry.
#: ``cpu`` is tuned for two CPU cores and a 20-minute budget (see benchmarks/QUALITY.md).
#: ``demo`` trains a small model on phantom frames for 12 epochs (``ultraseg demo --minutes``
#: caps the time, 2.5 by default).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "seed": {
        "model": {"variant": "valid", "width": 64, "depth": 4, "tile": 68},
        "preprocess": {"size": 252, "normalise": "unit"},
        "train": {"epochs": 5, "batch_size": 4, "lr": 1e-3, "loss": "bce", "augment": "none",
                  "schedule": "constant", "tiles_per_image": 1},
    },
    "cpu": {
        "model": {"variant": "same", "width": 16, "depth": 4, "presence_head": "auto"},
        "preprocess": {"size": 192, "normalise": "zscore"},
        "train": {"epochs": 300, "batch_size": 8, "lr": 2e-3, "loss": "bce+dice",
                  "augment": "strong", "schedule": "cosine", "time_limit_s": 1200.0,
                  "presence_weight": 0.25},
    },
    "demo": {
        "model": {"variant": "same", "width": 8, "depth": 3},
        "preprocess": {"size": 128, "normalise": "zscore"},
        "train": {"epochs": 12, "batch_size": 8, "lr": 3e-3, "loss": "bce+dice",
                  "augment": "flip", "schedule": "cosine", "time_limit_s": 150.0},
    },
}


def choices(section: type, name: str) -> tuple[str, ...]:
    """The values a ``Literal`` field of a config section allows (the CLI's choices come from
    here, so a new option is declared once)."""
    import typing

    return typing.get_args(typing.get_type_hints(section)[name])


def default_preset_name() -> str:
    """The preset a run takes where none is named (``ultraseg train`` without --preset): the
    tuned 'cpu' recipe where no GPU is present, the original 'seed' recipe where PyTorch sees
    one (asked at call time, never at import: it imports PyTorch)."""
    import torch

    return "seed" if torch.cuda.is_available() else "cpu"


def preset(name: str) -> RunConfig:
    """The :class:`RunConfig` of a named preset; an unknown name lists the valid ones."""
    if not isinstance(name, str) and name is not None:  # (a list raised 'unhashable type')
        raise UltrasegError(f"a preset is a name ({', '.join(PRESETS)}), got {name!r}")
    if name not in PRESETS:
        raise UltrasegError(f"unknown preset '{name}'; valid presets: {', '.join(PRESETS)}")
    return RunConfig.from_dict({"preset": name, **PRESETS[name]})


def merge(cfg: RunConfig, overrides: dict[str, dict[str, Any]]) -> RunConfig:
    """``cfg`` with section values replaced by ``overrides`` ({section: {key: value}}).

    A ``"preset"`` override is a label, never a switch of recipe: one that names no preset
    (``"mine"``, a quality lever's ``"cpu+NAME"``) relabels ``cfg``, its values unchanged; one
    naming a preset other than ``cfg``'s own is refused where the merged values are not those
    the overrides give that preset (it would label one recipe's values with another's name,
    which :meth:`RunConfig.set_by_hand` then compares them with): choose a preset with
    :func:`preset`, then merge the changes, ``merge(preset("seed"), {...})``. Overrides that
    set every value (a run's config.json) give the same values on any preset, and keep
    their label."""
    # (a list, a string or None raised AttributeError: "'list' object has no attribute 'items'")
    if not isinstance(cfg, RunConfig):
        raise UltrasegError(f"merge takes a RunConfig (ultraseg.preset(NAME), or RunConfig."
                            f"from_dict for a dict of sections), got {type(cfg).__name__}")
    if not isinstance(overrides, dict):
        raise UltrasegError(f"merge's overrides must be a dict of sections ({{\"train\": "
                            f"{{\"epochs\": 5}}}}), got {type(overrides).__name__}")
    d = cfg.to_dict()
    for section, values in overrides.items():
        if section == "preset":
            if isinstance(values, str) and values in PRESETS and values != cfg.preset \
                    and merge(cfg, _unlabelled(overrides)) \
                    != dataclasses.replace(merge(preset(values), _unlabelled(overrides)),
                                         preset=cfg.preset):
                raise UltrasegError(
                    f"merge does not switch presets: {{'preset': {values!r}}} would only "
                    f"relabel this {cfg.preset!r} config, its values unchanged; choose one with "
                    f"preset({values!r}), then merge the changes: merge(preset({values!r}), "
                    f"{{...}}) (a label of your own, as 'mine', names no preset)")
            d["preset"] = values
            continue
        if section == RESOLVED:     # a run's record of what ran (its config.json's): no setting
            continue
        if section not in d:
            raise UltrasegError(_unknown_sections([section]))
        if not isinstance(values, dict):
            raise UltrasegError(f"config section '{section}' must be a dict of settings "
                                f"({{\"epochs\": 5}}), got {type(values).__name__}")
        d[section] = {**d[section], **values}
    merged = RunConfig.from_dict(d)
    if cfg.source and "path" not in overrides.get("data", {}):    # (data.path still the file's)
        merged = dataclasses.replace(merged, source=cfg.source)
    return merged


def _unlabelled(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` without their ``"preset"`` label (:func:`merge` compares the values)."""
    return {k: v for k, v in overrides.items() if k != "preset"}


def parse_duration(text: str) -> float:
    """'20m', '90s', '1h30m', '1h 30 min', '45' (seconds) -> seconds; a negative one is
    refused as such."""
    import re

    text = str(text).strip().lower()
    negative = text.startswith("-")
    body = text[1:].strip() if negative else text
    unit = r"(\d+(?:\.\d+)?)\s*(min|h|m|s)"
    parts = re.findall(unit, body)
    if re.fullmatch(r"\d+(\.\d+)?", body):
        seconds = float(body)
    elif parts and re.fullmatch(r"\s*", re.sub(unit, "", body)):
        seconds = sum(float(v) * {"h": 3600, "min": 60, "m": 60, "s": 1}[u] for v, u in parts)
    else:
        raise UltrasegError(f"cannot read duration '{text}'; use e.g. 20m, 90s, 1h30m")
    if negative:
        raise UltrasegError(f"duration '{text}' must be positive; use e.g. 20m, 90s, 1h30m")
    return seconds
