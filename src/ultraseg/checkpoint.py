"""Self-describing checkpoints: weights plus everything needed to use them.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings, lists and
dicts: ``{"format": "ultraseg-checkpoint", "meta_json": str, "state_dict": {...},
"train_state": {...}}``. It is always read with ``torch.load(weights_only=True)``, so a file
carrying a pickle that would run code is refused and the code never runs.

``meta`` (JSON): ``format_version``, ``ultraseg_version``, ``model`` (ModelConfig),
``preprocess`` (PreprocessConfig), ``postprocess`` (PostprocessConfig, holding the decision
threshold), ``label`` (what foreground means), ``metrics`` (training history and best epoch),
``run`` (the whole resolved RunConfig).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Mapping

import torch

from . import __version__
from .config import ModelConfig, PostprocessConfig, PreprocessConfig, UnknownSettings
from .errors import CheckpointError, UltrasegError
from .fileio import atomic_write_bytes, hash_file, json_text

log = logging.getLogger(__name__)

FORMAT = "ultraseg-checkpoint"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint holds, decoded. ``train_state`` is empty in a weights-only file.
    ``sha256``: of the file's bytes as read (by :func:`load_checkpoint` asked for it; empty
    otherwise)."""

    model: ModelConfig
    preprocess: PreprocessConfig
    postprocess: PostprocessConfig
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]
    train_state: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""


