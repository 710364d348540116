"""Export a checkpoint to ONNX, and predict from the exported file without PyTorch.

The graph takes ``image`` (N, 1, H, W) float32 -- the prepared canvas, as
:func:`ultraseg.preprocess.prepare` makes it -- and returns ``probability`` (N, 1, h, w)
float32: the sigmoid is part of the graph.

* ``same`` model: batch, height and width are dynamic (height and width multiples of
  ``2 ** depth``; :class:`~ultraseg.predict.Predictor` pads to them). The torch.export-based
  exporter's graph refuses other sizes; the TorchScript exporter's (opset 17 and lower, or
  the fallback) takes them and returns an output cropped to the multiple below, without a
  word: its axes are named ``height_multiple_of_N``, the metadata's ``multiple_of_enforced``
  says which, and :func:`export_onnx` warns.
* ``valid`` model: the batch is dynamic, the input is one fixed tile of
  ``output_tile + 2 * context_margin(depth)`` pixels -- the tile a checkpoint predicts its
  working canvas with (:func:`~ultraseg.predict.prediction_tile` of ``preprocess.size``). The
  numpy overlap-tiler runs tiles around it. Where frames keep their own resolution
  (``preprocess.size`` None) the checkpoint predicts each frame in one window of its own size,
  which no fixed graph can; the graph then takes ``model.tile``, and the tiler starts every
  tile on the pooling grid, so the tiles give that one window's values.

The checkpoint's metadata (model, preprocessing, post-processing, label, measurement) travels
in the ONNX model's ``metadata_props`` under the key ``"ultraseg"`` (JSON), with an ``onnx``
section describing the graph, so an ``.onnx`` file describes itself as a checkpoint does. That
section also states the rules of the steps around the graph that the settings do not
(:func:`pipeline_rules`), for a program that runs the graph without ultraseg (README,
"Using the .onnx without ultraseg").

:func:`onnx_predictor` imports onnxruntime only -- never torch.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import stat
import sys
import warnings
from pathlib import Path, PurePath
from typing import Any, Iterator

import numpy as np

from . import __version__
from .config import (ModelConfig, PostprocessConfig, PreprocessConfig, UnknownSettings,
                     whole_number)
from .errors import CheckpointError, UltrasegError, install_extra
from .fileio import as_path, hash_file, json_text, parse_json
from .geometry import context_margin, same_padded_size
from .logs import caught_warnings, quiet
from .predict import (Predictor, prediction_tile, round_tile, tile_rounding,
                      warn_if_saved_during_training)
from .preprocess import CROP_BORDER_TOLERANCE

log = logging.getLogger(__name__)

META_KEY = "ultraseg"
INPUT_NAME = "image"
OUTPUT_NAME = "probability"

#: Open a model's external data file without waiting (a named pipe would block the open).
_NO_WAIT = getattr(os, "O_NONBLOCK", 0)


def _import_error(e: ImportError, module: str) -> UltrasegError:
    """What to tell a user whose ``import module`` failed: to install it where it is missing;
    where it is installed but fails to import (a build against another NumPy), why, since
    the install command would only answer 'Requirement already satisfied'."""
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == module:
        return UltrasegError(f"ONNX support is not installed: {install_extra('onnx')}")
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return UltrasegError(f"{module} is installed but cannot be imported ({first})")


def export_tile(model: ModelConfig, preprocess: PreprocessConfig, tile: int | None = None
                ) -> int:
    """Output tile side a valid model is exported with (see the module docstring).

    ``tile`` (>= 1) overrides the choice. It is rounded up, as prediction rounds its tile
    (:func:`~ultraseg.predict.round_tile`), to a valid output side of the model's depth of at
    least :func:`~ultraseg.predict.min_prediction_tile` (narrower windows cannot start on the
    pooling grid, and the graph would predict other values than the checkpoint), and a tile
    rounded is warned of, as load warns of it; it is not capped at the canvas: the graph's
    side is the caller's to choose, and a larger one still predicts the same values.
    """
    tile = whole_number("tile", tile, none_ok=True)
    if tile is not None:
        rounded = tile_rounding(tile, model.depth, "--tile")
        if rounded:
            log.warning("%s", rounded)
        return round_tile(tile, model.depth)
    if preprocess.size is None:
        return model.tile
    return prediction_tile(model, preprocess.size, preprocess.size)


def export_onnx(checkpoint_path: str | Path, onnx_path: str | Path, opset: int | None = None,
                tile: int | None = None, verify: bool = True) -> Path:
    """Export a checkpoint to an ONNX file (written atomically) and return its path.

    ``opset``: ONNX opset (default: the exporter's). ``tile``: valid model only, output tile
    side of the fixed-size graph (default: :func:`export_tile`). ``verify``: run the exported
    graph on ONNX Runtime once and check it matches PyTorch (max difference 1e-4).

    The exporter prints its progress on stdout, which is silenced while it runs; stdout is the
    process's, so another thread's output in those seconds is silenced too (export before
    starting such threads, or in a process of its own). Its warnings are caught under the
    lock all of ultraseg's ``catch_warnings`` blocks share (:func:`ultraseg.logs.caught_warnings`:
    Python's warning filters are the process's), so another thread's image reads wait for the
    export to end (seconds).
    With ``verify`` (ONNX Runtime imported), ``ORT_DISABLE_TELEMETRY=1`` is set in
    ``os.environ`` where it is unset, and stays set (the process's children inherit it): ONNX
    Runtime's wheels start telemetry on import, and a tool run on patients' images sends
    nothing anywhere (:data:`TELEMETRY_SWITCH`).
    """
    # before torch is imported: "20" reached a comparison with an int (a raw TypeError), and
    # opset "17" ran both exporters before it was blamed
    # (np.int64(20) is 20; a tile below 1 is refused on any model, before the variant
    # decides its use)
    tile = whole_number("tile", tile, none_ok=True)
    opset = whole_number("opset", opset, none_ok=True)
    as_path(checkpoint_path, "export_onnx", what="a checkpoint")
    onnx_path = as_path(onnx_path, "export_onnx", what="an .onnx file")

    import torch

    from .checkpoint import build_from_checkpoint, load_checkpoint
    from .fileio import atomic_write_bytes
    from .runtime import autocast_off

    if Path(checkpoint_path).suffix.lower() == ".onnx":
        raise UltrasegError("already an ONNX file; export takes a checkpoint (best.ckpt)",
                            checkpoint_path)
    if onnx_path.suffix.lower() != ".onnx":
        raise UltrasegError("the ONNX file's name must end in .onnx (predict, evaluate and "
                            "measure tell an ONNX model by it)", onnx_path)
    if not onnx_path.parent.is_dir():
        raise UltrasegError("cannot write the ONNX file: its folder does not exist", onnx_path)
    try:
        import onnx
    except ImportError as e:
        raise _import_error(e, "onnx") from e
    ckpt = load_checkpoint(checkpoint_path)
    warn_if_saved_during_training(ckpt.meta, checkpoint_path)
    net = build_from_checkpoint(ckpt, checkpoint_path)
    cfg, depth = ckpt.model, ckpt.model.depth
    if cfg.variant == "valid":
        out_tile = export_tile(cfg, ckpt.preprocess, tile)
        side = out_tile + 2 * context_margin(depth)
        example_hw = (side, side)
        graph: dict[str, Any] = {"dynamic_hw": False, "input_tile": side, "output_tile": out_tile}
    else:
        if tile is not None:
            log.info("--tile ignored: a 'same' model is exported with dynamic height and width")
        s = same_padded_size(ckpt.preprocess.size or 64, depth)
        example_hw = (s, s)
        graph = {"dynamic_hw": True, "input_tile": None, "output_tile": None,
                 "multiple_of": 2**depth}
    model = _with_sigmoid(net).eval()
    example = torch.zeros(2, 1, *example_hw, dtype=torch.float32)
    # (a caller's autocast block would put bf16 casts in the graph: exported in fp32)
    with torch.no_grad(), autocast_off(torch.device("cpu")):
        proto, exporter = _export(model, example, cfg.variant == "same", 2**depth, opset)
    if graph["dynamic_hw"]:     # whether the graph itself refuses other heights and widths
        graph["multiple_of_enforced"] = exporter == "dynamo"
    # the settings as this build read them, not as the checkpoint stored them: an older
    # build's lack settings added since (the README's segment() reads them), and some builds
    # wrote fill_outlines: false, which the builds before it refuse; the version of the build
    # that trained the model is kept beside this build's
    meta = {**_without_paths(ckpt.meta), "ultraseg_version": __version__,
            **({"trained_with_version": ckpt.meta["ultraseg_version"]}
               if "ultraseg_version" in ckpt.meta else {}),
            "model": cfg.to_dict(), "preprocess": ckpt.preprocess.to_dict(),
            "postprocess": ckpt.postprocess.to_dict()}
    _strip_node_metadata(proto)
    meta["onnx"] = {"input": INPUT_NAME, "output": OUTPUT_NAME, "exporter": exporter,
                    "opset": _opset_of(proto), **graph,    # (no file name: often a patient's)
                    **pipeline_rules(cfg)}
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json_text(meta)   # strict: NaN figures are null
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if verify:  # a second, non-square size and batch check the dynamic axes
        h, w = example_hw
        _verify(data, model, [(2, 1, h, w)] + ([(3, 1, h, w + 2**depth)] if graph["dynamic_hw"]
                                              else [(3, 1, h, w)]))
    try:
        atomic_write_bytes(onnx_path, data)
    except OSError as e:
        raise UltrasegError(f"cannot write the ONNX file ({e.strerror or e})", onnx_path) from e
    log.info("exported %s -> %s (%s exporter, opset %s, %s)", checkpoint_path, onnx_path,
             exporter, meta["onnx"]["opset"],
             "dynamic H x W" if graph["dynamic_hw"] else f"tile {graph['input_tile']}")
    if graph.get("multiple_of_enforced") is False:
        log.warning("%s: the TorchScript exporter's graph takes any height and width and, "
                    "without an error, returns a smaller output for one that is not a "
                    "multiple of %d (ultraseg pads frames to it; a program of your own must "
                    "too); export at opset 18 or later (the default) for a graph that refuses "
                    "them", onnx_path, 2**depth)
    return onnx_path


def pipeline_rules(model: ModelConfig) -> dict[str, Any]:
    """The rules of ultraseg's steps around the graph that the preprocessing and
    post-processing settings leave unsaid, for the export's ``onnx`` section:
    ``crop_border_tolerance`` (grey levels within which an edge row or column is a band
    ``crop_border`` trims), ``resize`` (Pillow filters: the frame shrunk to the canvas by area
    averaging, enlarged bilinearly, the probabilities back bilinearly), ``zscore_over`` (the
    whole canvas, the square's black padding included), ``pad_mode`` (how the canvas is
    padded: a same model's bottom and right up to ``multiple_of``, a valid model's context
    around its tiles), ``tile_align`` (a valid model's tiles start on multiples of it) and
    ``connectivity`` (components 8-connected, holes 4-connected: the post-processing's)."""
    return {"crop_border_tolerance": CROP_BORDER_TOLERANCE,
            "resize": {"shrink": "box", "enlarge": "bilinear", "probability": "bilinear"},
            "zscore_over": "canvas", "pad_mode": "reflect",
            "tile_align": 2**model.depth if model.variant == "valid" else None,
            "connectivity": {"components": 8, "holes": 4}}


#: What the training report in a checkpoint's metrics names by path: left out of an export.
_REPORT_PATHS = ("dataset", "checkpoint")


def _without_paths(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's metadata for a model that is shared: without the run's config (its data
    and cache folders) and the paths the training report names (a dataset folder is often a
    patient's name or record number); the figures stay."""
    out = {k: v for k, v in meta.items() if k != "run"}
    metrics = out.get("metrics")
    if isinstance(metrics, dict) and isinstance(metrics.get("report"), dict):
        out["metrics"] = {**metrics, "report": {k: v for k, v in metrics["report"].items()
                                                if k not in _REPORT_PATHS}}
    return out


def _strip_node_metadata(proto: Any) -> None:
    """Drop what the exporter records about each node (the source file and line it came
    from, the install's folders among them): nothing the model needs to run."""
    graphs = [proto.graph, *(f for f in getattr(proto, "functions", []))]
    for g in graphs:
        for node in g.node:
            del node.metadata_props[:]
            node.doc_string = ""
        if hasattr(g, "doc_string"):
            g.doc_string = ""


def _with_sigmoid(net: Any) -> Any:
    """The U-Net followed by its sigmoid, so the graph outputs probabilities."""
    import torch

    class WithSigmoid(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.net(image))

    return WithSigmoid(net)


def _export(model: Any, example: Any, dynamic_hw: bool, multiple: int, opset: int | None
            ) -> tuple[Any, str]:
    """(ModelProto, exporter name): the torch.export-based exporter, else the TorchScript one."""
    import torch

    try:
        batch = torch.export.Dim("batch", min=1)
        dims: dict[int, Any] = {0: batch}
        if dynamic_hw:
            dims[2] = multiple * torch.export.Dim("h", min=1)
            dims[3] = multiple * torch.export.Dim("w", min=1)
        # the exporter prints progress to stdout and logs chatter: keep both out of the way
        # (redirect_stdout swaps the process's sys.stdout: another thread's prints during an
        # export are lost too)
        with caught_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_logs():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), None, dynamo=True, verbose=False,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes={"image": dims}, opset_version=opset,
                                        external_data=False)
        got = _opset_of(program.model_proto)
        if opset is None or got == opset:
            return program.model_proto, "dynamo"
        # it raises an opset below its own minimum (18) and cannot always convert down
        log.info("the torch.export-based exporter wrote opset %s, not %s; using the "
                 "TorchScript exporter", got, opset)
    except Exception as e:  # older torch, or a graph torch.export cannot take
        _reraise_interrupt(e)
        log.warning("torch.export-based ONNX export failed (%s); using the TorchScript "
                    "exporter", str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
    import onnx

    # it cannot require the multiple: the axes' names say it
    axes = ({0: "batch", 2: f"height_multiple_of_{multiple}", 3: f"width_multiple_of_{multiple}"}
            if dynamic_hw else {0: "batch"})
    buf = io.BytesIO()
    try:
        # on failure torch's C++ side dumps its whole graph to file descriptor 1
        with caught_warnings(), _stdout_fd_silenced():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), buf, dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset or 17,
                              dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})
    except Exception as e:
        _reraise_interrupt(e)
        if opset is None:
            raise
        raise UltrasegError(f"cannot export at opset {opset} "
                            f"({(str(e).splitlines() or [type(e).__name__])[0][:160]})") from e
    proto = onnx.load_from_string(buf.getvalue())
    if opset is not None and _opset_of(proto) != opset:
        raise UltrasegError(f"cannot export at opset {opset}: the exporter wrote opset "
                            f"{_opset_of(proto)}")
    return proto, "torchscript"


@contextlib.contextmanager
def _quiet_logs(names: tuple[str, ...] = ("torch.onnx", "onnxscript", "onnx_ir")
                ) -> Iterator[None]:
    """Raise the exporter's loggers to ERROR inside the block; their levels are restored
    when the last block open on them ends (:func:`ultraseg.logs.quiet`: two exports in two
    threads may end in either order)."""
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(quiet(name, logging.ERROR))
        yield


def _reraise_interrupt(error: BaseException) -> None:
    """Ctrl-C inside torch's exporters comes out wrapped in their errors (a RuntimeError
    caused by the KeyboardInterrupt): raised as what it is, not taken for a failed export."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            raise e
        seen.add(id(e))
        e = e.__cause__ or e.__context__


@contextlib.contextmanager
def _stdout_fd_silenced() -> Iterator[None]:
    """Send what is written to file descriptor 1 inside the block to /dev/null: output that
    C++ code writes there directly, which ``contextlib.redirect_stdout`` cannot catch."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):   # no descriptor 1 (or no sys.stdout)
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _opset_of(proto: Any) -> int | None:
    for op in proto.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return None


def _verify(data: bytes, model: Any, shapes: list[tuple[int, int, int, int]]) -> None:
    """Run the serialized graph on ONNX Runtime and compare with PyTorch on random input."""
    import torch

    from .runtime import autocast_off

    sess = _session(data)
    rng = np.random.default_rng(0)
    for shape in shapes:
        x = rng.random(shape, dtype=np.float32)
        got = sess.run(None, {INPUT_NAME: x})[0]
        with torch.no_grad(), autocast_off(torch.device("cpu")):
            want = model(torch.from_numpy(x)).numpy()
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        if not diff <= 1e-4:
            raise UltrasegError(f"the exported graph disagrees with PyTorch on a {shape} input "
                                f"(max difference {diff:g}, output {got.shape} vs "
                                f"{want.shape}); ONNX export failed")
        log.info("ONNX Runtime matches PyTorch on a %s batch (max diff %.2g)", shape, diff)


# ---------------------------------------------------------------------------- prediction
#: The environment variable with which ONNX Runtime's official wheels skip their telemetry.
TELEMETRY_SWITCH = "ORT_DISABLE_TELEMETRY"


def _onnxruntime() -> Any:
    """ONNX Runtime, imported with its telemetry off. From 1.32 its Linux and macOS wheels
    (Windows' for longer) start telemetry on import: a device id and an event store under
    ``~/.cache/Microsoft/DeveloperTools``, events sent to Microsoft's collector, and a
    coloured warning on stderr where the home folder cannot be written. A tool run on
    patients' images sends nothing anywhere: ``ORT_DISABLE_TELEMETRY=1`` is set unless the
    environment already sets it (too late where the caller imported onnxruntime first)."""
    os.environ.setdefault(TELEMETRY_SWITCH, "1")
    try:
        import onnxruntime
    except ImportError as e:
        raise _import_error(e, "onnxruntime") from e
    return onnxruntime


def read_onnx_meta(session: Any, path: str | Path) -> dict[str, Any]:
    """The ``ultraseg`` metadata of an ONNX Runtime session's model (CheckpointError if absent)."""
    props = session.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise CheckpointError("not an ultraseg export: the ONNX file carries no 'ultraseg' "
                              "metadata (export it with `ultraseg export`)", path)
    try:
        meta = parse_json(props[META_KEY])
        if not isinstance(meta, dict) or not isinstance(meta.get("onnx"), dict):
            raise ValueError("no 'onnx' section")
        return meta
    except ValueError as e:
        raise CheckpointError(f"damaged ultraseg metadata in the ONNX file ({e})", path) from e


def check_graph_depth(model: ModelConfig, graph: dict[str, Any]) -> None:
    """Raise ValueError where, on a 'same' model, the metadata's model depth disagrees with
    the graph's ``multiple_of`` (2**depth, what frames are padded to): depth 20 on a depth-2
    graph padded frames to 2**20 pixels (4 TiB). (A depth out of bounds, 1000, which failed
    inside numpy, is refused as the metadata's ModelConfig is built.)"""
    step = graph.get("multiple_of")
    if model.variant == "same" and step != 2**model.depth:
        raise ValueError(f"model.depth {model.depth} does not fit the graph's multiple_of "
                         f"{step!r}, which is 2**depth")


def _session(model: str | bytes, providers: list[str] | None = None,
             threads: int | None = None) -> Any:
    """An ONNX Runtime session of a graph, from its file's name or its bytes: how export
    checks the graph it made (bytes) and how :func:`onnx_predictor` loads a file.
    ``threads``: its intra-op threads (default ONNX Runtime's: one per core)."""
    ort = _onnxruntime()
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: ONNX Runtime's warnings go to stderr otherwise
    if threads is not None:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(model, so, providers=providers or ["CPUExecutionProvider"])


def _model_source(path: Path, data: bytes) -> str | bytes:
    """What ONNX Runtime opens ``path`` (whose contents are ``data``) from: its name, where
    the name's UTF-8 text is its bytes on disk; else ``data``. ONNX Runtime takes a name as
    UTF-8 text only: a folder named in Latin-1 (an old NAS, a Windows zip), or any non-ASCII
    name where Python's file system encoding is ASCII (``LC_ALL=C``), reaches it as text with
    surrogate escapes, which it refuses. A session made from bytes keeps them while it lives:
    one more copy of the model in memory (megabytes for ultraseg's models), hence only where
    the name fails."""
    name = str(path)
    with contextlib.suppress(UnicodeEncodeError):
        if name.encode("utf-8") == os.fsencode(name):
            return name
    return data


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of an ONNX graph: its initializers and the tensors of its nodes'
    attributes, subgraphs (an If's branches, a Loop's body) included."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _tensors(g)


def _external_data(data: bytes, path: Path) -> list[tuple[str, Path]]:
    """The external data files (weights saved beside the graph, as onnx's
    ``save_as_external_data`` writes them) that the ONNX model ``data``, the file at ``path``,
    names, as (entry, path) pairs: each once, in the order of their names. ultraseg's own
    exports have none. Telling needs the onnx package; where only ONNX Runtime is installed
    (a deployment), a file that may name some is said to be hashed alone."""
    if b"location" not in data:     # (each reference names its file under that key)
        return []
    try:
        import onnx
    except ImportError:
        log.warning("%s may keep weights in files beside it, which cannot be told without the "
                    "onnx package: its recorded sha256 is of the .onnx file alone (pip install "
                    "onnx to cover them)", path.name)
        return []
    try:
        model = onnx.load_model_from_string(data)
    except Exception:   # (ONNX Runtime says what is wrong with the file)
        return []
    names = {entry.value for t in _tensors(model.graph)
             if t.data_location == onnx.TensorProto.EXTERNAL
             for entry in t.external_data if entry.key == "location"}
    return [(name, path.parent / name) for name in sorted(names)]


def _open_external(name: str, extra: Path, path: Path) -> Any:
    """The external data file ``extra`` (the entry ``name`` of the ONNX file at ``path``)
    opened for reading, where it is a plain file; else a CheckpointError naming both. The name
    is checked as ONNX Runtime checks it (no absolute path, no '..' part: refused before
    anything is opened); a link is followed wherever it leads (a blob store's layout, as the
    Hugging Face hub cache's), and what it leads to must be a plain file. Opened without
    waiting: a named pipe there blocked the load for ever, before ONNX Runtime's own check."""
    entry = PurePath(name)
    if entry.is_absolute() or ".." in entry.parts:
        raise CheckpointError(f"its external data entry {name!r} names a file outside the "
                              f"model's folder (an absolute path or a '..' part)", path)
    try:
        f = open(extra, "rb", opener=lambda p, flags: os.open(p, flags | _NO_WAIT))
    except OSError as e:
        raise CheckpointError(f"cannot read its external data file {name!r} "
                              f"({e.strerror or e})", path) from e
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise CheckpointError(f"its external data entry {name!r} is not a plain file "
                              f"(a named pipe, a device or a folder)", path)
    return f


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """What tells a file's version apart: the file (device, inode), its size and mtime."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _unchanged(f: Any, was: tuple[int, ...]) -> bool:
    """Whether the name the open file ``f`` was opened by still names it as it was (``was``,
    its :func:`_identity` when opened)."""
    try:
        return _identity(os.stat(f.name)) == was
    except OSError:     # removed
        return False


def onnx_predictor(path: str | Path, providers: list[str] | None = None,
                   threads: int | None = None, **options: Any) -> Predictor:
    """A :class:`~ultraseg.predict.Predictor` running an exported ``.onnx`` file on ONNX Runtime.

    Imports onnxruntime, never torch. ``providers``: ONNX Runtime execution providers
    (default CPU). ``threads``: the session's intra-op threads (default one per core; an
    ONNX Runtime session takes its threads when it is made). ``options``: Predictor fields
    (``batch_size``, ``tta``, ``postprocess``; a ``tile`` must equal the exported tile of a
    valid model). Its ``sha256`` is of the file as loaded, followed by its external data
    files (weights saved beside it) in the order of their names.
    """
    _onnxruntime()      # (one not installed is said before anything about the file)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("no such ONNX file", path)
    if path.stat().st_size == 0:
        raise CheckpointError("empty file (0 bytes), not an ONNX model", path)
    # the files held open while ONNX Runtime reads them by name, and hashed from what was
    # opened: one replaced or rewritten meanwhile is refused, never hashed for another
    with contextlib.ExitStack() as held:
        try:
            opened = [held.enter_context(open(path, "rb"))]
            data = opened[0].read()
        except OSError as e:
            raise CheckpointError(f"cannot read the ONNX file ({e.strerror or e})", path) from e
        for name, extra in _external_data(data, path):
            opened.append(held.enter_context(_open_external(name, extra, path)))
        was = [_identity(os.fstat(f.fileno())) for f in opened]
        try:
            sess = _session(_model_source(path, data), providers, threads)
        except Exception as e:  # InvalidProtobuf, Fail, NoSuchFile, ... from the C++ side
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"ONNX Runtime cannot load this file ({first[:160]})",
                                  path) from e
        if not all(map(_unchanged, opened, was)):
            raise CheckpointError("changed while it was loaded (replaced or rewritten, or its "
                                  "external data): load it again", path)
        digest = hashlib.sha256(data)
        for f in opened[1:]:
            hash_file(digest, f)
    meta = read_onnx_meta(sess, path)
    warn_if_saved_during_training(meta, path)
    graph = meta["onnx"]
    try:    # each section refuses its ranges when built (a size of 200000: a 160 GB canvas)
        model = ModelConfig.from_dict(meta["model"])
        preprocess = PreprocessConfig.from_dict(meta["preprocess"])
        postprocess = PostprocessConfig.from_dict(meta["postprocess"])
        check_graph_depth(model, graph)
    except UnknownSettings as e:     # a setting added since this ultraseg: as load_checkpoint
        raise e.in_file(meta, path) from e
    except Exception as e:
        raise CheckpointError(f"damaged ultraseg metadata in the ONNX file ({e})", path) from e
    inputs = sess.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise CheckpointError("not an ultraseg export: expected one (N, 1, H, W) input", path)
    name = inputs[0].name
    if model.variant == "valid":      # one fixed tile: the graph's input says which
        side = inputs[0].shape[2]
        out_tile = graph.get("output_tile")
        if (not isinstance(out_tile, int) or isinstance(out_tile, bool)
                or side != out_tile + 2 * context_margin(model.depth)):
            raise CheckpointError(f"damaged ultraseg metadata in the ONNX file (output_tile "
                                  f"{out_tile!r} does not fit the graph's input of {side} px)",
                                  path)
        options["fixed_tile"] = out_tile
        if options.get("tile") is None:
            options["tile"] = out_tile

    def run_batch(batch: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    provider = sess.get_providers()[0]
    runtime = {"onnxruntime_version": _onnxruntime().__version__,
               "device": "cpu" if provider == "CPUExecutionProvider" else provider,
               "precision": "fp32"}
    return Predictor(run_batch, model, preprocess, postprocess, meta, source=str(path),
                     sha256=digest.hexdigest(), runtime=runtime, **options)
