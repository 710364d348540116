"""Torch execution details shared by training and prediction: device, precision, the runner."""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import platform
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .config import DEVICE_NAME, DEVICE_NAMES
from .errors import UltrasegError
from .shared import while_held

log = logging.getLogger(__name__)



def mps_available() -> bool:
    """Whether torch runs on Apple's MPS (Metal) here: a Mac's Apple-silicon GPU."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device = "auto",
                   asked_by: str = "--device; in Python, device=",
                   in_python: str = "device='cpu'") -> torch.device:
    """'auto' -> cuda when available, else cpu (never mps: asked for by name alone). 'cuda'
    without a GPU, or 'mps' without Apple's MPS, is a usage error (its message says it was
    asked for by ``asked_by``, and that ``--device cpu``, in Python ``in_python``, runs on
    the CPU); a torch.device is taken by its name, and anything but a name is one too."""
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise UltrasegError(f"device must be a name ({DEVICE_NAMES}), got {name!r}")
    if not DEVICE_NAME.fullmatch(name):         # 'cudax', 'cuda:-1': the name, on any machine
        raise UltrasegError(f"unknown device {name!r}; valid: {DEVICE_NAMES}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:         # 'cuda:007', an index past 64 bits
        raise UltrasegError(f"unknown device {name!r}; valid: {DEVICE_NAMES}") from e
    way_out = f"--device cpu runs on the CPU (in Python, {in_python})"
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UltrasegError(f"device {name} asked for (by {asked_by}), but no CUDA GPU is "
                            f"available: {way_out}")
    if name == "mps":
        if not mps_available():
            raise UltrasegError(f"device mps asked for (by {asked_by}), but Apple's MPS is not "
                                "available here (a Mac with Apple silicon, macOS 12.3 or "
                                f"later, and a PyTorch built with it): {way_out}")
        return device
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise UltrasegError(f"--device {name} asked for, but this machine has "
                            f"{torch.cuda.device_count()} CUDA GPU(s): cuda:0 .. "
                            f"cuda:{torch.cuda.device_count() - 1}")
    return device


def _x86_cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively: on x86, AVX512-BF16 or AMX; elsewhere (Arm),
    where oneDNN runs bf16 convolutions.

    oneDNN also runs bf16 on AVX-512 CPUs without either (Skylake, Cascade Lake), emulated:
    there a 3x3 convolution measured 66 GFLOP/s in bf16 against 218 in fp32, so such a CPU
    counts as without bf16 and ``auto`` precision stays fp32 on it.
    """
    try:
        if not (torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
    except (AttributeError, RuntimeError):
        return False
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    probes = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(probe) for probe in probes):
        return any(probe() for probe in probes)
    return bool(_x86_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_avx512() -> bool:
    """True when this CPU has AVX-512 (x86; what oneDNN's fastest fp32 kernels run on)."""
    probe = getattr(torch.cpu, "_is_avx512_supported", None)
    if callable(probe):
        return bool(probe())
    return "avx512f" in _x86_cpu_flags()


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for 'auto' | 'fp32' | 'bf16' (None = plain fp32), as
    :func:`precision_name` decides it, with a warning where bf16 is asked for on ``device``
    without native support.

    'auto' picks bf16 on a GPU that supports it and on a CPU with native bf16, else fp32.
    """
    if precision_name(precision, device) == "fp32":
        return None
    if precision == "bf16" and not _native_bf16(device):
        log.warning("bf16 requested but not supported natively on %s; it will be slow (emulated): "
                    "--precision auto or fp32 is faster here", device)
    return torch.bfloat16


def _native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (an MPS GPU counts as without: its bf16
    autocast is untested here, so 'auto' keeps it in fp32)."""
    if device.type == "mps":
        return False
    if device.type == "cuda":
        # native bf16 from compute capability 8.0 (Ampere); torch's is_bf16_supported() also
        # says yes for older GPUs that only emulate it, slowly, and asks the current device
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return cpu_has_bf16()


def precision_name(precision: str, device: torch.device) -> str:
    """What ``precision`` ('auto' | 'fp32' | 'bf16') runs as on ``device``, 'bf16' or 'fp32'
    (:func:`resolve_precision`'s one rule; config.json's 'resolved' records it)."""
    if precision == "fp32":
        return "fp32"
    if precision not in ("auto", "bf16"):
        raise UltrasegError(f"unknown precision {precision!r}; valid: auto, fp32, bf16")
    return "bf16" if precision == "bf16" or _native_bf16(device) else "fp32"


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Inside the block, ``device``'s work under autocast ``dtype`` (bf16); with None in plain
    fp32, autocast off (:func:`autocast_off`), whatever a caller has open around ultraseg."""
    if dtype is None:
        return autocast_off(device)
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def autocast_off(device: torch.device) -> Iterator[None]:
    """Autocast off inside the block on ``device`` and on the CPU (where ultraseg's own sums
    run beside a GPU's work), the caller's back after: a caller's ``torch.autocast`` block
    around ultraseg would otherwise run an fp32 run, predictor or export in its dtype, the
    precision config.json and a predictor's runtime record not the one used (bf16 work
    opens its own autocast inside, or runs on bf16 weights, :func:`torch_runner`)."""
    with contextlib.ExitStack() as stack:
        for kind in dict.fromkeys(("cpu", device.type)):
            stack.enter_context(torch.autocast(device_type=kind, enabled=False))
        yield


@functools.cache
def _count_per_thread() -> bool:
    """Whether torch's intra-op thread count is each thread's: where ATen runs on OpenMP
    (torch's wheels), torch.set_num_threads sets the calling thread's count, and the default
    a thread takes on its first torch call; elsewhere one count is the process's."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _set_new_threads_count(n: int) -> None:
    """Set the count threads take on their first torch call to ``n``, from a thread of its
    own: torch.set_num_threads sets the calling thread's too, which is not this one's to
    change."""
    setter = threading.Thread(target=torch.set_num_threads, args=(n,),
                              name="ultraseg-threads-default")
    setter.start()
    setter.join()


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block (None: as they are) and restore the
    caller's setting after. Where torch's count is each thread's (OpenMP, torch's wheels), a
    block sets its own thread's and puts it back in that thread when it ends, and the count
    new threads take (the last one set) is put back to the count the first block found when
    the last of the blocks open at once in several threads ends (restored in whichever
    thread ended last, a thread whose block ended first kept the block's count for good).
    Where the count is the process's, blocks open at once share it, each setting its own
    ``n`` as it opens, and the count the first found is put back when the last ends."""
    if not n:
        yield
        return
    if not _count_per_thread():
        with while_held("torch.num_threads", torch.get_num_threads, torch.set_num_threads):
            torch.set_num_threads(n)
            yield
        return
    mine = torch.get_num_threads()
    with while_held("torch.num_threads", torch.get_num_threads, _set_new_threads_count):
        try:
            torch.set_num_threads(n)
            yield
        finally:
            torch.set_num_threads(mine)


@contextlib.contextmanager
def cudnn_autotune(device: torch.device) -> Iterator[None]:
    """On a GPU, let cuDNN time its convolution algorithms for each new input shape and keep
    the fastest (``torch.backends.cudnn.benchmark``) inside the block, the caller's setting
    restored after; elsewhere nothing. Training and prediction run a few shapes many times,
    where the search pays at once; the price is that GPU results are not bit-for-bit
    repeatable between runs (cuDNN's choice may differ). Blocks of several threads (a
    predictor used in a thread pool) restore it when the last ends
    (:func:`ultraseg.shared.while_held`)."""
    if device.type != "cuda":
        yield
        return

    def turn_on() -> bool:
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        return before

    def restore(before: bool) -> None:
        torch.backends.cudnn.benchmark = before

    with while_held("cudnn.benchmark", turn_on, restore):
        yield


#: Layers whose weights autocast casts to the low-precision dtype on every call.
_LOW_PRECISION_LAYERS = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)


def low_precision_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``model`` whose convolution / linear layers hold their weights in ``dtype``.

    Fed ``dtype`` inputs it computes what ``torch.autocast(dtype=dtype)`` computes with the
    original -- autocast runs exactly these layers in ``dtype`` (fp32 accumulation) and the
    others (ReLU, pooling, concatenation, BatchNorm with its fp32 statistics) on their
    ``dtype`` inputs -- but casts no weights per call, and a predictor built from a checkpoint
    keeps 2 bytes per weight instead of 4 (+2 per call). The original is left as it was.
    """
    return lower_weights(copy.deepcopy(model), dtype)


def lower_weights(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` itself, its convolution / linear layers' weights put in ``dtype`` in place:
    :func:`low_precision_copy` without the copy."""
    for module in model.modules():
        if isinstance(module, _LOW_PRECISION_LAYERS):
            module.to(dtype)
    return model


@contextlib.contextmanager
def modes_kept(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within: ``model`` as it is; after: each of its modules back in the train/eval mode it
    had (a frozen BatchNorm in a training model too), for a public function that runs a
    caller's model through :func:`torch_runner`, which puts it in eval mode."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def torch_runner(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None,
                 compile: bool = False, copy_weights: bool = True
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a model as a numpy backend: (N, 1, h, w) float32 -> probabilities, float32.

    Runs in inference mode, autocast off (:func:`autocast_off`: a caller's autocast block
    changes nothing; bf16 is the weights' copy's), channels_last (on a GPU with cuDNN's
    autotuning, :func:`cudnn_autotune`, from an input shape's second batch on). With a low-precision
    ``dtype`` (bf16) the backend holds its own copy of the weights in that dtype
    (:func:`low_precision_copy`), taken now: later changes to ``model`` do not reach it; make
    a new runner after training further.
    ``model`` itself is put in eval mode and channels_last on ``device``, weights unchanged;
    ``copy_weights=False`` lowers ``model``'s own weights instead of a copy's, for a model no
    one else uses (a predictor built from a checkpoint): one copy of the weights less to hold.
    A public function handed a caller's model runs this under :func:`modes_kept`.

    ``compile=True``: ``torch.compile`` with weight freezing (inductor; needs a C++ compiler
    on CPU): the same output, about 5 % faster per call on CPU once compiled, but each new
    input shape compiles again (seconds to a minute). Worth it for many frames of one size.
    The weights are then frozen into the compiled graph: a snapshot, whatever ``dtype``.
    """
    model = model.to(device).eval().to(memory_format=torch.channels_last)
    if dtype is None:
        net = model
    elif copy_weights:
        net = low_precision_copy(model, dtype)
    else:
        net = lower_weights(model, dtype)
    if compile:
        net = torch.compile(net, dynamic=False, options={"freezing": True})
    in_dtype = torch.float32 if dtype is None else dtype

    seen: set[tuple[int, ...]] = set()

    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
        x = x.to(in_dtype).contiguous(memory_format=torch.channels_last)
        # autotuned from a shape's second batch on: a folder of frames of many sizes (each
        # its own window) would otherwise pay cuDNN's search for every frame
        again = x.shape in seen
        seen.add(tuple(x.shape))
        with torch.inference_mode(), autocast_off(device), (
                cudnn_autotune(device) if again else contextlib.nullcontext()):
            prob = torch.sigmoid(net(x).float())
        return prob.cpu().numpy()

    return run


def torch_predictor(path: str | Path, device: str = "auto", precision: str = "auto",
                    **options: Any):
    """A :class:`~ultraseg.predict.Predictor` running a checkpoint with PyTorch."""
    from .checkpoint import build_from_checkpoint, load_checkpoint
    from .predict import Predictor, warn_if_saved_during_training

    ckpt = load_checkpoint(path, sha256=True)     # (the Predictor records it)
    warn_if_saved_during_training(ckpt.meta, path)
    model = build_from_checkpoint(ckpt, path)
    settings = ckpt.model, ckpt.preprocess, ckpt.postprocess, ckpt.meta
    sha256 = ckpt.sha256
    del ckpt     # its weights, now the model's, go once the runner has put them its own way
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    # the model is the runner's alone: its weights are lowered in place, not copied
    run = torch_runner(model, dev, dtype, copy_weights=False)
    del model
    runtime = {"torch_version": torch.__version__, "device": str(dev),
               "precision": "fp32" if dtype is None else "bf16"}
    return Predictor(run, *settings, source=str(path), sha256=sha256, runtime=runtime,
                     **options)
