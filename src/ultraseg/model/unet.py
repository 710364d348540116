"""The U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) and its size arithmetic.

Two variants, chosen by :attr:`ModelConfig.variant`:

* ``'valid'`` -- the paper's network: unpadded 3x3 convolutions, no batch norm. Every
  DoubleConv shrinks the map by 4 pixels, so the output is smaller than the input
  (252 -> 68 and 572 -> 388 at depth 4). Large images are segmented tile by tile with the
  overlap-tile strategy (:mod:`ultraseg.tiling`), each output tile seeing
  :func:`context_margin` pixels of context on every side.
* ``'same'`` -- padded convolutions with BatchNorm2d (or InstanceNorm2d: ``cfg.norm``); the
  output has the input's size, which must be a multiple of ``2 ** depth`` (see
  :func:`same_padded_size`).

The size helpers below are plain integer arithmetic (no torch), shared by the model, the
tiler, training and prediction.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UltrasegError
from ..shared import while_held
from .parts import NORMS, DoubleConv, Down, Up

VARIANTS: tuple[str, ...] = ("valid", "same")
PRESENCE_MODES: tuple[str, ...] = ("gate", "classifier", "detached")
BLOCKS: tuple[str, ...] = ("plain", "residual")

from ..geometry import (  # noqa: F401  (re-exported: the model's size arithmetic)
    _check_depth,
    context_margin,
    is_valid_input,
    nearest_valid_output,
    same_padded_size,
    valid_input_size,
    valid_output_size,
)


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

    With ``cfg.deep_supervision``, a model in training mode returns a tuple: the logits, then
    those of the half- and quarter-resolution heads (see :func:`aux_levels`); in eval mode
    (validation, prediction, export) the logits alone.

    With ``cfg.dropout`` above 0, the features of the deepest two encoder levels (the deepest
    skip and the bottleneck) pass one ``nn.Dropout``: dropped in training mode, untouched in
    eval mode.

    With ``cfg.presence_head``, a linear layer on the bottleneck's globally average- and
    max-pooled features gives each image a presence logit ``c``; every output's pixel logit
    ``l`` becomes the logit of sigmoid(l) * sigmoid(c) (see :func:`gate_logits`), in training
    and prediction alike, so the outputs keep their shapes and meaning; in training mode the
    model returns a :class:`PresenceOutput` (those outputs and ``c``), for the loss to score
    ``c`` too. With ``cfg.presence_mode == 'classifier'`` the outputs are not gated in
    training (the pixel loss scores the segmentation alone); outside training every pixel
    logit of a frame with ``c < 0`` (P(present) < 0.5) becomes :data:`ABSENT_LOGIT` (see
    :func:`drop_absent`). With ``'detached'`` the outputs are gated outside training, as in
    'gate'; in training they are not, and the :class:`PresenceOutput` also carries them gated
    over a detached copy: the decoder learns from its own logits alone, as without the head,
    and the gated pixel loss teaches the head (and the encoder below it) where the
    segmentation marks false structures.

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
        if cfg.deep_supervision and cfg.variant != "same":
            raise ValueError("deep supervision needs the 'same' variant (a valid U-Net's "
                             "coarser outputs do not line up with its cropped target)")
        if cfg.deep_supervision and cfg.depth < 2:
            raise ValueError("deep supervision needs depth 2 or more (its heads sit on the "
                             "decoder's half-resolution level, and at depth 3 or more also "
                             "its quarter-resolution one)")
        self.cfg = cfg
        if cfg.block not in BLOCKS:
            raise ValueError(f"unknown block {cfg.block!r}; valid: {list(BLOCKS)}")
        if cfg.norm not in NORMS:
            raise ValueError(f"unknown normalisation {cfg.norm!r}; valid: {list(NORMS)}")
        if cfg.norm != "batch" and cfg.variant != "same":
            raise ValueError(f"{cfg.norm} normalisation needs the 'same' variant (the paper's "
                             "valid U-Net has no normalisation)")
        # valid: the paper's network has no normalisation (the default 'batch' means none here)
        padding, norm = (0, None) if cfg.variant == "valid" else (1, cfg.norm)
        widths = [cfg.width * 2**level for level in range(cfg.depth + 1)]

        # Contracting path: one DoubleConv, then ``depth`` x (max-pool + DoubleConv).
        # block 'residual': the encoder's blocks add a shortcut; the decoder's stay plain.
        res = cfg.block == "residual"
        self.encoder = nn.ModuleList(
            [DoubleConv(cfg.in_channels, widths[0], padding, norm, res)]
            + [Down(widths[i], widths[i + 1], padding, norm, res) for i in range(cfg.depth)]
        )
        # Expansive path: ``depth`` x (up-conv + skip + DoubleConv), deepest first.
        self.decoder = nn.ModuleList(
            [Up(widths[i + 1], widths[i], padding, norm, cfg.attention)
             for i in reversed(range(cfg.depth))]
        )
        # the paper's dropout at the end of the contracting path: on the deepest two levels
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None
        self.head = nn.Conv2d(widths[0], cfg.out_channels, kernel_size=1)
        # Deep supervision: a 1x1 head on the decoder's 1/2 and 1/4 resolution levels.
        self.aux_heads = nn.ModuleList(
            [nn.Conv2d(widths[level], cfg.out_channels, kernel_size=1)
             for level in aux_levels(cfg)]
        )
        self.presence: nn.Linear | None = None
        if cfg.presence_mode not in PRESENCE_MODES:
            raise ValueError(f"unknown presence mode {cfg.presence_mode!r}; valid: "
                             f"{list(PRESENCE_MODES)}")
        if cfg.presence_head == "auto":
            raise ValueError("presence_head='auto' is decided by the training frames "
                             "(ultraseg.train.resolve_presence_head): build with True or False")
        if cfg.presence_head and cfg.variant != "same":
            raise ValueError("a presence head needs the 'same' variant (a valid U-Net sees a "
                             "frame tile by tile, so its head would judge each tile, and "
                             "prediction's tiles are larger than training's)")
        if cfg.presence_mode != "gate" and not cfg.presence_head:
            raise ValueError(f"presence mode {cfg.presence_mode!r} needs the presence head "
                             "(presence_head, --presence-head)")
        if cfg.presence_head:
            # skip_init draws no random numbers, so the other layers start as they would
            # without the head; zeros: P(present) = 0.5 for every frame at first
            self.presence = nn.utils.skip_init(nn.Linear, 2 * widths[-1], cfg.out_channels)
            nn.init.zeros_(self.presence.weight)
            nn.init.zeros_(self.presence.bias)
        self._init_weights()

    def _init_weights(self) -> None:
        """The paper's initialisation: Gaussian weights with std sqrt(2 / fan_in), zero bias.

        None on the meta device (a checkpoint's model, its weights assigned next): meta tensors
        hold no values, and drawing them imported torch._dynamo (about 1.8 s)."""
        if next(self.parameters()).is_meta:
            return
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

    def forward(self, x: torch.Tensor
                ) -> torch.Tensor | tuple[torch.Tensor, ...] | PresenceOutput:
        """(N, in_channels, H, W) float -> logits (N, out_channels, h, w); see the class doc.

        Outside training (prediction, export) always that one tensor. In training, with deep
        supervision, a tuple: the full-resolution logits, then the coarser levels' heads; with
        a presence head, a :class:`PresenceOutput` wrapping those outputs and the presence
        logits (:func:`ultraseg.losses.compute_loss` takes each form)."""
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_input_size(int(x.shape[-2]), int(x.shape[-1]))
        skips: list[torch.Tensor] = []
        for level, block in enumerate(self.encoder):  # contracting path, keeping every level
            x = block(x)
            if self.dropout is not None and level >= self.cfg.depth - 1:
                x = self.dropout(x)         # the deepest skip and the bottleneck, as the paper
            skips.append(x)
        x = skips.pop()                     # the bottom of the "U" is no skip
        presence = None
        if self.presence is not None:       # (N, out_channels): one logit per image and class
            presence = self.presence(torch.cat((x.mean((2, 3)), x.amax((2, 3))), dim=1))
        supervise = aux_levels(self.cfg) if self.training else ()
        coarse: dict[int, torch.Tensor] = {}  # only the levels supervised now: no extra memory
        for i, up in enumerate(self.decoder):  # expansive path, deepest skip first
            x = up(x, skips.pop())
            level = self.cfg.depth - 1 - i      # this output is at 1/2**level resolution
            if level in supervise:
                coarse[level] = x
        out = self.head(x)
        outs = (out, *[head(coarse[level]) for head, level in zip(self.aux_heads, supervise)])
        if presence is None:
            return outs if supervise else outs[0]
        mode, gated = self.cfg.presence_mode, None
        if mode == "detached" and self.training:
            # the segmentation's own logits for its loss; the gate over a detached copy, so
            # the gated pixel loss reaches the head (and the encoder below it) alone
            gated = tuple(gate_logits(o.detach(), presence) for o in outs)
            gated = gated if supervise else gated[0]
        elif mode in ("gate", "detached"):
            outs = tuple(gate_logits(o, presence) for o in outs)
        elif not self.training:                 # a classifier head, outside training
            outs = tuple(drop_absent(o, presence) for o in outs)
        result = outs if supervise else outs[0]
        return PresenceOutput(result, presence, gated) if self.training else result


class PresenceOutput(NamedTuple):
    """What a model with a presence head returns in training mode: its outputs, as without
    the head (gated in 'gate' mode), and the presence logits (N, out_channels), which the loss
    also scores against "the mask is not empty" (:func:`ultraseg.losses.compute_loss`). In
    'detached' mode also ``gated``: the outputs gated over a detached copy of the
    segmentation's logits, scored by the pixel loss too: a term that reaches the head and the
    encoder below it, not the decoder."""

    outputs: torch.Tensor | tuple[torch.Tensor, ...]
    presence: torch.Tensor
    gated: torch.Tensor | tuple[torch.Tensor, ...] | None = None


def gate_logits(logits: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """The logit of sigmoid(logits) * sigmoid(presence), computed stably in float32.

    ``logits`` (N, C, H, W) and ``presence`` (N, C). With l and c the two logits,
    logit(s(l) s(c)) = l + c - log(1 + e^l + e^c): close to l where c is large (the structure
    is there), and never above c, so negative (probability under 0.5) wherever c is.
    """
    pixel = logits.float()
    frame = presence.float()[:, :, None, None].expand_as(pixel)
    # logsumexp over a stack, not softplus(logaddexp(pixel, frame)): the TorchScript ONNX
    # exporter, export's fallback, has no logaddexp
    return pixel + frame - torch.logsumexp(
        torch.stack((pixel, frame, torch.zeros_like(pixel))), dim=0)


ABSENT_LOGIT = -1e4
"""The pixel logit of a frame a classifier-mode presence head calls absent (probability 0)."""


def drop_absent(logits: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """``logits`` (N, C, H, W), with every pixel of an image and class whose presence logit
    (``presence``, (N, C)) is below 0 set to :data:`ABSENT_LOGIT`; the others unchanged."""
    keep = presence[:, :, None, None] >= 0
    return torch.where(keep, logits, torch.full_like(logits, ABSENT_LOGIT))


def aux_levels(cfg: ModelConfig) -> tuple[int, ...]:
    """Decoder levels (1: half resolution, 2: quarter) with a deep-supervision head."""
    return tuple(range(1, min(3, cfg.depth))) if cfg.deep_supervision else ()


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
        # float32 whatever torch's default dtype the caller set: built and initialised in it
        # (built in float64 and cast, its initial weights were other draws than the CLI's);
        # the default is the process's: held for all threads building at once
        def to_float32() -> torch.dtype:
            previous = torch.get_default_dtype()
            torch.set_default_dtype(torch.float32)
            return previous

        with while_held("default dtype", to_float32, torch.set_default_dtype):
            return UNet(cfg)
    except ValueError as e:
        raise UltrasegError(f"bad model config: {e}") from e