def make_meta(model: ModelConfig, preprocess: PreprocessConfig, postprocess: PostprocessConfig,
              metrics: dict[str, Any] | None = None, run: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """The JSON description stored beside the weights."""
    label = preprocess.label
    return {
        "format_version": FORMAT_VERSION,
        "ultraseg_version": __version__,
        "model": model.to_dict(),
        "preprocess": preprocess.to_dict(),
        "postprocess": postprocess.to_dict(),
        "label": {"value": label, "meaning": "any non-zero mask label is foreground"
                  if label is None else f"mask label {label} is foreground"},
        "output": "per-pixel foreground probability (sigmoid of the network's logits)",
        "metrics": metrics or {},
        "run": run or {},
    }


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any],
                    train_state: dict[str, Any] | None = None) -> None:
    """Write a checkpoint atomically (temporary name, then rename)."""
    payload = {
        "format": FORMAT,
        "meta_json": json_text(meta),     # strict: a NaN figure (no validation) is null
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "train_state": train_state or {},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, sha256: bool = False) -> Checkpoint:
    """Read and check a checkpoint; every failure is a one-line :class:`CheckpointError`.
    ``sha256``: hash the file as read too (:attr:`Checkpoint.sha256`; a Predictor records it;
    resume, training and export have no use for it, and on a large file it takes longer than
    the load)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError("a folder, not a checkpoint file (a run's checkpoint is "
                              "RUN/best.ckpt)", path)
    if not path.is_file():
        raise CheckpointError("no such checkpoint file", path)
    if path.stat().st_size == 0:
        raise CheckpointError("empty file (0 bytes), not a checkpoint", path)
    try:
        f = open(path, "rb")
    except PermissionError as e:
        raise CheckpointError("cannot read checkpoint: permission denied", path) from e
    # one open file for the checks, the load and the hash: a file replaced at the path
    # meanwhile (a training run saving best.ckpt again) is neither loaded nor hashed; one
    # rewritten in place (cp over it, a torch.save to its path) is refused, as export's
    # onnx_predictor refuses an ONNX file: its weights and its hash would be two files'
    with f:
        was = _version(os.fstat(f.fileno()))
        payload, digest = _read_payload(f, path, sha256)
        if _version(os.fstat(f.fileno())) != was:
            raise CheckpointError("changed while it was loaded (rewritten): load it again",
                                  path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError("not an ultraseg checkpoint (weights of another model?)", path)
    try:
        meta = json.loads(payload["meta_json"])
        version = meta.get("format_version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(f"format_version {version!r} is not a number")
    except Exception as e:
        raise CheckpointError(f"damaged checkpoint metadata ({e})", path) from e
    if version > FORMAT_VERSION:        # said before reading what a newer format holds
        raise CheckpointError(f"checkpoint format {version} is newer than this ultraseg "
                              f"({__version__}) reads", path)
    try:
        for name in ("model", "preprocess", "postprocess"):   # from_dict takes None too
            if not isinstance(meta[name], dict):
                raise ValueError(f"{name} is a {type(meta[name]).__name__}, not settings")
        # each section refuses its types and ranges as it is built (a size of 200000, a
        # 160 GB canvas; a width of 1e9, which overflowed the build): damage, here
        ckpt = Checkpoint(
            model=ModelConfig.from_dict(meta["model"]),
            preprocess=PreprocessConfig.from_dict(meta["preprocess"]),
            postprocess=PostprocessConfig.from_dict(meta["postprocess"]),
            state_dict=payload["state_dict"],
            meta=meta,
            train_state=payload.get("train_state") or {},
            sha256=digest,
        )
    except UnknownSettings as e:
        raise e.in_file(meta, path) from e
    except Exception as e:
        raise CheckpointError(f"damaged checkpoint metadata ({e})", path) from e
    if isinstance(ckpt.state_dict, dict):   # (anything else: build_from_checkpoint says so)
        bad = non_finite(ckpt.state_dict)
        if bad:     # every prediction would be NaN, or background
            raise CheckpointError(f"holds NaN/inf weights (its training diverged): "
                                  f"{some_names(bad)}; train it again with a lower --lr", path)
    return ckpt


def _version(st: os.stat_result) -> tuple[int, ...]:
    """What tells an open file's versions apart: its size and mtime. Not its ctime, which a
    file replaced at its path (a training run saving best.ckpt again: the open file is the
    one that was loaded, intact) changes too, losing its last link."""
    return st.st_size, st.st_mtime_ns


def _read_payload(f: BinaryIO, path: Path, sha256: bool) -> tuple[Any, str]:
    """(what torch.load reads from the open checkpoint file ``f``, the sha256 of its bytes
    where ``sha256`` asks for it, else ""), once the file's first bytes and its zip are
    checked."""
    kind = _not_torch(f, path)
    if kind:
        raise CheckpointError(f"not a checkpoint: {kind}", path)
    _check_zip(f, path)
    try:
        f.seek(0)
        payload = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # (a file that is no zip or pickle at all was told apart above, by its first bytes)
        if "weights only load failed" in str(e).lower():
            raise CheckpointError("refused: the file holds Python objects other than weights "
                                  "(it could run code); ultraseg loads only tensors and JSON",
                                  path) from e
        raise CheckpointError("not a checkpoint (unreadable pickle data)", path) from e
    except Exception as e:  # zip/pickle errors of every kind: truncated, text, random bytes
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise CheckpointError(f"truncated or not a checkpoint ({first})", path) from e
    if not sha256:
        return payload, ""
    digest = hashlib.sha256()
    hash_file(digest, f)
    return payload, digest.hexdigest()


def non_finite(state_dict: Mapping[str, Any]) -> list[str]:
    """The names of the floating-point tensors (weights, batch-norm statistics) in
    ``state_dict`` that hold NaN or inf: what a diverged training leaves."""
    return [name for name, t in state_dict.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point()
            and not bool(torch.isfinite(t).all())]


def some_names(names: list[str]) -> str:
    """The first of ``names`` and how many more: "encoder.0.weight and 40 more"."""
    return names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")


def _check_zip(f: BinaryIO, path: Path) -> None:
    """The checks of a checkpoint's zip that torch.load does not make, before it inflates
    anything; a legacy pickle has none of them.

    A compressed entry is refused (torch.save stores every entry as it is, so a deflated one
    is a rewritten file: 1.5 MB of deflate held a 1.5 GB tensor that torch.load unpacked into
    memory), and so are entries whose sizes add up to more than the file. Then each entry's
    CRC-32, which torch.load does not check either: a byte flipped in the weights (a bad
    disk, a copy gone wrong) loaded in silence."""
    if not zipfile.is_zipfile(f):
        return
    try:
        with zipfile.ZipFile(f) as z:
            entries = z.infolist()
            packed = next((i for i in entries if i.compress_type != zipfile.ZIP_STORED), None)
            if packed is not None:
                raise CheckpointError(f"refused: its entry {packed.filename} is compressed "
                                      f"(torch.save writes none; a compressed entry can "
                                      f"unpack to gigabytes)", path)
            total, size = sum(i.file_size for i in entries), os.fstat(f.fileno()).st_size
            if total > size:
                raise CheckpointError(f"damaged checkpoint: its entries claim {total} bytes, "
                                      f"more than the file's {size}", path)
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"damaged checkpoint ({e})", path) from e
    if bad is not None:
        raise CheckpointError(f"damaged checkpoint: its entry {bad} fails its checksum (a "
                              f"corrupted copy?)", path)


def _not_torch(f: BinaryIO, path: Path) -> str | None:
    """What the open file ``f`` (at ``path``) is when its first bytes say it is no PyTorch
    file (a zip from torch.save, or a pickle), else None."""
    f.seek(0)
    head = f.read(8)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None
    if head.startswith(b"\x89PNG") or head[:3] == b"\xff\xd8\xff" or head[:4] in (
            b"II*\x00", b"MM\x00*"):
        return "an image file"
    if head[:1] == b"\x08" and path.suffix.lower() != ".onnx":
        return "an ONNX model? (ultraseg tells one by its name: it must end in .onnx)"
    return "neither a zip written by torch.save nor a pickle"


def build_from_checkpoint(ckpt: Checkpoint, path: str | Path | None = None) -> torch.nn.Module:
    """The model a checkpoint describes, with its weights loaded, in eval mode.

    Its weights are the checkpoint's own tensors where their dtypes are the model's (no
    copy): changing one in place changes ``ckpt.state_dict`` too."""
    from .model import build_model

    # built without weights (on the meta device), then given room: no initial weights are
    # drawn from torch's generator, which is the process's, shared with every thread (saving
    # and restoring it took draws from, or gave them again to, a training in another thread)
    try:
        with torch.device("meta"):
            model = build_model(ckpt.model)
    except UltrasegError as e:    # a model this version does not build (one trained
        # before a combination was withdrawn: the presence head on the valid U-Net)
        raise CheckpointError(f"describes a model this version of ultraseg does not "
                              f"build ({e.message}): retrain it", path) from e
    if not isinstance(ckpt.state_dict, dict):
        raise CheckpointError(f"damaged checkpoint: its weights are a "
                              f"{type(ckpt.state_dict).__name__}, not named tensors", path)
    _check_shapes(model, ckpt.state_dict, path)
    # weights already of the model's dtypes become its own, uncopied (a predictor held a
    # second copy while it was built: about 120 MB more at width 64); others (a checkpoint
    # written in another precision) are copied, and so cast, into room made for them
    assign = _same_dtypes(model, ckpt.state_dict)
    if not assign:
        model = model.to_empty(device="cpu")
    try:
        model.load_state_dict(ckpt.state_dict, strict=True, assign=assign)
    except (RuntimeError, TypeError, AttributeError) as e:
        # torch's first line is a header ('Error(s) in loading state_dict for UNet:'):
        # quote the first line that says what does not fit
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines[1:]), lines[0] if lines else type(e).__name__)
        raise CheckpointError("weights do not fit the model the checkpoint describes "
                              f"({detail[:160]})", path) from e
    return model.eval()


def _same_dtypes(model: torch.nn.Module, state_dict: dict[str, Any]) -> bool:
    """Whether every weight ``model`` holds is in ``state_dict`` as a CPU tensor of its dtype."""
    return all(isinstance(have := state_dict.get(name), torch.Tensor)
               and have.dtype == want.dtype and have.device.type == "cpu"
               for name, want in model.state_dict().items())


def _check_shapes(model: torch.nn.Module, state_dict: dict[str, Any], path: str | Path | None
                  ) -> None:
    """Refuse weights of other shapes than ``model``'s (built on the meta device) before
    room is made for the model's: a checkpoint describing a vast model beside a small
    model's weights asked for terabytes first. Missing and unexpected names are left to
    ``load_state_dict``, which lists them."""
    for name, want in model.state_dict().items():
        have = state_dict.get(name)
        if isinstance(have, torch.Tensor) and have.shape != want.shape:
            raise CheckpointError(f"weights do not fit the model the checkpoint describes "
                                  f"(size mismatch for {name}: {tuple(have.shape)} in the "
                                  f"checkpoint, {tuple(want.shape)} in the model)", path)
