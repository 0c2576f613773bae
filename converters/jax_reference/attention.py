"""Attention blocks and the encoder of the official `perceiver.py`, as functions of a `Scope`.

Official numerics (docs/official-numerics.md#attention-numerics): logits of each head scaled by
1/sqrt(qk head width), masked logits replaced by -1e30 (-1e4 in float16), softmax over keys, heads joined
head-major; a query whose keys are all masked gets zeros before the output projection. The MLP's GELU is
the tanh approximation (`jax.nn.gelu`'s default).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from perceiver_io.configs import EncoderConfig
from perceiver_io.errors import ConfigError

from .layers import dropout, layer_norm, linear, truncated_normal, variance_scaling
from .scope import Scope, numbered


def outer_mask(query_mask: jax.Array, key_mask: jax.Array) -> jax.Array:
    """[B,Tq] and [B,Tk] (nonzero = valid) -> bool [B,Tq,Tk]."""
    return (query_mask != 0)[:, :, None] & (key_mask != 0)[:, None, :]


def _heads(x: jax.Array, num_heads: int, what: str) -> jax.Array:
    """[B,T,C] -> [B,T,H,C/H]: head h holds channels [h*C/H, (h+1)*C/H)."""
    batch, tokens, channels = x.shape
    if channels % num_heads:
        raise ConfigError(f"{what} width {channels} is not divisible by {num_heads} heads")
    return x.reshape(batch, tokens, num_heads, channels // num_heads)


def attention_weights_and_values(q, k, v, mask) -> jax.Array:
    """q, k [B,T,H,Dqk], v [B,Tk,H,Dv], mask [B,Tq,Tk] or None -> [B,Tq,H*Dv]. (The official attention's
    dropout of the weights is left out: no official module sets a non-zero rate for it.)"""
    batch, num_queries, num_heads, qk_width = q.shape
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (1.0 / math.sqrt(qk_width))
    if mask is not None:
        fill = -1e4 if logits.dtype == jnp.float16 else -1e30
        logits = jnp.where(mask[:, None], logits, jnp.asarray(fill, logits.dtype))
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, num_queries, -1)
    if mask is not None:
        out = jnp.where(jnp.any(mask, axis=-1, keepdims=True), out, jnp.zeros_like(out))
    return out


def attention(scope: Scope, module: str, queries, keys_values, *, num_heads: int, qk_channels: int,
              v_channels: int, output_channels: int, mask=None) -> jax.Array:
    """The official `Attention`: Linears `linear` (q), `linear_1` (k), `linear_2` (v), `linear_3` (out)."""
    init = variance_scaling(1.0, 1)
    q = linear(scope, f"{module}/linear", queries, qk_channels, init)
    k = linear(scope, f"{module}/linear_1", keys_values, qk_channels, init)
    v = linear(scope, f"{module}/linear_2", keys_values, v_channels, init)
    mixed = attention_weights_and_values(_heads(q, num_heads, "qk"), _heads(k, num_heads, "qk"),
                                         _heads(v, num_heads, "v"), mask)
    return linear(scope, f"{module}/linear_3", mixed, output_channels, init)


def mlp(scope: Scope, module: str, x: jax.Array, widening_factor: int, dropout_prob: float) -> jax.Array:
    """The official `MLP`: `linear` to widening_factor * C, tanh-GELU, `linear_1` back to C, dropout."""
    init = variance_scaling(1.0, 1)
    hidden = jax.nn.gelu(linear(scope, f"{module}/linear", x, widening_factor * x.shape[-1], init), approximate=True)
    return dropout(scope, linear(scope, f"{module}/linear_1", hidden, x.shape[-1], init), dropout_prob, module)


def self_attention(scope: Scope, module: str, x: jax.Array, *, num_heads: int, qk_channels: int | None,
                   v_channels: int | None, widening_factor: int, dropout_prob: float) -> jax.Array:
    """The official `SelfAttention`: x + Attention(LN(x)), then + MLP(LN_1(x)); [B,N,C] -> [B,N,C]."""
    normed = layer_norm(scope, f"{module}/layer_norm", x)
    qk = qk_channels or x.shape[-1]
    attended = attention(scope, f"{module}/attention", normed, normed, num_heads=num_heads, qk_channels=qk,
                         v_channels=v_channels or qk, output_channels=x.shape[-1])
    x = x + dropout(scope, attended, dropout_prob, f"{module}/attention")
    normed = layer_norm(scope, f"{module}/layer_norm_1", x)
    return x + mlp(scope, f"{module}/mlp", normed, widening_factor, dropout_prob)


def cross_attention(scope: Scope, module: str, queries, keys_values, *, num_heads: int, qk_channels: int | None,
                    v_channels: int | None, widening_factor: int, use_query_residual: bool,
                    shape_for_attn: str = "kv", dropout_prob: float = 0.0, mask=None) -> jax.Array:
    """The official `CrossAttention`: Attention(LN(q), LN_1(kv)) (plus q with the query residual), then
    + MLP(LN_2(x)); [B,Tq,Cq], [B,Tk,Ckv] -> [B,Tq,Cq]. The qk width defaults to kv's (or q's with
    `shape_for_attn='q'`), v's to qk's."""
    qk = qk_channels or (keys_values.shape[-1] if shape_for_attn == "kv" else queries.shape[-1])
    attended = attention(
        scope, f"{module}/attention",
        layer_norm(scope, f"{module}/layer_norm", queries), layer_norm(scope, f"{module}/layer_norm_1", keys_values),
        num_heads=num_heads, qk_channels=qk, v_channels=v_channels or qk, output_channels=queries.shape[-1], mask=mask)
    attended = dropout(scope, attended, dropout_prob, f"{module}/attention")
    x = queries + attended if use_query_residual else attended
    normed = layer_norm(scope, f"{module}/layer_norm_2", x)
    return x + mlp(scope, f"{module}/mlp", normed, widening_factor, dropout_prob)


def latents(scope: Scope, config: EncoderConfig, batch_size: int) -> jax.Array:
    """The encoder's trainable latent array `{name}/~/trainable_position_encoding` [N,C] over the batch."""
    table = scope.param(f"{config.name}/~/trainable_position_encoding", "pos_embs",
                        (config.z_index_dim, config.num_z_channels), truncated_normal(config.z_pos_enc_init_scale))
    return jnp.broadcast_to(table, (batch_size, *table.shape))


