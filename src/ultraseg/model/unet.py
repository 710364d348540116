"""The U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) and its size arithmetic.

Two variants, chosen by :attr:`ModelConfig.variant`:

* ``'valid'`` -- the paper's network: unpadded 3x3 convolutions, no batch norm. Every
  DoubleConv shrinks the map by 4 pixels, so the output is smaller than the input
  (252 -> 68 and 572 -> 388 at depth 4). Large images are segmented tile by tile with the
  overlap-tile strategy (:mod:`ultraseg.tiling`), each output tile seeing
  :func:`context_margin` pixels of context on every side.
* ``'same'`` -- padded convolutions with BatchNorm2d; the output has the input's size, which
  must be a multiple of ``2 ** depth`` (see :func:`same_padded_size`).

The size helpers below are plain integer arithmetic (no torch), shared by the model, the
tiler, training and prediction.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UltrasegError
from .parts import DoubleConv, Down, Up

VARIANTS: tuple[str, ...] = ("valid", "same")

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
        down = up - scale
        near = f"{down} or {up}" if down >= nearest_valid_output(1, depth) else str(up)
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


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``model``; works for models on the meta device."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


class UNet(nn.Module):
    """U-Net returning per-pixel LOGITS.

    Conceptually the network ends in a sigmoid (the probability that a pixel is foreground);
    ``forward`` stops before it so that the loss can use the numerically stable
    ``BCEWithLogits`` and prediction applies ``torch.sigmoid`` itself.

    Channels: ``in_channels -> width -> 2 width -> ... -> 2**depth width`` down the encoder and
    back up the decoder, then a 1x1 convolution to ``out_channels``. At width 64, depth 4 and
    variant 'valid' this is exactly the paper's network (1 -> 64 -> ... -> 1024, 31,030,593
    parameters with one input and one output channel).

    Args:
        cfg: the model configuration (variant, in_channels, out_channels, width, depth).

    Shapes:
        valid: (N, in_channels, H, W) -> (N, out_channels, h, w) with
            h = valid_output_size(H, depth) = H - 2 * context_margin(depth), same for w.
        same:  (N, in_channels, H, W) -> (N, out_channels, H, W), H and W multiples of 2**depth.
        Inputs in ``torch.channels_last`` memory format are accepted.

    Raises:
        ValueError: (in ``forward``) an input size the variant cannot take; the message says
            what to pad it to / the nearest valid sizes.

    Example:
        >>> net = UNet(ModelConfig(variant="valid", width=4))
        >>> net(torch.zeros(1, 1, 252, 252)).shape
        torch.Size([1, 1, 68, 68])
        >>> net = UNet(ModelConfig(variant="same", width=4, depth=3))
        >>> net(torch.zeros(2, 1, 64, 48)).shape
        torch.Size([2, 1, 64, 48])
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.variant not in VARIANTS:
            raise ValueError(f"unknown U-Net variant {cfg.variant!r}; valid: {list(VARIANTS)}")
        _check_depth(cfg.depth)
        for name in ("in_channels", "out_channels", "width"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
        self.cfg = cfg
        padding, batch_norm = (0, False) if cfg.variant == "valid" else (1, True)
        widths = [cfg.width * 2**level for level in range(cfg.depth + 1)]

        # Contracting path: one DoubleConv, then ``depth`` x (max-pool + DoubleConv).
        self.encoder = nn.ModuleList(
            [DoubleConv(cfg.in_channels, widths[0], padding, batch_norm)]
            + [Down(widths[i], widths[i + 1], padding, batch_norm) for i in range(cfg.depth)]
        )
        # Expansive path: ``depth`` x (up-conv + skip + DoubleConv), deepest first.
        self.decoder = nn.ModuleList(
            [Up(widths[i + 1], widths[i], padding, batch_norm) for i in reversed(range(cfg.depth))]
        )
        self.head = nn.Conv2d(widths[0], cfg.out_channels, kernel_size=1)
        self._init_weights()

    def _init_weights(self) -> None:
        """The paper's initialisation: Gaussian weights with std sqrt(2 / fan_in), zero bias."""
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                # A stride-2 2x2 up-convolution: each output pixel sees in_channels weights.
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.in_channels))
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            else:
                continue
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def margin(self) -> int:
        """Context pixels consumed on each side: :func:`context_margin` ('valid') or 0 ('same')."""
        return context_margin(self.cfg.depth) if self.cfg.variant == "valid" else 0

    def output_size(self, in_size: int) -> int:
        """Output side for an input side (raises ValueError if the variant cannot take it)."""
        if self.cfg.variant == "valid":
            return valid_output_size(in_size, self.cfg.depth)
        self._check_same(in_size, in_size)
        return in_size

    def _check_same(self, h: int, w: int) -> None:
        scale = 2**self.cfg.depth
        if h % scale or w % scale or h < scale or w < scale:
            raise ValueError(
                f"input size {h}x{w} is not a multiple of {scale} (2**depth, depth "
                f"{self.cfg.depth}); pad it to {same_padded_size(h, self.cfg.depth)}x"
                f"{same_padded_size(w, self.cfg.depth)}"
            )

    def check_input_size(self, h: int, w: int) -> None:
        """Raise ValueError when an H x W input does not fit this variant."""
        if self.cfg.variant == "valid":
            for side in (h, w):
                valid_output_size(side, self.cfg.depth)
        else:
            self._check_same(h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) float -> logits (N, out_channels, h, w); see the class doc."""
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_input_size(int(x.shape[-2]), int(x.shape[-1]))
        skips: list[torch.Tensor] = []
        for block in self.encoder:          # contracting path, keeping every level's features
            x = block(x)
            skips.append(x)
        x = skips.pop()                     # the bottom of the "U" is no skip
        for up in self.decoder:             # expansive path, deepest skip first
            x = up(x, skips.pop())
        return self.head(x)


def build_model(cfg: ModelConfig) -> UNet:
    """Build the U-Net a :class:`ModelConfig` describes.

    Raises:
        UltrasegError: unknown variant (the message lists the valid ones), or a 'valid' model
            whose ``tile`` is not a valid output size (the message names the nearest).
    """
    if cfg.variant not in VARIANTS:
        raise UltrasegError(
            f"unknown model variant {cfg.variant!r}; valid variants: {list(VARIANTS)}"
        )
    try:
        if cfg.variant == "valid":
            valid_input_size(cfg.tile, cfg.depth)
        return UNet(cfg)
    except ValueError as e:
        raise UltrasegError(f"bad model config: {e}") from e
