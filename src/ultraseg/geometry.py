"""Size arithmetic of the U-Net (plain integers, no torch).

Shared by the model, the tiler, training and prediction -- including prediction from an
exported ONNX file, which runs without PyTorch.
"""
from __future__ import annotations

import math

# ---------------------------------------------------------------------------------------------
# Size arithmetic of the valid (unpadded) U-Net
# ---------------------------------------------------------------------------------------------
#
# With D = 2**depth and b the side of the bottom feature map (after its DoubleConv):
#   input  = D * b + 8 * D - 4        (each level: x -> x - 4, then /2 which must be exact)
#   output = D * b - 4 * D + 4        (each level: y -> 2 * y - 4)
#   margin = (input - output) / 2 = 6 * D - 4      (92 for depth 4)
# Every intermediate map must keep a side >= 1, which sets the smallest usable b.


def _check_depth(depth: int) -> None:
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")


def _trace_valid(in_size: int, depth: int) -> int | None:
    """Output side of the valid U-Net for an input side, or None when some map would be
    empty or some pooling would see an odd side."""
    size = in_size - 4
    if size < 1:
        return None
    for _ in range(depth):
        if size % 2:
            return None
        size = size // 2 - 4
        if size < 1:
            return None
    for _ in range(depth):
        size = 2 * size - 4
        if size < 1:
            return None
    return size


def _min_bottom(depth: int) -> int:
    """Smallest bottom-map side b for which every map of the valid U-Net is non-empty."""
    scale = 2**depth
    b = 1
    while _trace_valid(scale * b + 8 * scale - 4, depth) is None:
        b += 1
    return b


def _valid_input_from_bottom(b: int, depth: int) -> int:
    scale = 2**depth
    return scale * b + 8 * scale - 4


def _valid_output_from_bottom(b: int, depth: int) -> int:
    scale = 2**depth
    return scale * b - 4 * scale + 4


def is_valid_input(in_size: int, depth: int = 4) -> bool:
    """Whether the valid U-Net of this depth accepts an input side of ``in_size`` pixels."""
    _check_depth(depth)
    return _trace_valid(in_size, depth) is not None


def _nearest_valid_inputs(in_size: int, depth: int) -> list[int]:
    """The valid input sides just below (if any) and just above ``in_size``."""
    b_min = _min_bottom(depth)
    scale = 2**depth
    b_up = max(b_min, math.ceil((in_size - 8 * scale + 4) / scale))
    above = _valid_input_from_bottom(b_up, depth)
    below = _valid_input_from_bottom(b_up - 1, depth) if b_up - 1 >= b_min else None
    return [s for s in (below, above) if s is not None]


def valid_output_size(in_size: int, depth: int = 4) -> int:
    """Output side of the valid U-Net for an input side (572 -> 388, 252 -> 68 at depth 4).

    Raises:
        ValueError: ``in_size`` is not a valid input; the message names the nearest valid ones.
    """
    _check_depth(depth)
    out = _trace_valid(in_size, depth)
    if out is None:
        near = " or ".join(str(s) for s in _nearest_valid_inputs(in_size, depth))
        raise ValueError(
            f"input size {in_size} is not valid for the unpadded U-Net of depth {depth} "
            f"(a map would be empty or a 2x2 max-pool would see an odd side); "
            f"nearest valid input sizes: {near}"
        )
    return out


def nearest_valid_output(out_size: int, depth: int = 4) -> int:
    """Smallest valid output side >= ``out_size`` (valid outputs at depth 4: 4, 20, ..., 68,
    84, 100, ... in steps of 16)."""
    _check_depth(depth)
    scale = 2**depth
    b = max(_min_bottom(depth), math.ceil((out_size + 4 * scale - 4) / scale))
    return _valid_output_from_bottom(b, depth)


def largest_valid_output(at_most: int, depth: int = 4) -> int | None:
    """Largest valid output side <= ``at_most`` (None where even the smallest is larger)."""
    up = nearest_valid_output(at_most, depth)
    down = up if up <= at_most else up - 2**depth
    return down if down >= nearest_valid_output(1, depth) else None


def valid_input_size(out_size: int, depth: int = 4) -> int:
    """The input side that makes the valid U-Net output exactly ``out_size`` (68 -> 252).

    Raises:
        ValueError: no input gives that output; the message names the nearest valid outputs.
    """
    _check_depth(depth)
    scale = 2**depth
    b, rem = divmod(out_size + 4 * scale - 4, scale)
    if rem or b < _min_bottom(depth):
        up = nearest_valid_output(out_size, depth)
        down = largest_valid_output(out_size, depth)
        near = f"{down} or {up}" if down is not None else str(up)
        raise ValueError(
            f"output size {out_size} cannot be produced by the unpadded U-Net of depth {depth}; "
            f"nearest valid output sizes: {near} (they step by {scale})"
        )
    return _valid_input_from_bottom(b, depth)


def context_margin(depth: int = 4) -> int:
    """Pixels of context the valid U-Net consumes on each side: (input - output) / 2 (92 at
    depth 4)."""
    _check_depth(depth)
    return 6 * 2**depth - 4


def same_padded_size(size: int, depth: int = 4) -> int:
    """``size`` rounded up to a multiple of ``2 ** depth``: what the 'same' U-Net needs."""
    _check_depth(depth)
    scale = 2**depth
    return max(scale, math.ceil(size / scale) * scale)
