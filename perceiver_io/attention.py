"""Attention blocks of Perceiver IO, mirroring `perceiver/perceiver.py` of the official code.

Shapes use B for batch, Tq/Tk for query/key tokens and C for channels. Numerics follow the official
`attend`: per-head logits scaled by 1/sqrt(qk_channels / heads), masked logits *replaced* (not added
to), softmax over keys, and query rows whose keys are all masked set to zero before the output
projection, so they come out as that projection's bias and never as NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


def make_cross_attention_mask(query_mask: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
    """Outer product of a query mask [B,Tq] and a key mask [B,Tk]: bool [B,Tq,Tk] (official helper)."""
    return query_mask.bool()[:, :, None] & kv_mask.bool()[:, None, :]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    dropout_prob: float = 0.0,
) -> torch.Tensor:
    """Multi-head scaled dot-product attention (official `attend`).

    q [B,Tq,H,Dqk], k [B,Tk,H,Dqk], v [B,Tk,H,Dv], attention_mask [B,Tq,Tk] (nonzero = valid).
    Returns [B,Tq,H*Dv], heads concatenated in order.
    """
    batch, num_queries, num_heads, qk_head_channels = q.shape
    keep = None
    valid_rows = None
    if attention_mask is not None:
        mask = attention_mask.bool()
        valid_rows = mask.any(dim=-1)  # [B,Tq]
        # A row with no valid key is zeroed below; letting it attend everywhere keeps the kernels and their
        # gradients free of NaN, as the official -1e30 fill does (uniform weights, then zeroed).
        keep = (mask | ~valid_rows[:, :, None])[:, None]  # [B,1,Tq,Tk]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B,H,T,D]
    scale = qk_head_channels**-0.5
    if q.device.type == "cpu" and qk_head_channels != v.shape[-1]:
        out = _attend_with_matmuls(q, k, v, keep, dropout_prob, scale)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_prob, scale=scale)
    out = out.transpose(1, 2).reshape(batch, num_queries, -1)  # [B,Tq,H*Dv]
    if valid_rows is not None:
        out = out * valid_rows[:, :, None].to(out.dtype)
    return out


def _attend_with_matmuls(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None, dropout_prob: float, scale: float
) -> torch.Tensor:
    """The official einsum, fill, softmax, einsum as batched matmuls: q,k [B,H,T,Dqk], v [B,H,Tk,Dv],
    keep [B,1,Tq,Tk] or None -> [B,H,Tq,Dv].

    For CPU attention whose q/k heads are narrower than its v heads (the language model: 32 and 160):
    SDPA's CPU flash kernel needs equal widths, and its fallback took twice as long (160 ms against 75 ms of
    the language forward).
    """
    batch, num_heads, num_queries, _ = q.shape
    num_keys = k.shape[2]
    flat = lambda x: x.reshape(batch * num_heads, *x.shape[2:])  # noqa: E731
    logits = torch.baddbmm(
        q.new_empty(()).expand(batch * num_heads, num_queries, num_keys),
        flat(q),
        flat(k).transpose(1, 2),
        beta=0,
        alpha=scale,
    )  # scale * (q . k), as the official einsum then `*= scale`
    if keep is not None:
        large = 1e4 if logits.dtype == torch.float16 else 1e30
        logits.view(batch, num_heads, num_queries, num_keys).masked_fill_(~keep, -large)
    weights = F.dropout(logits.softmax(dim=-1), dropout_prob) if dropout_prob else logits.softmax(dim=-1)
    return torch.bmm(weights, flat(v)).view(batch, num_heads, num_queries, -1)


class Attention(nn.Module):
    """Multi-head attention with separate q/k and v widths (official `Attention`).

    Projections `query_proj` (official `linear`), `key_proj` (`linear_1`), `value_proj` (`linear_2`)
    and `output_proj` (`linear_3`). Inputs q [B,Tq,q_channels], kv [B,Tk,kv_channels];
    output [B,Tq,output_channels].
    """

    def __init__(
        self,
        q_channels: int,
        kv_channels: int,
        qk_channels: int,
        v_channels: int,
        output_channels: int,
        num_heads: int = 8,
        dropout_attn_prob: float = 0.0,
    ):
        super().__init__()
        if qk_channels % num_heads or v_channels % num_heads:
            raise ConfigError(
                f"qk_channels ({qk_channels}) and v_channels ({v_channels}) must be divisible by "
                f"num_heads ({num_heads})"
            )
        self.num_heads = num_heads
        self.dropout_attn_prob = dropout_attn_prob
        self.query_proj = nn.Linear(q_channels, qk_channels)
        self.key_proj = nn.Linear(kv_channels, qk_channels)
        self.value_proj = nn.Linear(kv_channels, v_channels)
        self.output_proj = nn.Linear(v_channels, output_channels)

    def forward(
        self, inputs_q: torch.Tensor, inputs_kv: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (self.num_heads, -1))

        out = attend(
            heads(self.query_proj(inputs_q)),
            heads(self.key_proj(inputs_kv)),
            heads(self.value_proj(inputs_kv)),
            attention_mask,
            self.dropout_attn_prob if self.training else 0.0,
        )
        return self.output_proj(out)


class MLP(nn.Module):
    """Linear(widening * C) -> tanh GELU -> Linear(C) -> dropout (official `MLP`), [..., C] -> [..., C]."""

    def __init__(self, channels: int, widening_factor: int = 4, dropout_prob: float = 0.0):
        super().__init__()
        self.up_proj = nn.Linear(channels, widening_factor * channels)
        self.down_proj = nn.Linear(widening_factor * channels, channels)
        self.dropout = nn.Dropout(dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.gelu(self.up_proj(x), approximate="tanh")))


def layer_norm(channels: int) -> nn.LayerNorm:
    """LayerNorm over the last axis with scale and offset, eps 1e-5 (official `layer_norm`)."""
    return nn.LayerNorm(channels, eps=1e-5)


class SelfAttention(nn.Module):
    """Pre-LN self-attention and MLP, each with a residual (official `SelfAttention`); [B,T,C] -> [B,T,C].

    qk_channels defaults to C and v_channels to qk_channels. As in the official code, the attention
    projects to v_channels and is added to its input, so v_channels must equal C.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 8,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        widening_factor: int = 4,
        dropout_prob: float = 0.0,
        dropout_attn_prob: float = 0.0,
    ):
        super().__init__()
        qk_channels = qk_channels or channels
        v_channels = v_channels or qk_channels
        if v_channels != channels:
            raise ConfigError(
                f"self-attention over {channels} channels needs v_channels == {channels} (the official "
                f"SelfAttention adds its {v_channels}-channel attention output to its input); got qk_channels="
                f"{qk_channels}, v_channels={v_channels}"
            )
        self.attention_norm = layer_norm(channels)
        self.attention = Attention(
            channels, channels, qk_channels, v_channels, channels, num_heads, dropout_attn_prob
        )
        self.attention_dropout = nn.Dropout(dropout_prob)
        self.mlp_norm = layer_norm(channels)
        self.mlp = MLP(channels, widening_factor, dropout_prob)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        normed = self.attention_norm(x)
        x = x + self.attention_dropout(self.attention(normed, normed, attention_mask))
        return x + self.mlp(self.mlp_norm(x))


