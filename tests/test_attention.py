"""The attention primitive against a plain numpy transcription of the official `attend` semantics."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from perceiver_io.attention import Attention, CrossAttention, SelfAttention, attend, make_cross_attention_mask


def official_attend(q, k, v, mask):
    """numpy: logits scaled by 1/sqrt(Dqk), masked logits replaced by -1e30, rows without keys zeroed."""
    batch, tq, heads, dqk = q.shape
    logits = np.einsum("bthd,bThd->bhtT", q, k) / np.sqrt(dqk)
    if mask is not None:
        logits = np.where(mask[:, None], logits, -1e30)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhtT,bThd->bthd", weights, v).reshape(batch, tq, -1)
    if mask is not None:
        out = out * mask.any(-1)[:, :, None]
    return out


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    tq=st.integers(1, 7),
    tk=st.integers(1, 7),
    heads=st.sampled_from([1, 2, 4]),
    dqk=st.integers(1, 6),
    dv=st.integers(1, 6),
    masked=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_attend_matches_official_semantics(batch, tq, tk, heads, dqk, dv, masked, seed):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, tq, heads, dqk)).astype(np.float32)
    k = rng.normal(size=(batch, tk, heads, dqk)).astype(np.float32)
    v = rng.normal(size=(batch, tk, heads, dv)).astype(np.float32)
    mask = rng.random((batch, tq, tk)) < 0.5 if masked else None
    if masked:
        mask[0, 0] = False  # always one query row with no valid key
    ours = attend(*(torch.from_numpy(a) for a in (q, k, v)), None if mask is None else torch.from_numpy(mask))
    expected = official_attend(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), mask)
    error = np.abs(ours.numpy() - expected).max()
    assert np.isfinite(ours.numpy()).all()
    assert error < 1e-5, f"max abs error {error:.2e}"


def test_fully_masked_rows_come_out_as_output_bias_without_nan():
    torch.manual_seed(0)
    attention = Attention(q_channels=8, kv_channels=6, qk_channels=4, v_channels=10, output_channels=8, num_heads=2)
    query_mask = torch.tensor([[1, 0, 1]])
    kv_mask = torch.tensor([[0, 0, 0, 0, 0]])
    out = attention(torch.randn(1, 3, 8), torch.randn(1, 5, 6), make_cross_attention_mask(query_mask, kv_mask))
    assert torch.equal(out, attention.output_proj.bias.expand(1, 3, 8))
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in attention.parameters() if p.grad is not None)


def test_cross_attention_channel_defaults_follow_kv_then_q():
    block = CrossAttention(q_channels=12, kv_channels=20, num_heads=2)
    assert block.attention.query_proj.weight.shape == (20, 12)  # qk defaults to the kv width
    assert block.attention.value_proj.weight.shape == (20, 20)  # v defaults to qk
    assert block.attention.output_proj.weight.shape == (12, 20)  # the output has the query width
    block_q = CrossAttention(q_channels=12, kv_channels=20, num_heads=2, shape_for_attn="q")
    assert block_q.attention.query_proj.weight.shape == (12, 12)


def test_self_attention_refuses_a_value_width_the_official_code_cannot_add():
    import pytest

    with pytest.raises(ValueError, match="v_channels == 8"):
        SelfAttention(8, num_heads=2, qk_channels=4)
