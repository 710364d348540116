"""The U-Net: building blocks (:mod:`.parts`), the network and its size arithmetic (:mod:`.unet`).

Variants are :class:`~ultraseg.config.ModelConfig` values ('valid' | 'same'), so
:func:`build_model` is all the "registry" needed.
"""
from __future__ import annotations

from .parts import DoubleConv, Down, Up, center_crop
from .unet import (
    VARIANTS,
    UNet,
    build_model,
    context_margin,
    count_parameters,
    is_valid_input,
    nearest_valid_output,
    same_padded_size,
    valid_input_size,
    valid_output_size,
)

__all__ = [
    "VARIANTS",
    "DoubleConv",
    "Down",
    "UNet",
    "Up",
    "build_model",
    "center_crop",
    "context_margin",
    "count_parameters",
    "is_valid_input",
    "nearest_valid_output",
    "same_padded_size",
    "valid_input_size",
    "valid_output_size",
]