class CrossAttention(nn.Module):
    """Cross-attention then MLP (official `CrossAttention`): q [B,Tq,Cq], kv [B,Tk,Ckv] -> [B,Tq,Cq].

    Three LayerNorms: `query_norm`, `kv_norm` and `mlp_norm` (official `layer_norm`, `layer_norm_1`,
    `layer_norm_2`). qk_channels defaults to Ckv (`shape_for_attn='kv'`) or Cq (`'q'`), v_channels to
    qk_channels; the output always has Cq channels.
    """

    def __init__(
        self,
        q_channels: int,
        kv_channels: int,
        num_heads: int = 8,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        widening_factor: int = 1,
        use_query_residual: bool = True,
        shape_for_attn: str = "kv",
        dropout_prob: float = 0.0,
        dropout_attn_prob: float = 0.0,
    ):
        super().__init__()
        if shape_for_attn not in ("q", "kv"):
            raise ConfigError(f"shape_for_attn must be 'q' or 'kv', got {shape_for_attn!r}")
        qk_channels = qk_channels or (kv_channels if shape_for_attn == "kv" else q_channels)
        v_channels = v_channels or qk_channels
        self.use_query_residual = use_query_residual
        self.query_norm = layer_norm(q_channels)
        self.kv_norm = layer_norm(kv_channels)
        self.attention = Attention(
            q_channels, kv_channels, qk_channels, v_channels, q_channels, num_heads, dropout_attn_prob
        )
        self.attention_dropout = nn.Dropout(dropout_prob)
        self.mlp_norm = layer_norm(q_channels)
        self.mlp = MLP(q_channels, widening_factor, dropout_prob)

    def forward(
        self, inputs_q: torch.Tensor, inputs_kv: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        attended = self.attention_dropout(
            self.attention(self.query_norm(inputs_q), self.kv_norm(inputs_kv), attention_mask)
        )
        x = inputs_q + attended if self.use_query_residual else attended
        return x + self.mlp(self.mlp_norm(x))
