"""From a trained model to masks at each image's original resolution.

:class:`Predictor` holds a *backend* -- a function from a float32 batch (N, 1, h, w) to
foreground probabilities of the network's output shape -- plus the preprocessing and
post-processing its checkpoint describes. The torch backend lives in :mod:`ultraseg.runtime`;
the ONNX Runtime backend in :mod:`ultraseg.export`. This module imports neither torch nor
onnxruntime, so prediction from an ``.onnx`` file runs without PyTorch.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Iterator, Union

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

from .config import (ModelConfig, PostprocessConfig, PreprocessConfig, check_flag,
                     check_postprocess, whole_number)
from .errors import UltrasegError, diverged_parts, is_out_of_memory
from .fileio import as_path
from .geometry import context_margin, nearest_valid_output, same_padded_size
from .io.images import pillow_to_gray
from .postprocess import apply as apply_postprocess
from .preprocess import Geometry, prepare, restore
from .tiling import predict_tiled_many

log = logging.getLogger(__name__)

#: A frame as :class:`Predictor` takes it: an array (H, W) or (H, W, C), as nested lists too,
#: or a Pillow image.
ImageLike = Union[ArrayLike, Image.Image]

RunBatch = Callable[[np.ndarray], np.ndarray]

#: Largest output window used when a valid model predicts a whole canvas in one tile.
MAX_PREDICT_TILE = 1012


def prediction_tile(model: ModelConfig, h: int, w: int, tile: int | None = None) -> int:
    """Output tile side for predicting an h x w canvas with a valid model.

    ``tile=None``: the smallest valid output covering the larger side (one tile for the whole
    frame), capped at :data:`MAX_PREDICT_TILE` (a longer side shared by the fewest equal
    windows under it). Larger tiles cost fewer FLOPs per pixel (less
    context recomputed) and give the same result (the predictor starts every window on the
    pooling grid). A ``tile`` is rounded up to a valid output, of at least
    :func:`min_prediction_tile` (narrower windows cannot start on that grid and would give
    other values) and at most the one covering the larger side (more computes only padding).
    """
    if tile is None:
        return _window_side(max(h, w), model.depth)
    return round_tile(min(tile, max(h, w)), model.depth)


def _window_side(side: int, depth: int) -> int:
    """The output window along a canvas side of ``side`` px with no tile given: the smallest
    valid output covering it, up to :data:`MAX_PREDICT_TILE`. A longer side is shared by the
    fewest windows of at most that size, each as small as covers its share (windows start on
    the 2**depth pooling grid, stepping by their side less its remainder on it): 1024 px at
    depth 4 takes two 516-px windows (700-px inputs), not two 1012-px ones whose second is
    mostly mirror padding (1196-px inputs, the same values)."""
    cap = nearest_valid_output(min(side, MAX_PREDICT_TILE), depth)
    if side <= cap:
        return cap
    align = 2**depth
    rem = cap % align       # every valid output side leaves this remainder on the grid
    n = -(-(side - rem) // (cap - rem))     # windows of the cap needed: n (cap - rem) + rem >= side
    return nearest_valid_output(-(-(side + (n - 1) * rem) // n), depth)


def min_prediction_tile(depth: int) -> int:
    """The smallest output tile whose windows can start on the 2**depth pooling grid (20 at
    depth 4): tiles give one window's values from this side up."""
    return nearest_valid_output(2**depth, depth)


def round_tile(tile: int, depth: int) -> int:
    """A tile side given, as prediction (:func:`prediction_tile`, which caps it at the canvas
    first), an ONNX graph's predictor and export take it: rounded up to a valid output side
    of the depth-``depth`` U-Net of at least :func:`min_prediction_tile` (narrower windows
    cannot start on the pooling grid and would give other values)."""
    return nearest_valid_output(max(tile, min_prediction_tile(depth)), depth)


def tile_rounding(tile: int, depth: int, named: str) -> str | None:
    """The warning where :func:`round_tile` changes a tile given (``named``: as its caller
    wrote it, ``--tile`` or ``tile (--tile)``), None where it keeps it: export and load warn
    by this one rule."""
    side = round_tile(tile, depth)
    if side == tile:
        return None
    return (f"{named} {tile} rounded up to {side}, the nearest output side of the depth-"
            f"{depth} U-Net whose windows start on its pooling grid")


