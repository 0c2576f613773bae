"""Convolutional pieces of the official image processors: TensorFlow 'SAME' padding, Haiku's BatchNorm,
the `Conv2DDownsample` stem and the transposed-convolution upsamplers. Tensors here are channels-first."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow/XLA 'SAME' padding of one axis: (low, high), the extra pixel going high."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pads the last two axes of x [..., H, W] as 'SAME' would for this kernel and stride."""
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if not (top or bottom or left or right):
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class BatchNorm(nn.Module):
    """`hk.BatchNorm` over NCHW with Haiku's state (official `batchnorm` with `mean_ema` and `var_ema`).

    Buffers mirror Haiku's ExponentialMovingAverage leaves one for one: `{mean,var}_average` (used in
    eval mode), `{mean,var}_hidden` (the zero-debias accumulator) and `{mean,var}_counter`. Training mode
    normalises with the batch mean and biased variance E[x^2] - E[x]^2 and updates the averages as Haiku:
    hidden = hidden * decay + value * (1 - decay), average = hidden / (1 - decay ** counter).
    """

    def __init__(self, num_channels: int, decay: float = 0.9, eps: float = 1e-5):
        super().__init__()
        self.decay = decay
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        for statistic, initial in (("mean", 0.0), ("var", 1.0)):
            self.register_buffer(f"{statistic}_average", torch.full((num_channels,), initial))
            self.register_buffer(f"{statistic}_hidden", torch.zeros(num_channels))
            self.register_buffer(f"{statistic}_counter", torch.zeros((), dtype=torch.int32))

    def _update(self, statistic: str, value: torch.Tensor) -> None:
        counter = getattr(self, f"{statistic}_counter")
        hidden = getattr(self, f"{statistic}_hidden")
        counter += 1
        hidden.mul_(self.decay).add_(value.to(hidden.dtype) * (1 - self.decay))
        getattr(self, f"{statistic}_average").copy_(hidden / (1 - self.decay ** counter.item()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean = x.mean(dim=(0, 2, 3))
            var = (x * x).mean(dim=(0, 2, 3)) - mean * mean
            with torch.no_grad():
                self._update("mean", mean)
                self._update("var", var)
        else:
            mean, var = self.mean_average, self.var_average
        scale = self.weight * torch.rsqrt(var + self.eps)
        return (x - mean[:, None, None]) * scale[:, None, None] + self.bias[:, None, None]


class Conv2DDownsampleLayer(nn.Module):
    """Conv 7x7 stride 2 'SAME' without bias -> BatchNorm -> ReLU -> max-pool 3x3 stride 2 'SAME'
    (padded with -inf): [B,Cin,H,W] -> [B,C,ceil(H/4),ceil(W/4)]."""

    def __init__(self, in_channels: int, num_channels: int, use_batchnorm: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_channels, kernel_size=7, stride=2, bias=False)
        self.batchnorm = BatchNorm(num_channels) if use_batchnorm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(pad_same(x, 7, 2))
        if self.batchnorm is not None:
            x = self.batchnorm(x)
        x = F.relu(x)
        return F.max_pool2d(pad_same(x, 3, 2, value=-math.inf), kernel_size=3, stride=2)


class Conv2DDownsample(nn.Sequential):
    """Official `Conv2DDownsample`: `num_layers` downsampling layers, each dividing H and W by 4."""

    def __init__(self, num_layers: int, in_channels: int = 3, num_channels: int = 64, use_batchnorm: bool = True):
        super().__init__(
            *(
                Conv2DDownsampleLayer(in_channels if index == 0 else num_channels, num_channels, use_batchnorm)
                for index in range(num_layers)
            )
        )


def transposed_conv_same_padding(kernel: int, stride: int) -> tuple[int, int]:
    """Padding (before, after) of the stride-dilated input in a 'SAME' transposed convolution, as
    `jax.lax.conv_transpose` computes it (so an input of n gives n * stride)."""
    total = kernel + stride - 2
    before = kernel - 1 if stride > kernel - 1 else math.ceil(total / 2)
    return before, total - before


class HaikuConvTranspose(nn.Module):
    """`hk.Conv2DTranspose` / `hk.Conv3DTranspose` with 'SAME' padding over NC... tensors: [B,Cin,*S] ->
    [B,Cout,*(S * stride)]. The weight is PyTorch's layout; the padding is JAX's (asymmetric when the stride
    is 1), obtained by cropping an unpadded transposed convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        conv = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[len(kernel)]
        self.conv = conv(in_channels, out_channels, tuple(kernel), tuple(stride))
        self.crops = [
            (k - 1 - before, k - 1 - after)
            for k, s in zip(kernel, stride)
            for before, after in [transposed_conv_same_padding(k, s)]
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        for axis, (start, end) in enumerate(self.crops, start=2):
            out = out.narrow(axis, start, out.shape[axis] - start - end)
        return out


class Conv2DUpsample(nn.Module):
    """Official `Conv2DUpsample`: two 4x4 stride-2 'SAME' transposed convolutions (`transp_conv_1` to
    2 * n_outputs channels, ReLU, `transp_conv_2` to n_outputs): [B,C,H,W] -> [B,n_outputs,4H,4W]."""

    def __init__(self, in_channels: int, n_outputs: int):
        super().__init__()
        self.transp_conv_1 = HaikuConvTranspose(in_channels, 2 * n_outputs, (4, 4), (2, 2))
        self.transp_conv_2 = HaikuConvTranspose(2 * n_outputs, n_outputs, (4, 4), (2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transp_conv_2(F.relu(self.transp_conv_1(x)))


class Conv3DUpsample(nn.Module):
    """Official `Conv3DUpsample`: max(n_time_upsamples, n_space_upsamples) 4x4x4 'SAME' transposed
    convolutions, each doubling time (for the first n_time_upsamples) and space (for the first
    n_space_upsamples), channels n_outputs * 2^(n-1-i), ReLU between: [B,C,T,H,W] -> [B,n_outputs,...]."""

    def __init__(self, in_channels: int, n_outputs: int, n_time_upsamples: int = 2, n_space_upsamples: int = 4):
        super().__init__()
        count = max(n_time_upsamples, n_space_upsamples)
        layers = []
        for index in range(count):
            time_stride = 2 if index < n_time_upsamples else 1
            space_stride = 2 if index < n_space_upsamples else 1
            channels = n_outputs * 2 ** (count - 1 - index)
            layers.append(HaikuConvTranspose(in_channels, channels, (4, 4, 4), (time_stride, space_stride, space_stride)))
            in_channels = channels
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x
