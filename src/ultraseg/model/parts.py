"""U-Net building blocks (after milesial/Pytorch-UNet ``unet_parts.py``).

Three small blocks make the whole network: :class:`DoubleConv` (two 3x3 convolutions,
optionally with a residual shortcut), :class:`Down` (2x2 max-pool, then a DoubleConv) and
:class:`Up` (2x2 transposed convolution, concatenation with the cropped skip connection, then
a DoubleConv), whose skip connection can pass an :class:`AttentionGate` first.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def center_crop(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The central ``h`` x ``w`` window of ``t`` (N, C, H, W) -> (N, C, h, w).

    When ``H - h`` is odd the extra row goes to the bottom (the crop starts at ``(H - h) // 2``).

    Crops by negative padding, not slicing: the same values, but the gradient comes back in
    ``t``'s memory format. (Slicing's backward builds a contiguous zero tensor, so with
    channels_last activations each skip's gradient met the pooling path's in mixed layouts:
    11 % of a width-64 training step on CPU.) Exports to ONNX as a Pad with negative pads.
    """
    big_h, big_w = t.shape[-2], t.shape[-1]
    if h > big_h or w > big_w:
        raise ValueError(f"cannot crop {big_h}x{big_w} to a larger {h}x{w}")
    top = (big_h - h) // 2
    left = (big_w - w) // 2
    return F.pad(t, (-left, left + w - big_w, -top, top + h - big_h))


class InstanceNorm(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` with a learned scale and shift, fed channels_last maps through a
    contiguous copy: torch's CPU kernel views its input as (1, N * C, H, W), which channels_last
    memory cannot be viewed as, and its fallback is slower than the two copies (a width-16
    training step at 192 px, batch 8: 296 against 233 ms; with batch norm 190). Same values,
    same state as ``nn.InstanceNorm2d``; the output keeps the input's memory format."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
                memory_format=torch.channels_last):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


#: The normalisation layers a DoubleConv can put after each convolution (``ModelConfig.norm``).
NORMS = {
    "batch": nn.BatchNorm2d,
    "instance": InstanceNorm,
}


class DoubleConv(nn.Module):
    """(conv 3x3 -> [norm] -> ReLU) x 2, or with ``residual`` the residual block of He et al.
    (2016): conv -> [norm] -> ReLU -> conv -> [norm], plus the input (centre-cropped to the
    output's size, through a 1x1 convolution [and norm] where the channels differ), -> ReLU.

    Args:
        in_ch: input channels.
        out_ch: output channels (of both convolutions).
        padding: 0 for the original unpadded ("valid") U-Net, which shrinks H and W by 4;
            1 keeps H and W.
        norm: None, or a key of :data:`NORMS` ('batch', 'instance'): put that normalisation
            after each convolution (the convolutions then have no bias).
        residual: add the shortcut (nnU-Net's residual encoder uses such blocks).

    Shapes: (N, in_ch, H, W) -> (N, out_ch, H - 4 + 4 * padding, W - 4 + 4 * padding).
    """

    def __init__(self, in_ch: int, out_ch: int, padding: int = 0, norm: str | None = None,
                 residual: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in in (in_ch, out_ch):
            conv = nn.Conv2d(c_in, out_ch, kernel_size=3, padding=padding, bias=norm is None)
            layers.append(conv)
            if norm is not None:
                layers.append(NORMS[norm](out_ch))
            layers.append(nn.ReLU(inplace=True))
        self.residual = residual
        if residual:  # the last ReLU comes after the sum
            layers.pop()
            self.shortcut: nn.Module = nn.Identity()
            if in_ch != out_ch:
                proj: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 1, bias=norm is None)]
                if norm is not None:
                    proj.append(NORMS[norm](out_ch))
                self.shortcut = nn.Sequential(*proj)
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if not self.residual:
            return y
        if x.shape[-2:] != y.shape[-2:]:  # unpadded convolutions: the input's centre
            x = center_crop(x, y.shape[-2], y.shape[-1])
        return F.relu(y + self.shortcut(x))


class Down(nn.Module):
    """2x2 max-pool (stride 2), then :class:`DoubleConv`.

    Shapes: (N, in_ch, H, W) -> (N, out_ch, H/2 - 4 + 4 * padding, ...). H and W must be even
    (the network checks this before running).
    """

    def __init__(self, in_ch: int, out_ch: int, padding: int = 0, norm: str | None = None,
                 residual: bool = False) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv = DoubleConv(in_ch, out_ch, padding, norm, residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class AttentionGate(nn.Module):
    """The additive attention gate of Attention U-Net (Oktay et al., MIDL 2018), as MONAI's
    ``AttentionUnet`` places it: the skip connection's features times a weight in (0, 1) per
    pixel, computed from them and from the decoder's up-converted features at the same pixel::

        a = sigmoid(psi(relu(W_skip(skip) + W_up(up))))     # (N, 1, H, W)
        out = skip * a

    ``W_skip`` and ``W_up`` are 1x1 convolutions to ``inter_ch`` channels (each followed by
    ``norm`` when given), ``psi`` a 1x1 convolution to one channel. The decoder can so pass on
    the skip's features where the coarser level says the structure is and damp them
    elsewhere (the paper's aim: fewer false structures in cluttered backgrounds).

    Shapes: skip (N, skip_ch, H, W), up (N, up_ch, H, W) -> (N, skip_ch, H, W).
    """

    def __init__(self, skip_ch: int, up_ch: int, inter_ch: int, norm: str | None = None
                 ) -> None:
        super().__init__()

        def project(c_in: int) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(c_in, inter_ch, 1, bias=norm is None)]
            if norm is not None:
                layers.append(NORMS[norm](inter_ch))
            return nn.Sequential(*layers)

        self.w_skip = project(skip_ch)
        self.w_up = project(up_ch)
        self.psi = nn.Conv2d(inter_ch, 1, kernel_size=1)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.psi(F.relu(self.w_skip(skip) + self.w_up(up))))
        return skip * a


class Up(nn.Module):
    """2x2 transposed convolution (stride 2) halving the channels, concatenation with the
    centre-cropped skip connection ``[skip, up]``, then :class:`DoubleConv`. With
    ``attention`` the cropped skip passes an :class:`AttentionGate` (gated by the
    up-converted features, ``in_ch // 4`` intermediate channels) before the concatenation.

    Args:
        in_ch: channels of the lower-resolution input; the skip must have ``in_ch // 2``.
        out_ch: output channels.

    Shapes: x (N, in_ch, h, w), skip (N, in_ch // 2, H, W) with H >= 2h, W >= 2w
    -> (N, out_ch, 2h - 4 + 4 * padding, 2w - 4 + 4 * padding).
    """

    def __init__(self, in_ch: int, out_ch: int, padding: int = 0, norm: str | None = None,
                 attention: bool = False) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, kernel_size=2, stride=2)
        self.gate = (AttentionGate(in_ch // 2, in_ch // 2, max(1, in_ch // 4), norm)
                     if attention else None)
        self.conv = DoubleConv(in_ch, out_ch, padding, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        skip = center_crop(skip, x.shape[-2], x.shape[-1])
        if self.gate is not None:
            skip = self.gate(skip, x)
        return self.conv(torch.cat([skip, x], dim=1))