def prediction_window(model: ModelConfig, h: int, w: int, tile: int | None = None
                      ) -> tuple[int, int]:
    """Output window (th, tw) for predicting an h x w canvas with a valid model.

    ``tile=None``: the smallest valid output covering each side on its own, capped at
    :data:`MAX_PREDICT_TILE` (a longer side shared by equal windows under it) -- one
    rectangular window for a whole frame up to that size (a
    420 x 580 frame: a 604 x 764 input instead of the square 764 x 764, 25 % fewer FLOPs,
    the same values). ``tile=t``: square windows of :func:`prediction_tile`.
    """
    if tile is not None:
        side = prediction_tile(model, h, w, tile)
        return side, side
    return _window_side(h, model.depth), _window_side(w, model.depth)



def inputs_per_call(batch_size: int, input_pixels: int, reference_pixels: int) -> int:
    """How many network inputs of ``input_pixels`` pixels one call takes: ``batch_size``
    where each is no larger than the ``reference`` input (a training input: a valid model's
    tile with its context, a 'same' model's frame at the working size), else as many as
    ``batch_size`` reference inputs' pixels hold, and at least one. ``--batch-size`` counts
    training inputs; a larger window (a valid model's whole-frame window, a frame at its own
    resolution) fills a call by its pixels, so the network's batch, the memory that grows
    with it, stays that of ``batch_size`` training inputs."""
    return max(1, min(batch_size, batch_size * reference_pixels // max(1, input_pixels)))


def warn_if_saved_during_training(meta: dict[str, Any], path: str | Path) -> None:
    """Say where a checkpoint's (or its ONNX export's) ``meta`` was saved by a training epoch
    (an interrupted run's best.ckpt, any last.ckpt), not by the run's end: its
    post-processing is the defaults, not the one the finished run chooses on validation."""
    metrics = meta.get("metrics") or {}
    history = metrics.get("history")
    if not isinstance(history, list) or "train_seconds" in metrics:
        return
    diverged = diverged_parts(str(metrics.get("stopped") or ""))
    log.warning("%s: saved during training (after epoch %d)%s, not by the run's end: its "
                "post-processing is the defaults, not the one the run chooses on validation "
                "(a finished run's best.ckpt holds that; `ultraseg train --resume --out RUN` "
                "%s)", path, len(history),
                f" by a run that diverged ({diverged[0]})" if diverged else "",
                "finishes it without training on; a new run needs a lower --lr" if diverged
                else "finishes an interrupted run")


class FrameOutOfMemory(MemoryError):
    """Memory ran out on one frame at its full resolution (its pixels onto the canvas, or its
    probabilities back to its size), not on the network: a larger frame than this machine's
    memory holds. ``index``: its place among the images given to
    :meth:`Predictor.predict_proba_many`; ``shape``: its (H, W)."""

    def __init__(self, index: int, shape: tuple[int, ...], detail: str) -> None:
        super().__init__(f"frame {index} ({shape[1]}x{shape[0]}): {detail}")
        self.index, self.shape = index, tuple(shape[:2])


def _frame_sized(work: Callable[[], Any], index: int, shape: tuple[int, ...]) -> Any:
    """``work()``, whose memory goes with a frame's pixels: running out is
    :class:`FrameOutOfMemory` for that frame."""
    try:
        return work()
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e) or isinstance(e, FrameOutOfMemory):
            raise
        raise FrameOutOfMemory(index, shape, (str(e) or type(e).__name__).splitlines()[0]
                               ) from e


@dataclass
class Predictor:
    """Segment 2D ultrasound frames of any size with a trained U-Net.

    Example:
        >>> import ultraseg
        >>> predictor = ultraseg.load("run/best.ckpt")          # or "model.onnx"
        >>> mask = predictor.predict(image)                     # (H, W) bool, image's size
        >>> prob = predictor.predict_proba(image)               # (H, W) float32 in [0, 1]
    """

    run_batch: RunBatch = field(repr=False)
    model: ModelConfig
    preprocess: PreprocessConfig
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    # (out of the repr, as run_batch and runtime: a notebook shows a predictor by it, and meta
    # holds the run's whole epoch history)
    meta: dict[str, Any] = field(default_factory=dict, repr=False)
    batch_size: int = 4
    tile: int | None = None
    tta: bool | None = None  # None: as the post-processing says (chosen on validation)
    source: str = ""
    # the sha256 of the model file as it was loaded (an ONNX model's external data files
    # after it: :func:`ultraseg.export.onnx_predictor`), for an evaluation's record; empty
    # for a backend built by hand
    sha256: str = ""
    # the mirrored frame's output alone, mirrored back (tta does not apply): half of a TTA pass,
    # for a caller that holds the plain half already (train's choice of post-processing)
    mirror: bool = False
    # the only output tile the model takes (an ONNX graph of a valid model), else None
    fixed_tile: int | None = None
    # what runs the network, for an evaluation's record: its engine's version
    # (torch_version or onnxruntime_version), device and precision as resolved ('bf16',
    # 'fp32'); empty for a backend built by hand
    runtime: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_postprocess(self.postprocess)
        self.tta = check_flag("tta", self.tta, "as the post-processing says")
        self.mirror = check_flag("mirror", self.mirror)
        self.batch_size = whole_number("batch_size", self.batch_size)    # np.int64(8) is 8
        self.tile = whole_number("tile", self.tile, none_ok=True)
        if self.fixed_tile is not None and (      # a tile rounded as export rounds it
                self.tile is None
                or round_tile(self.tile, self.model.depth) != self.fixed_tile):
            raise UltrasegError(f"this model takes tile {self.fixed_tile} only (an ONNX export "
                                f"of a valid model), not tile {self.tile!r}: re-export it with "
                                "`ultraseg export --tile T` for another", self.source or None)

    @property
    def uses_tta(self) -> bool:
        """Whether probabilities average the frame's output with the flipped frame's: ``tta``
        where set, else the post-processing's choice (``PostprocessConfig.tta``)."""
        return self.postprocess.tta if self.tta is None else self.tta

    @property
    def applied(self) -> dict[str, Any]:
        """The threshold and rules this predictor applies, with ``tta`` as used
        (:attr:`uses_tta`): what evaluate's ``summary.json`` and predict's and measure's
        ``*.settings.json`` record under ``postprocess``, and predict prints."""
        return {**self.postprocess.to_dict(), "tta": self.uses_tta}

    def record(self) -> dict[str, Any] | None:
        """The model file this predictor was loaded from, as evaluate's ``summary.json``
        (and predict's and measure's ``*.settings.json``) record it under ``checkpoint``:
        ``path`` (resolved), ``sha256`` (:attr:`sha256`, as it was loaded), the
        ``ultraseg_version`` that wrote it, the ``trained_with_version`` of the build that
        trained it (an ONNX model's exporter records it; a checkpoint's is its
        ``ultraseg_version``), ``best_epoch`` and ``epochs_run``; None for a predictor built
        by hand."""
        if not (self.source and Path(self.source).is_file()):
            return None
        path = Path(self.source).resolve()
        metrics = self.meta.get("metrics") or {}
        history = metrics.get("history") or [{}]
        # the hash taken as the file was loaded: the path may name another file by now
        return {"path": str(path), "sha256": self.sha256 or None,
                "ultraseg_version": self.meta.get("ultraseg_version"),
                # an .onnx's ultraseg_version is the exporting build's
                "trained_with_version": self.meta.get(
                    "trained_with_version", self.meta.get("ultraseg_version")),
                "best_epoch": metrics.get("best_epoch"),
                "epochs_run": metrics.get("epochs_run", history[-1].get("epoch"))}

    # ------------------------------------------------------------------ canvas level
    def _run(self, batch: np.ndarray) -> np.ndarray:
        def mirrored() -> np.ndarray:  # the horizontally flipped batch's output, flipped back
            return self.run_batch(np.ascontiguousarray(batch[..., ::-1], dtype=np.float32)
                                  )[..., ::-1]

        if self.mirror:
            return mirrored()
        out = self.run_batch(np.ascontiguousarray(batch, dtype=np.float32))
        if self.uses_tta:  # probabilities averaged with the mirrored ones
            out = 0.5 * (out + mirrored())
        return out

    def _inputs_per_call(self, input_pixels: int) -> int:
        """:func:`inputs_per_call` against a training input: a valid model's output tile
        with its context (252 px at the seed geometry), a 'same' model's frame at the working
        size (a predictor at the frames' own resolution: at the default working size, 252)."""
        depth = self.model.depth
        if self.model.variant == "valid":
            reference = (self.model.tile + 2 * context_margin(depth)) ** 2
        else:
            side = self.preprocess.size or PreprocessConfig().size
            reference = same_padded_size(side, depth) ** 2
        return inputs_per_call(self.batch_size, input_pixels, reference)

    def proba_canvas(self, canvases: np.ndarray) -> np.ndarray:
        """Probabilities for prepared canvases (N, h, w) float32 -> (N, h, w) float32."""
        n, h, w = canvases.shape
        if self.model.variant == "valid":
            # a fixed-size graph takes its own tile whatever the canvas (prediction_window
            # would shrink a tile larger than a small canvas to fit it)
            tile = ((self.fixed_tile, self.fixed_tile) if self.fixed_tile is not None
                    else prediction_window(self.model, h, w, self.tile))
            # windows start on the pooling grid: tiles give one window's values; the windows of
            # every canvas batched together (a canvas of one window is a frame a batch place)
            margin = context_margin(self.model.depth)
            per_call = self._inputs_per_call((tile[0] + 2 * margin) * (tile[1] + 2 * margin))
            return np.stack([p[0] for p in predict_tiled_many(
                self._run, canvases, tile, margin, per_call, align=2**self.model.depth)])
        step = 2**self.model.depth
        ph, pw = -h % step, -w % step
        if self.model.norm == "instance" and (h + ph) * (w + pw) < 2 * step * step:
            # instance norm needs two pixels at the bottleneck (torch refuses one, ONNX Runtime
            # gives the shift): a canvas of one bottleneck pixel (a frame at its own
            # resolution, both sides <= 2**depth) is mirrored down to two
            ph += step
        x = canvases[:, None]
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect")
        per_call = self._inputs_per_call((h + ph) * (w + pw))
        out = np.concatenate([self._run(x[i:i + per_call]) for i in range(0, n, per_call)])
        return out[:, 0, :h, :w].astype(np.float32, copy=False)

    # ------------------------------------------------------------------ image level
    def predict_proba(self, image: ImageLike) -> np.ndarray:
        """A frame (H, W) (or (H, W, C), or a Pillow image) -> probabilities (H, W) float32.

        Pixel values, as :func:`ultraseg.read_image` reads a file's (one rule,
        :func:`ultraseg.io.grey.to_uint8`): uint8 as it is; bool as 0/255; floats in [0, 1]
        times 255 (up to 0.1 past either end clipped to it; within -0.5..2 clipped too, with a
        warning), within 0..255 as they are; signed 8-bit within 0..127 as it is; any other
        integers (a 16-bit scan, but also an 8-bit frame cast to int64) and floats beyond
        0..255 stretched from their min..max.
        Cast an 8-bit frame held in a wider type back to uint8 to keep its values. A Pillow
        image is decoded as its file would be.

        The map is the one :meth:`predict` thresholds: averaged with the flipped frame's where
        test-time augmentation is used (:attr:`uses_tta`: the checkpoint's choice unless
        ``tta`` is set), and after a presence head's gate where the model has one (no pixel
        above the frame's presence probability; in classifier mode a frame the head calls
        absent, under 0.5, has a map of 0): ``predict(image)`` is
        ``ultraseg.postprocess.apply(predict_proba(image), predictor.postprocess)``."""
        return next(iter(self.predict_proba_many([image])))

    def predict(self, image: ImageLike, postprocess: PostprocessConfig | None = None
                ) -> np.ndarray:
        """A frame -> its mask (H, W) bool, thresholded and post-processed as the checkpoint
        says, or as ``postprocess`` says (its ``tta`` too, unless this predictor's is set)."""
        if postprocess is not None and postprocess != self.postprocess:
            return self.with_options(postprocess=postprocess).predict(image)
        return apply_postprocess(self.predict_proba(image), self.postprocess)

    def predict_proba_many(self, images: Iterable[ImageLike]
                           ) -> Generator[np.ndarray, None, None]:
        """Stream probabilities for many frames, batching frames of equal canvas size.

        ``images``: frames as :meth:`predict_proba` takes them, (H, W) or (H, W, C) arrays of
        any dtype it reads, or Pillow images; each may have its own size. Yields one float32
        (H, W) map in [0, 1] per frame, at that frame's own size, in the order given: the map
        :meth:`predict_proba` gives it, up to float rounding (about 1e-6: a network's kernels
        round a batch of several frames otherwise than one frame alone; ``batch_size=1``
        gives it bit for bit). One frame's map is yielded once its batch is done, so
        ``images`` may be a generator too long to hold.

        Memory that runs out on a frame's own pixels (its canvas made, its probabilities
        restored to its size) raises :class:`FrameOutOfMemory` naming the frame's place;
        running out on the network's batch raises as it came. One image given alone (an
        (H, W) or (H, W, C) array, a Pillow image, a path) is refused when called: use
        :meth:`predict_proba` for it."""
        _refuse_a_lone_image(images)
        return self._proba_many(images)

    def _proba_many(self, images: Iterable[ImageLike]) -> Generator[np.ndarray, None, None]:
        pending: list[tuple[np.ndarray, Geometry, int]] = []
        for index, image in enumerate(images):
            if isinstance(image, (str, os.PathLike)):
                raise UltrasegError(f"expected an image array, got the path {str(image)!r}: "
                                    "read the file with ultraseg.read_image(path), or give "
                                    "paths to write_predictions / measure_frames")
            if isinstance(image, Image.Image):      # decoded as read_image decodes a file
                image = pillow_to_gray(image, getattr(image, "filename", None) or None)
            image = np.asarray(image)
            if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
                raise UltrasegError(f"expected a 2D image, got an array of shape {image.shape}")
            canvas, geom = _frame_sized(lambda: prepare(image, self.preprocess), index,
                                        image.shape)
            if pending and canvas.shape != pending[0][0].shape:
                yield from self._flush(pending)
                pending = []
            pending.append((canvas, geom, index))
            if len(pending) >= self.batch_size:    # full: out now, not when the next arrives
                yield from self._flush(pending)
                pending = []
        if pending:
            yield from self._flush(pending)

    def tta_from_plain(self, images: Iterable[np.ndarray], plain: Iterable[np.ndarray]
                       ) -> Iterator[np.ndarray]:
        """Test-time-augmented probabilities for frames whose plain ones (this predictor's,
        TTA off) are known: only the mirrored pass runs, half of what ``tta=True`` costs. The
        numbers are the same, since restoring a canvas to its frame is linear.

        ``images``: the frames, as :meth:`predict_proba_many` takes them; ``plain``: their
        float32 (H, W) maps in the same order, each at its frame's size (a different count
        raises ValueError). Yields one float32 (H, W) map in [0, 1] per frame, in that order:
        the mean of its plain map and its mirrored pass's."""
        mirrored = self.with_options(mirror=True).predict_proba_many(images)
        for p, q in zip(plain, mirrored, strict=True):
            yield 0.5 * (p + q)

    def _flush(self, pending: list[tuple[np.ndarray, Geometry, int]]) -> Iterator[np.ndarray]:
        probs = self.proba_canvas(np.stack([c for c, _, _ in pending]))
        for prob, (_, geom, index) in zip(probs, pending):
            yield _frame_sized(lambda: restore(prob, geom), index, (geom.height, geom.width))

    def with_options(self, **changes: Any) -> "Predictor":
        """A copy with other options (``batch_size``, ``tile``, ``tta``, ``postprocess``,
        ``mirror``); another name is a user error, as in :func:`load`."""
        check_options(changes)
        return replace(self, **changes)


def _refuse_a_lone_image(images: Any) -> None:
    """A user error where ``images``, given for many frames, is one image: iterating it gave
    an (H, W, 3) frame's rows as H frames, and an (H, W) one's as 1D arrays refused as such."""
    what = None
    if isinstance(images, (str, bytes, os.PathLike)):
        what = f"the path {os.fsdecode(images)!r}: read it with ultraseg.read_image(path)"
    elif isinstance(images, Image.Image):
        what = "a Pillow image"
    else:
        shape = getattr(images, "shape", None)     # an array, a torch tensor
        if shape is not None and (len(shape) == 2 or (len(shape) == 3 and 1 <= shape[-1] <= 4)):
            what = f"one image of shape {tuple(shape)}"
    if what is not None:
        raise UltrasegError(f"predict_proba_many takes an iterable of frames, got {what}; "
                            "for one frame use predict_proba(image), or pass [image]")


def as_predictor(model: Predictor | str | Path) -> Predictor:
    """``model`` itself where it is a :class:`Predictor`, else loaded from its path (a
    checkpoint or an ``.onnx`` file); anything else is a user error naming what it got."""
    if isinstance(model, Predictor):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load(model)
    raise UltrasegError(f"expected a Predictor (ultraseg.load(PATH)) or a model's path, got "
                        f"{type(model).__name__}")


#: The options :func:`load` takes (those of :meth:`Predictor.with_options`).
LOAD_OPTIONS = ("batch_size", "tile", "tta", "postprocess", "mirror")


def check_options(options: dict[str, Any]) -> None:
    """Refuse a name among ``options`` that is none of :data:`LOAD_OPTIONS`, listing them (a
    post-processing setting, ``threshold``, pointed to ``postprocess``)."""
    unknown = sorted(set(options) - set(LOAD_OPTIONS))
    if not unknown:
        return
    pp = [n for n in unknown if n in PostprocessConfig.__dataclass_fields__]
    hint = (f" ({', '.join(pp)}: the post-processing's, postprocess=dataclasses.replace("
            f"predictor.postprocess, {pp[0]}=...))" if pp else "")
    raise UltrasegError(f"unknown predictor option(s) {', '.join(unknown)}; valid: "
                        f"{', '.join(LOAD_OPTIONS)}{hint}")


def load(path: str | Path, device: str = "auto", precision: str = "auto",
         threads: int | None = None, **options: Any) -> Predictor:
    """A :class:`Predictor` from a checkpoint (``.ckpt``) or an exported ``.onnx`` file.

    ``device``/``precision`` apply to checkpoints (torch); ``options`` are the options of
    :meth:`Predictor.with_options` (``batch_size``, ``tile``, ``tta``, ``postprocess``:
    another threshold or rules than the checkpoint's, ``mirror``); another name is a user
    error. A setting that does not apply (a GPU or bf16 for an ONNX model, which runs on ONNX
    Runtime's CPU provider in fp32; a ``tile`` for a model that predicts each frame whole) is
    warned about, not dropped in silence.

    ``threads``: an ONNX model's ONNX Runtime threads, which its session takes when it is made
    (default one per core; at least 1). A checkpoint runs on torch's threads, which are the
    process's: set them around the calls with :func:`ultraseg.runtime.threads` (``threads``
    here is warned about and not applied). An ONNX model's ``threads`` above the cores this
    process may use is logged as a warning, as train's and the CLI's ``--threads`` are
    (:func:`ultraseg.shared.warn_if_oversubscribed`), naming ``threads=``; not refused.

    An ``.onnx`` model imports ONNX Runtime with ``ORT_DISABLE_TELEMETRY=1`` set in
    ``os.environ`` where it is unset, and leaves it set (the process's children inherit it):
    its wheels start telemetry on import, and a tool run on patients' images sends nothing
    anywhere (:data:`ultraseg.export.TELEMETRY_SWITCH`).
    """
    return open_model(path, device, precision, threads, cli=False, **options)


def open_model(path: str | Path, device: str, precision: str, threads: int | None,
               cli: bool, **options: Any) -> Predictor:
    """:func:`load`, its warning of too many ``threads`` naming them as its caller gave them:
    ``--threads`` for the CLI's (``cli``, with load's ``threads=`` beside it), else
    ``threads=``."""
    # 1.0 reached ONNX Runtime, whose refusal was blamed on the file; "2" a raw TypeError;
    # 0 or -1 ONNX Runtime took as its default (np.int64(2) is 2)
    threads = whole_number("threads", threads, none_ok=True)
    check_options(options)
    # (the file's own post-processing is the builders'; a caller's replaces it after)
    later = {"postprocess": options.pop("postprocess")} if "postprocess" in options else {}
    path = as_path(path, "load", what="a model file")
    if path.suffix.lower() == ".onnx":
        from .export import onnx_predictor

        if device not in ("auto", "cpu") or precision not in ("auto", "fp32"):
            log.warning("device %r / precision %r apply to checkpoints; the ONNX model %s runs "
                        "on ONNX Runtime's CPU provider in fp32", device, precision, path.name)
        from .shared import warn_if_oversubscribed

        warn_if_oversubscribed(threads, "--threads" if cli else "threads=",
                               "load(..., threads=)" if cli else "")
        predictor = onnx_predictor(path, threads=threads, **options)
    else:
        from .runtime import torch_predictor

        if threads is not None:
            log.warning("threads apply to an ONNX model's session; a checkpoint runs on "
                        "torch's threads, the calling thread's: use ultraseg.runtime.threads(%d) "
                        "around the calls", threads)
        predictor = torch_predictor(path, device=device, precision=precision, **options)
    if options.get("tile") is not None and predictor.model.variant != "valid":
        log.warning("tile (--tile) applies to the valid model; this %s model predicts each "
                    "frame whole", predictor.model.variant)
    elif options.get("tile") is not None:   # (export rounds a graph's tile so, and says so too)
        rounded = tile_rounding(predictor.tile, predictor.model.depth, "tile (--tile)")
        if rounded:
            log.warning("%s", rounded)
    return predictor.with_options(**later) if later else predictor
