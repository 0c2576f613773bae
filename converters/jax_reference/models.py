"""The six released Perceiver IO models and custom ones, as the official colabs call them, and `build`.

Each model is a function `model(scope, config, *call arguments)` that reads its parameters from the scope
by official module path and records the intermediates of `Perceiver.__call__` in its order
(`perceiver_call_inputs`, `encoder_inputs`, `inputs_without_pos`, `encoder_query`, `decoder_query`,
`encoder_cross_attention`, `encoder_self_attention_{k}`, `z`, `decoder_outputs`, `perceiver_outputs`, and
`patches_for_flow` for flow). The calls (batch axis first):

- language_mlm: (inputs [B,N] int, input_mask [B,N]) -> logits [B,N,vocab].
- imagenet_*: (images [B,H,W,3] normalised) -> logits [B,classes].
- optical_flow: (images [B,2,H,W,3] in [-1,1]) -> flow [B,H,W,2] in pixels (the model's output times
  FLOW_SCALE_FACTOR, as the colab's function returns it).
- multimodal_autoencoding: (images [B,T,H,W,3], audio [B,S,1], subsampling {'image': idx, 'audio': idx})
  -> {'audio': [B,n_a*spp], 'image': [B,n_i,3], 'label': [B,classes]} for one chunk of queries.
- perceiver (custom): (inputs [B,*input_shape], input_mask [B,M], query_mask [B,O], subsampled_points [P])
  -> the postprocessor's output (the decoder's without one).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from perceiver_io.configs import (
    AudioPostprocessorConfig,
    ClassificationPostprocessorConfig,
    FlowConfig,
    ImageNetConfig,
    LanguageConfig,
    MultimodalConfig,
    OfficialConfig,
    OneHotPreprocessorConfig,
    PerceiverConfig,
    ProjectionPostprocessorConfig,
)
from perceiver_io.errors import ConfigError
from perceiver_io.registry import parse_config

from .attention import encode, latents
from .decoders import (
    Decoder,
    basic_decoder,
    basic_queries,
    classification_decoder,
    custom_decoder,
    flow_decoder,
    multimodal_queries,
)
from .layers import embed, truncated_normal, zeros
from .processors import (
    Preprocessed,
    image_preprocessor,
    multimodal_preprocessor,
    patches_for_flow,
    postprocess,
    preprocess,
)
from .scope import Scope, Tree


def _perceiver(scope: Scope, config, preprocessed: Preprocessed, decoder: Decoder, input_mask=None) -> jax.Array:
    """The official `Perceiver.__call__` after its preprocessor: latents, decoder queries, encoder, decoder,
    each recorded. `config` is the encoder's; returns the decoder's output."""
    scope.record("encoder_inputs", preprocessed.inputs)
    scope.record("inputs_without_pos", preprocessed.inputs_without_pos)
    query_latents = latents(scope, config, preprocessed.inputs.shape[0])
    scope.record("encoder_query", query_latents)
    query = decoder.queries()
    scope.record("decoder_query", query)
    z = encode(scope, config, preprocessed.inputs, query_latents, input_mask)
    scope.record("z", z)
    out = decoder.decode(query, z)
    scope.record("decoder_outputs", out)
    return out


def language_mlm(scope: Scope, config: LanguageConfig, inputs, input_mask=None):
    """masked_language_modelling.ipynb: `embed` plus the top-level `trainable_position_encoding`, the
    encoder, `basic_decoder` masked by `input_mask` too, and logits tied to `embed` plus
    `embedding_decoder/bias`."""
    if inputs.ndim != 2 or inputs.shape[1] != config.max_seq_len:
        raise ConfigError(f"inputs: expected token ids [B, {config.max_seq_len}], found {list(inputs.shape)}")
    embedded, table = embed(scope, "embed", inputs, config.vocab_size, config.d_model)
    positions = scope.param("trainable_position_encoding", "pos_embs", (config.max_seq_len, config.d_model),
                            truncated_normal(0.02))
    embedded = embedded + positions
    scope.record("perceiver_call_inputs", embedded)
    preprocessed = Preprocessed(embedded, None, None)
    decoder = basic_decoder(scope, config.decoder.name or "basic_decoder", config.decoder, preprocessed,
                            query_mask=input_mask)
    out = _perceiver(scope, config.encoder, preprocessed, decoder, input_mask)
    scope.record("perceiver_outputs", out)
    bias = scope.param("embedding_decoder", "bias", (config.vocab_size,), zeros)
    return jnp.dot(out, table.T) + bias


def imagenet(scope: Scope, config: ImageNetConfig, images):
    """imagenet_classification.ipynb: `image_preprocessor`, the encoder, `classification_decoder`."""
    scope.record("perceiver_call_inputs", images)
    preprocessed = image_preprocessor(scope, config.input_preprocessor, images)
    decoder = classification_decoder(scope, config.decoder, config.num_classes, preprocessed)
    out = _perceiver(scope, config.encoder, preprocessed, decoder)
    scope.record("perceiver_outputs", out)
    return out


def optical_flow(scope: Scope, config: FlowConfig, images):
    """optical_flow.ipynb: 3x3 patches of both frames, `image_preprocessor` ('patches', `patches_linear`),
    the encoder, `flow_decoder` queried by the preprocessed inputs, times FLOW_SCALE_FACTOR."""
    patches = patches_for_flow(images)
    scope.record("patches_for_flow", patches)
    scope.record("perceiver_call_inputs", patches)
    preprocessed = image_preprocessor(scope, config.input_preprocessor, patches)
    image_shape = config.decoder.output_image_shape or config.train_size
    decoder = flow_decoder(scope, config.decoder, image_shape, preprocessed)
    flow = _perceiver(scope, config.encoder, preprocessed, decoder)
    scope.record("perceiver_outputs", flow)
    return flow * config.flow_scale_factor


def multimodal_autoencoding(scope: Scope, config: MultimodalConfig, images, audio, subsampling=None):
    """video_autoencoding.ipynb: `multimodal_preprocessor` over audio, image and a zero label, the encoder
    (`encoder`), `multimodal_decoder` over the queries of each modality at its subsampled points (the
    label's from `classification_decoder`), and the audio, projection and classification postprocessors."""
    subsampling = subsampling or {}
    inputs = {"audio": audio, "image": images, "label": jnp.zeros((images.shape[0], config.num_classes), images.dtype)}
    scope.record("perceiver_call_inputs", inputs)
    preprocessed = multimodal_preprocessor(
        scope, {"audio": config.audio_preprocessor, "image": config.image_preprocessor,
                "label": OneHotPreprocessorConfig()},
        inputs, config.preproc_min_padding_size, config.mask_probs)
    query_modules = {"audio": "basic_decoder", "image": "basic_video_autoencoding_decoder/~/basic_decoder",
                     "label": "classification_decoder/~/basic_decoder"}
    counts: dict[str, int] = {}

    def queries():
        per_modality = {name: basic_queries(scope, query_modules[name], decoder, preprocessed, images.shape[0],
                                            subsampling.get(name))
                        for name, decoder in config.modality_queries.items()}
        counts.update({name: query.shape[1] for name, query in per_modality.items()})
        return multimodal_queries(scope, per_modality, min_padding_size=2)

    shared = basic_decoder(scope, "multimodal_decoder/~/basic_decoder", config.shared_decoder, preprocessed)
    out = _perceiver(scope, config.encoder, preprocessed, Decoder(queries, shared.decode))
    heads = {"audio": AudioPostprocessorConfig(samples_per_patch=config.samples_per_patch),
             "image": ProjectionPostprocessorConfig(num_outputs=3),
             "label": ClassificationPostprocessorConfig(num_classes=config.num_classes)}
    outputs, start = {}, 0
    for name in sorted(counts):
        outputs[name] = postprocess(heads[name], scope, out[:, start:start + counts[name]])
        start += counts[name]
    scope.record("perceiver_outputs", outputs)
    return outputs


def custom_perceiver(scope: Scope, config: PerceiverConfig, inputs, input_mask=None, query_mask=None,
                     subsampled_points=None):
    """A Perceiver of the official building set, its modules under their official default names, called as
    `Perceiver.__call__`: preprocessor, encoder, decoder, postprocessor."""
    expected = tuple(config.input_shape)
    if tuple(inputs.shape[1:]) != expected:
        raise ConfigError(f"inputs: expected shape [B, {', '.join(map(str, expected))}] from the config's "
                         f"input_shape, found {list(inputs.shape)}")
    scope.record("perceiver_call_inputs", inputs)
    preprocessed = preprocess(config.input_preprocessor, scope, inputs)
    decoder = custom_decoder(config.decoder, scope, preprocessed, query_mask, subsampled_points)
    out = postprocess(config.output_postprocessor, scope,
                      _perceiver(scope, config.encoder, preprocessed, decoder, input_mask))
    scope.record("perceiver_outputs", out)
    return out


MODELS: dict[type[OfficialConfig], Callable[..., Any]] = {
    LanguageConfig: language_mlm,
    ImageNetConfig: imagenet,
    FlowConfig: optical_flow,
    MultimodalConfig: multimodal_autoencoding,
    PerceiverConfig: custom_perceiver,
}


class ReferenceModel(NamedTuple):
    """A model as a pair of pure functions, called as a Haiku `TransformedWithState` is:

    - init(rng, *call) -> (params, state): a new parameter tree (official paths, leaf names, shapes and
      initialisers) and the state after one training step (BatchNorm averages), as the official init makes.
    - apply(params, state, rng, *call) -> ((output, intermediates), state): evaluation, or with
      `is_training` the training graph (dropout drawn from rng, BatchNorm on batch statistics, its averages
      returned updated), differentiable in params. The rng is needed only where random numbers are drawn
      (dropout in training, the multimodal model's masking).
    """

    init: Callable[..., tuple[Tree, Tree]]
    apply: Callable[..., tuple[tuple[Any, dict[str, Any]], Tree]]


def build(task: str, config: OfficialConfig | Mapping[str, Any] | None = None,
          is_training: bool = False) -> ReferenceModel:
    """The reference of `task` under `config` (a config object, official keys, or None for the released one)."""
    parsed = parse_config(task, config)
    forward = MODELS[type(parsed)]

    def model(scope, *args, **kwargs):
        return forward(scope, parsed, *args, **kwargs)

    def init(rng, *args, **kwargs):
        scope = Scope({}, {}, rng, training=True, creating=True)
        model(scope, *args, **kwargs)
        return scope.params, scope.state

    def apply(params, state, rng, *args, **kwargs):
        scope = Scope(params, state or {}, rng, training=is_training)
        output = model(scope, *args, **kwargs)
        return (output, scope.stages), scope.state

    return ReferenceModel(init, apply)
