"""Convolutional pieces of the official image processors: TensorFlow 'SAME' padding, Haiku's BatchNorm and
the `Conv2DDownsample` stem. Tensors here are NCHW."""

from __future__ import annotations

import math

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