def encode(scope: Scope, config: EncoderConfig, inputs: jax.Array, query: jax.Array,
           input_mask: jax.Array | None = None) -> jax.Array:
    """The official `PerceiverEncoder`: the latents `query` [B,N,C] cross-attend once to `inputs` [B,M,Ci]
    (masked by `input_mask` [B,M]), then `num_blocks` passes through the `num_self_attends_per_block`
    self-attentions (weights shared across passes). Records each block's output. -> z [B,N,C]."""
    module = config.name
    mask = None
    if input_mask is not None:
        mask = outer_mask(jnp.ones(query.shape[:2], jnp.int32), input_mask)
    z = cross_attention(
        scope, f"{module}/~/cross_attention", query, inputs, num_heads=config.num_cross_attend_heads,
        qk_channels=config.qk_channels, v_channels=config.v_channels,
        widening_factor=config.cross_attend_widening_factor, use_query_residual=config.use_query_residual,
        shape_for_attn=config.cross_attention_shape_for_attn, dropout_prob=config.dropout_prob, mask=mask)
    scope.record("encoder_cross_attention", z)
    step = 0
    for _ in range(config.num_blocks):
        for index in range(config.num_self_attends_per_block):
            z = self_attention(
                scope, f"{module}/~/{numbered('self_attention', index)}", z, num_heads=config.num_self_attend_heads,
                qk_channels=config.qk_channels, v_channels=config.v_channels,
                widening_factor=config.self_attend_widening_factor, dropout_prob=config.dropout_prob)
            scope.record(f"encoder_self_attention_{step}", z)
            step += 1
    return z
