"""ultraseg: U-Net segmentation of 2D ultrasound images.

The Python API. Importing ``ultraseg`` is cheap: every name below is imported on first use,
so predicting from an exported ``.onnx`` file never imports PyTorch.

Example:
    >>> import ultraseg
    >>> predictor = ultraseg.load("run/best.ckpt")   # a checkpoint, or an exported model.onnx
    >>> image = ultraseg.read_image("frame.png")     # 2D numpy array (H, W) uint8, any size
    >>> mask = predictor.predict(image)              # bool (H, W), post-processed as trained
    >>> prob = predictor.predict_proba(image)        # float32 (H, W), probabilities in [0, 1]

Training and evaluation are stages with modules of their own:
``from ultraseg.train import train`` and ``from ultraseg.evaluate import evaluate``. Every
module is also an attribute, imported on first use (``ultraseg.postprocess.apply``). A run's
config is a preset with the data and any changes merged in:
``ultraseg.merge(ultraseg.preset("cpu"), {"data": {"path": "DATA"}})``.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what ``__getattr__`` serves, for type checkers; the same as _API (tested)
    from .config import ModelConfig, PostprocessConfig, PreprocessConfig, RunConfig, merge, preset
    from .errors import UltrasegError
    from .export import export_onnx
    from .io import open_dataset, read_image
    from .predict import Predictor, load
    from .frames import collect_frames
    from .measure_files import measure_frames
    from .predict_files import write_predictions

__version__ = "0.1.0"

#: Public name -> (module, attribute), imported on first access.
_API: dict[str, tuple[str, str]] = {
    "load": ("predict", "load"),
    "Predictor": ("predict", "Predictor"),
    "export_onnx": ("export", "export_onnx"),
    "collect_frames": ("frames", "collect_frames"),
    "write_predictions": ("predict_files", "write_predictions"),
    "measure_frames": ("measure_files", "measure_frames"),
    "open_dataset": ("io", "open_dataset"),
    "read_image": ("io", "read_image"),
    "preset": ("config", "preset"),
    "merge": ("config", "merge"),
    "RunConfig": ("config", "RunConfig"),
    "ModelConfig": ("config", "ModelConfig"),
    "PreprocessConfig": ("config", "PreprocessConfig"),
    "PostprocessConfig": ("config", "PostprocessConfig"),
    "UltrasegError": ("errors", "UltrasegError"),
}

#: Written out so that type checkers can read it; the same names as _API (tested).
__all__ = [
    "__version__",
    "load",
    "Predictor",
    "export_onnx",
    "collect_frames",
    "write_predictions",
    "measure_frames",
    "open_dataset",
    "read_image",
    "preset",
    "merge",
    "RunConfig",
    "ModelConfig",
    "PreprocessConfig",
    "PostprocessConfig",
    "UltrasegError",
]


def _submodules() -> set[str]:
    """The package's public modules and subpackages (``config``, ``postprocess``, ``io``, ...),
    read from its folder without importing any of them; ``__main__`` and ``_private`` excluded."""
    return {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attr = _API[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value  # bound once; later lookups skip __getattr__
        return value
    if name in _submodules():  # ``ultraseg.config.…`` after a plain ``import ultraseg``
        return importlib.import_module(f".{name}", __name__)  # which binds it here
    raise AttributeError(f"module 'ultraseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API) | _submodules())
