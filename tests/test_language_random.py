"""Property tests: random language configurations built in the JAX reference and in PyTorch.

For each drawn configuration, the JAX reference initialises a tree (every leaf then re-randomised,
so no bias or LayerNorm parameter is trivially 0 or 1), the tree is converted, and both models run on
the same random batch (with padding and fully padded rows). Haiku -> PyTorch -> Haiku is the identity.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("jax")
import jax  # noqa: E402

from converters.convert import convert_tree, export_tree  # noqa: E402
from converters.jax_reference import build  # noqa: E402
from perceiver_io.tasks import build_model  # noqa: E402

TOLERANCE = 1e-4
COUNT = 12


@st.composite
def language_configs(draw):
    def multiple_of_4(low, high):
        return 4 * draw(st.integers(low, high))

    d_model = multiple_of_4(1, 4)
    final_project = draw(st.booleans())
    query_channels = multiple_of_4(1, 3) if final_project else d_model
    max_seq_len = draw(st.integers(2, 9))
    latents = multiple_of_4(1, 4)
    encoder_qk = draw(st.sampled_from([None, 4, 8, 12]))
    return {
        "D_MODEL": d_model,
        "D_LATENTS": latents,
        "MAX_SEQ_LEN": max_seq_len,
        "vocab_size": 262,
        "encoder_config": {
            "num_self_attends_per_block": draw(st.integers(1, 3)),
            "num_blocks": draw(st.integers(1, 2)),
            "z_index_dim": draw(st.integers(1, 6)),
            "num_z_channels": latents,
            "num_self_attend_heads": draw(st.sampled_from([1, 2, 4])),
            "num_cross_attend_heads": draw(st.sampled_from([1, 2, 4])),
            "qk_channels": encoder_qk,
            # the self-attentions add their v_channels-wide output to the latents: v must equal their width
            "v_channels": latents if encoder_qk not in (None, latents) else draw(st.sampled_from([None, latents])),
            "use_query_residual": draw(st.booleans()),
            "cross_attend_widening_factor": draw(st.integers(1, 3)),
            "self_attend_widening_factor": draw(st.integers(1, 3)),
        },
        "decoder_config": {
            "output_num_channels": d_model,
            "position_encoding_type": "trainable",
            "output_index_dims": max_seq_len,
            "num_z_channels": latents,
            "qk_channels": draw(st.one_of(st.none(), st.sampled_from([4, 8]))),
            "v_channels": draw(st.one_of(st.none(), st.sampled_from([4, 8, 12]))),
            "num_heads": draw(st.sampled_from([1, 2, 4])),
            "final_project": final_project,
            "use_query_residual": draw(st.booleans()),
            "trainable_position_encoding_kwargs": {"num_channels": query_channels},
        },
    }


def randomised(params, seed):
    rng = np.random.default_rng(seed)
    return {
        module: {name: rng.normal(0.0, 0.5, np.shape(value)).astype(np.float32) for name, value in leaves.items()}
        for module, leaves in params.items()
    }


def check_language_config(config, seed) -> float:
    """The JAX reference and the port on one random language configuration and batch: their relative error
    (asserted within TOLERANCE); the Haiku -> PyTorch -> Haiku round trip is asserted bit-identical."""
    rng = np.random.default_rng(seed)
    batch, length = 3, config["MAX_SEQ_LEN"]
    inputs = rng.integers(0, 262, (batch, length)).astype(np.int32)
    input_mask = (rng.random((batch, length)) < 0.7).astype(np.int32)
    input_mask[-1] = 0  # a fully padded row
    reference = build("language_mlm", config)
    params, state = reference.init(jax.random.PRNGKey(0), inputs=inputs, input_mask=input_mask)
    params = randomised(params, seed)
    (expected, _), _ = reference.apply(params, state, jax.random.PRNGKey(0), inputs=inputs, input_mask=input_mask)

    state_dict = convert_tree(params, "language_mlm", config)
    model = build_model("language_mlm", config).eval()
    model.load_state_dict({key: torch.from_numpy(value) for key, value in state_dict.items()})
    with torch.inference_mode():
        ours = model(torch.from_numpy(inputs), torch.from_numpy(input_mask)).numpy()
    error = float(np.abs(ours - np.asarray(expected)).max())
    scale = float(np.abs(np.asarray(expected)).max())
    print(f"max abs error {error:.3e} (output scale {scale:.1f})")
    assert np.isfinite(ours).all()
    assert error <= TOLERANCE * max(scale, 1.0), f"max abs error {error:.3e} at output scale {scale:.1f}"

    back, back_state = export_tree(state_dict, "language_mlm", config)
    assert back_state == {} and back.keys() == params.keys()
    for module, leaves in params.items():
        assert back[module].keys() == leaves.keys()
        for name, value in leaves.items():
            np.testing.assert_array_equal(back[module][name], value, err_msg=f"{module}/{name}")
    return error / max(scale, 1.0)


def test_reference_and_port_agree():
    errors = []

    @settings(max_examples=COUNT, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(config=language_configs(), seed=st.integers(0, 2**31 - 1))
    def each(config, seed):
        errors.append(check_language_config(config, seed))

    each()
    assert len(errors) == COUNT, f"{len(errors)} of {COUNT} configurations ran"
    print(f"worst relative max abs error over {COUNT} random configurations: {max(errors):.3e}")
