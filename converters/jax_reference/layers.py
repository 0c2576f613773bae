"""The Haiku library layers the official model is made of, as functions of a `Scope` and a module path:
same leaves, layouts and arithmetic as `hk.Linear`, `hk.LayerNorm`, `hk.Conv2D`, `hk.ConvNDTranspose`,
`hk.BatchNorm` (with its `ExponentialMovingAverage` state), `hk.Embed` and `hk.dropout`. Arrays are
channels-last, as in Haiku."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from .scope import Initializer, Scope

TRUNCATION_STDDEV = 0.87962566103423978
"""Standard deviation of a unit normal truncated to [-2, 2]; variance-scaling initialisers divide by it."""


def truncated_normal(stddev: float) -> Initializer:
    """`hk.initializers.TruncatedNormal(stddev)`: normal values cut at two standard deviations."""
    return lambda key, shape, dtype: stddev * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)


def variance_scaling(scale: float, fan_in_axes: int) -> Initializer:
    """`hk.initializers.VarianceScaling(scale)` (fan-in, truncated normal); the fan-in is the product of the
    weight's first `fan_in_axes` sizes (a Linear's input width, a convolution's window times channels)."""
    def init(key, shape, dtype):
        fan_in = math.prod(shape[:fan_in_axes])
        return truncated_normal(math.sqrt(scale / max(1, fan_in)) / TRUNCATION_STDDEV)(key, shape, dtype)
    return init


def zeros(_key, shape, dtype):
    return jnp.zeros(shape, dtype)


def ones(_key, shape, dtype):
    return jnp.ones(shape, dtype)


def linear(scope: Scope, module: str, x: jax.Array, width: int, w_init: Initializer | None = None,
           b_init: Initializer = zeros) -> jax.Array:
    """`hk.Linear`: x [..., C] @ w [C, width] + b [width]. Default weights TruncatedNormal(1/sqrt(C))."""
    channels = x.shape[-1]
    w = scope.param(module, "w", (channels, width), w_init or truncated_normal(1 / math.sqrt(channels)))
    b = scope.param(module, "b", (width,), b_init)
    return jnp.dot(x, w) + b


def layer_norm(scope: Scope, module: str, x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """`hk.LayerNorm` over the last axis with scale and offset [C]; biased variance."""
    scale = scope.param(module, "scale", x.shape[-1:], ones)
    offset = scope.param(module, "offset", x.shape[-1:], zeros)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    variance = jnp.var(x, axis=-1, keepdims=True)
    return (x - mean) * (scale * jax.lax.rsqrt(variance + eps)) + offset


def embed(scope: Scope, module: str, ids: jax.Array, vocab_size: int, width: int) -> tuple[jax.Array, jax.Array]:
    """`hk.Embed`: rows of `embeddings` [vocab_size, width]; returns (vectors [..., width], the table)."""
    table = scope.param(module, "embeddings", (vocab_size, width), truncated_normal(1.0))
    return jnp.take(table, ids, axis=0), table


def conv2d(scope: Scope, module: str, x: jax.Array, width: int, kernel: int, stride: int,
           with_bias: bool = True) -> jax.Array:
    """`hk.Conv2D` with 'SAME' padding (TensorFlow's: the odd pixel after): x [B,H,W,C], w [k,k,C,width].
    Default weights TruncatedNormal(1/sqrt(k*k*C)), as Haiku's convolutions."""
    w = scope.param(module, "w", (kernel, kernel, x.shape[-1], width),
                    truncated_normal(1 / math.sqrt(kernel * kernel * x.shape[-1])))
    out = jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out + scope.param(module, "b", (width,), zeros) if with_bias else out


def conv_transpose(scope: Scope, module: str, x: jax.Array, width: int, kernel: Sequence[int],
                   stride: Sequence[int]) -> jax.Array:
    """`hk.Conv2DTranspose` / `hk.Conv3DTranspose`, 'SAME': x [B,*S,C] -> [B,*(S*stride),width];
    w [*kernel, width, C] (output channels before input ones), b [width]. Default weights
    TruncatedNormal(1/sqrt(prod(kernel)*C)): Haiku's fan-in counts the input channels C here too."""
    spatial = "DHW"[-len(kernel):]
    w = scope.param(module, "w", (*kernel, width, x.shape[-1]),
                    truncated_normal(1 / math.sqrt(math.prod(kernel) * x.shape[-1])))
    out = jax.lax.conv_transpose(x, w, tuple(stride), "SAME",
                                 dimension_numbers=(f"N{spatial}C", f"{spatial}OI", f"N{spatial}C"))
    return out + scope.param(module, "b", (width,), zeros)


def max_pool_same(x: jax.Array, window: int, stride: int) -> jax.Array:
    """`hk.max_pool` over H and W of [B,H,W,C], 'SAME' (padding never wins: it is -inf)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), "SAME")


def update_moving_average(scope: Scope, module: str, value: jax.Array, decay: float) -> None:
    """One training step of `hk.ExponentialMovingAverage` (zero-debiased), state `counter` [] int32, `hidden`
    and `average`: counter + 1, hidden * decay + value * (1 - decay), average = hidden / (1 - decay ** counter)."""
    counter = scope.get_state(module, "counter", (), jnp.int32) + 1
    hidden = scope.get_state(module, "hidden", value.shape) * decay + value * (1 - decay)
    scope.get_state(module, "average", value.shape)
    scope.set_state(module, "counter", counter)
    scope.set_state(module, "hidden", hidden)
    scope.set_state(module, "average", hidden / (1 - jnp.power(decay, counter.astype(value.dtype))))


def batch_norm(scope: Scope, module: str, x: jax.Array, decay: float = 0.9, eps: float = 1e-5) -> jax.Array:
    """`hk.BatchNorm` over every axis but channels, scale and offset [1,...,1,C]. Training normalises with
    the batch mean and biased variance E[x^2] - E[x]^2 and updates the `mean_ema` and `var_ema` states;
    evaluation uses their `average`."""
    stats_shape = (1,) * (x.ndim - 1) + x.shape[-1:]
    scale = scope.param(module, "scale", stats_shape, ones)
    offset = scope.param(module, "offset", stats_shape, zeros)
    if scope.training:
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axes, keepdims=True)
        variance = jnp.mean(jnp.square(x), axes, keepdims=True) - jnp.square(mean)
        update_moving_average(scope, f"{module}/~/mean_ema", mean, decay)
        update_moving_average(scope, f"{module}/~/var_ema", variance, decay)
    else:
        mean = scope.get_state(f"{module}/~/mean_ema", "average", stats_shape)
        variance = scope.get_state(f"{module}/~/var_ema", "average", stats_shape)
    return (x - mean) * (scale * jax.lax.rsqrt(variance + eps)) + offset


def dropout(scope: Scope, x: jax.Array, rate: float, what: str) -> jax.Array:
    """`hk.dropout` in training at a non-zero `rate` (kept values scaled by 1 / (1 - rate)); else x."""
    if not scope.training or rate == 0:
        return x
    keep = jax.random.bernoulli(scope.key(f"dropout of {what}"), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)
