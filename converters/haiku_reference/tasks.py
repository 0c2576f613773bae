"""The six released Perceiver IO models, built as the official colabs build them, and custom ones.

`build(task, config, is_training=False)` takes a config in the official colab keys (as in the
manifests and the golden `reduced_config.json`) and returns an `hk.TransformedWithState` whose apply
returns `(output, intermediates)`:

- language_mlm: `f(inputs [B,N] int, input_mask [B,N] int)` -> logits [B, N, vocab].
- imagenet_*: `f(images [B,H,W,3] normalised)` -> logits [B, num_classes].
- optical_flow: `f(images [B,2,H,W,3] in [-1,1])` -> flow [B, H, W, 2] in pixels, as the colab's
  function returns it: the model's output (after `/ rescale_factor`) times `FLOW_SCALE_FACTOR`.
- multimodal_autoencoding: `f(images [B,T,H,W,3], audio [B,S,1], subsampling)` -> {'audio':
  [B, n_a*spp], 'image': [B, n_i, 3], 'label': [B, num_classes]} for one chunk of queries.
- perceiver: any model the official modules compose, from the `GENERIC` config schema below:
  `f(inputs [B, *input_shape], input_mask [B, N] = None, query_mask [B, O] = None,
  subsampled_points [P] int = None)` -> the postprocessor's output (the decoder's without one).

`intermediates` maps names to arrays: those recorded by `perceiver.Perceiver` and
`perceiver.PerceiverEncoder`, plus `perceiver_call_inputs` (and `patches_for_flow` for flow).
`init` runs the training graph so that BatchNorm creates its EMA state, as the official init
did; `apply` runs the evaluation graph (dropout off, BatchNorm on its EMA averages), or with
`is_training=True` the training graph (dropout on, drawn from apply's rng; BatchNorm on batch
statistics, its EMA state returned updated), whose apply can be differentiated for gradients.
Every apply needs an rng, as the official model's does.

The `perceiver` config (official argument names; lists stand for tuples):

    {"input_shape": [...],            # one example, no batch axis
     "input_preprocessor": null | {"type": "image" | "audio" | "one_hot", ...kwargs},
     "encoder": {...PerceiverEncoder kwargs},
     "decoder": {"type": "basic" | "classification" | "projection" | "flow", ...kwargs},
     "output_postprocessor": null | {"type": "identity" | "projection" | "classification" |
                                     "audio" | "image", ...kwargs}}

Each `type` selects the official class, the other keys are its constructor's keyword arguments
(`name` included); the modules are built outside `Perceiver`, as the colabs build them, so they
are top-level Haiku modules under the official default names (`image_preprocessor`,
`perceiver_encoder`, `basic_decoder`, `image_postprocessor`, ...).
"""

import functools

import haiku as hk
import jax.numpy as jnp
import numpy as np

from converters.haiku_reference import io_processors
from converters.haiku_reference import perceiver
from converters.haiku_reference import position_encoding

TASKS = ('language_mlm', 'imagenet_learned', 'imagenet_fourier', 'imagenet_conv',
         'optical_flow', 'multimodal_autoencoding')


def _language_mlm(config, inputs, input_mask, *, is_training):
    """masked_language_modelling.ipynb `apply_perceiver`: bytes [B, N] -> logits [B, N, V]."""
    embedding_layer = hk.Embed(vocab_size=config['vocab_size'], embed_dim=config['D_MODEL'])
    embedded_inputs = embedding_layer(inputs)
    input_pos_encoding = position_encoding.TrainablePositionEncoding(
        index_dim=config['MAX_SEQ_LEN'], num_channels=config['D_MODEL'])
    embedded_inputs = embedded_inputs + input_pos_encoding(embedded_inputs.shape[0])
    perceiver.record('perceiver_call_inputs', embedded_inputs)
    model = perceiver.Perceiver(
        encoder=perceiver.PerceiverEncoder(**config['encoder_config']),
        decoder=perceiver.BasicDecoder(**config['decoder_config']))
    output_embeddings = model(embedded_inputs, is_training=is_training, input_mask=input_mask,
                              query_mask=input_mask)
    return io_processors.EmbeddingDecoder(embedding_matrix=embedding_layer.embeddings)(
        output_embeddings)


def _imagenet(config, images, *, is_training):
    """imagenet_classification.ipynb `imagenet_classifier`: [B, H, W, 3] -> logits [B, K]."""
    perceiver.record('perceiver_call_inputs', images)
    model = perceiver.Perceiver(
        input_preprocessor=io_processors.ImagePreprocessor(**config['input_preprocessor']),
        encoder=perceiver.PerceiverEncoder(**config['encoder']),
        decoder=perceiver.ClassificationDecoder(config['num_classes'], **config['decoder']))
    return model(images, is_training=is_training)


def _optical_flow(config, images, *, is_training):
    """optical_flow.ipynb `optical_flow`: [B, 2, H, W, 3] -> flow in pixels [B, H, W, 2]."""
    patches = io_processors.patches_for_flow(images)
    perceiver.record('patches_for_flow', patches)
    perceiver.record('perceiver_call_inputs', patches)
    model = perceiver.Perceiver(
        input_preprocessor=io_processors.ImagePreprocessor(**config['input_preprocessor']),
        encoder=perceiver.PerceiverEncoder(**config['encoder']),
        decoder=perceiver.FlowDecoder(tuple(config['TRAIN_SIZE']), output_w_init=jnp.zeros,
                                      **config['decoder']))
    return model(patches, is_training=is_training) * config['FLOW_SCALE_FACTOR']


def _multimodal_autoencoding(config, images, audio, subsampling, *, is_training):
    """video_autoencoding.ipynb `video_autoencoder`: one chunk of subsampled queries."""
    num_frames = config['NUM_FRAMES']
    n_audio_samples = num_frames * config['AUDIO_SAMPLES_PER_FRAME']
    samples_per_patch = config['SAMPLES_PER_PATCH']
    num_classes = config['NUM_CLASSES']
    z_channels = config['decoder_num_z_channels']
    audio_fourier = dict(num_bands=config['audio_num_bands'], max_resolution=(n_audio_samples,),
                         sine_only=False, concat_pos=True)
    image_fourier = dict(num_bands=config['image_num_bands'],
                         max_resolution=(num_frames, config['IMG_SZ'], config['IMG_SZ']),
                         sine_only=False, concat_pos=True)

    input_preprocessor = io_processors.MultimodalPreprocessor(
        min_padding_size=config['preproc_min_padding_size'],
        modalities={
            'audio': io_processors.AudioPreprocessor(
                position_encoding_type='fourier', fourier_position_encoding_kwargs=audio_fourier,
                n_extra_pos_mlp=0, prep_type='patches', samples_per_patch=samples_per_patch),
            'image': io_processors.ImagePreprocessor(
                position_encoding_type='fourier', fourier_position_encoding_kwargs=image_fourier,
                n_extra_pos_mlp=0, prep_type='patches',
                spatial_downsample=config['image_spatial_downsample'], temporal_downsample=1),
            'label': io_processors.OneHotPreprocessor(),
        },
        mask_probs=config['mask_probs'])
    output_postprocessor = io_processors.MultimodalPostprocessor(modalities={
        'audio': io_processors.AudioPostprocessor(samples_per_patch=samples_per_patch),
        'image': io_processors.ProjectionPostprocessor(num_outputs=3),
        'label': io_processors.ClassificationPostprocessor(num_classes=num_classes),
    })
    encoder = perceiver.PerceiverEncoder(**config['encoder'])

    image_decoder = perceiver.BasicVideoAutoencodingDecoder(
        concat_preprocessed_input=False, subsampled_index_dims=subsampling['image'],
        output_shape=images.shape[:4], num_z_channels=z_channels,
        output_num_channels=config['modality_output_num_channels'], use_query_residual=False,
        position_encoding_type='fourier', fourier_position_encoding_kwargs=image_fourier)
    decoder = perceiver.MultimodalDecoder(
        concat_preprocessed_input=False,
        subsampled_index_dims={'audio': subsampling['audio'].shape[0],
                               'image': subsampling['image'].shape[0], 'label': 1},
        modalities={
            'audio': perceiver.BasicDecoder(
                concat_preprocessed_input=False, subsampled_index_dims=subsampling['audio'],
                output_index_dims=(n_audio_samples // samples_per_patch,),
                num_z_channels=z_channels,
                output_num_channels=config['modality_output_num_channels'],
                use_query_residual=False, position_encoding_type='fourier',
                fourier_position_encoding_kwargs=audio_fourier),
            'image': image_decoder,
            'label': perceiver.ClassificationDecoder(
                concat_preprocessed_input=False, num_classes=num_classes,
                num_z_channels=z_channels, use_query_residual=False,
                position_encoding_type='trainable',
                trainable_position_encoding_kwargs=dict(
                    num_channels=config['label_query_channels'], init_scale=0.02)),
        },
        num_outputs=None, output_num_channels=config['decoder_output_num_channels'],
        use_query_residual=False)

    model = perceiver.Perceiver(input_preprocessor=input_preprocessor, encoder=encoder,
                                decoder=decoder, output_postprocessor=output_postprocessor)
    inputs = {'image': images, 'audio': audio,
              'label': np.zeros((images.shape[0], num_classes))}
    perceiver.record('perceiver_call_inputs', inputs)
    return model(inputs, is_training=is_training, subsampled_output_points=subsampling)


GENERIC = 'perceiver'

_PREPROCESSORS = {
    'image': io_processors.ImagePreprocessor,
    'audio': io_processors.AudioPreprocessor,
    'one_hot': io_processors.OneHotPreprocessor,
}
_DECODERS = {
    'basic': perceiver.BasicDecoder,
    'classification': perceiver.ClassificationDecoder,
    'projection': perceiver.ProjectionDecoder,
    'flow': perceiver.FlowDecoder,
}
_POSTPROCESSORS = {
    'identity': io_processors.IdentityPostprocessor,
    'projection': io_processors.ProjectionPostprocessor,
    'classification': io_processors.ClassificationPostprocessor,
    'audio': io_processors.AudioPostprocessor,
    'image': io_processors.ImagePostprocessor,
}


def _module(kinds, key, spec):
    """The official module `spec['type']` names in `kinds`, built from the rest of `spec`."""
    if spec is None:
        return None
    kwargs = dict(spec)
    kind = kwargs.pop('type', None)
    if kind not in kinds:
        raise ValueError(f'config[{key!r}]: expected "type" in {sorted(kinds)}, found {kind!r}.')
    return kinds[kind](**kwargs)


def _perceiver(config, inputs, input_mask=None, query_mask=None, subsampled_points=None, *,
               is_training):
    """A custom Perceiver from the `GENERIC` schema: [B, *input_shape] -> output."""
    expected = tuple(config['input_shape'])
    if tuple(inputs.shape[1:]) != expected:
        raise ValueError(f"inputs: expected shape [B, {', '.join(map(str, expected))}] from "
                         f"config['input_shape'], found {list(inputs.shape)}.")
    perceiver.record('perceiver_call_inputs', inputs)
    model = perceiver.Perceiver(
        input_preprocessor=_module(_PREPROCESSORS, 'input_preprocessor',
                                   config.get('input_preprocessor')),
        encoder=perceiver.PerceiverEncoder(**config['encoder']),
        decoder=_module(_DECODERS, 'decoder', config['decoder']),
        output_postprocessor=_module(_POSTPROCESSORS, 'output_postprocessor',
                                     config.get('output_postprocessor')))
    return model(inputs, is_training=is_training, subsampled_output_points=subsampled_points,
                 input_mask=input_mask, query_mask=query_mask)


_MODELS = {
    'language_mlm': _language_mlm,
    'imagenet_learned': _imagenet,
    'imagenet_fourier': _imagenet,
    'imagenet_conv': _imagenet,
    'optical_flow': _optical_flow,
    'multimodal_autoencoding': _multimodal_autoencoding,
    GENERIC: _perceiver,
}


def build(task, config, is_training=False):
    """The official model of `task` under `config`, as an `hk.TransformedWithState`.

    `init` always runs the training graph; `apply` runs the evaluation graph, or the training
    graph when `is_training` is True.
    """
    if task not in _MODELS:
        raise ValueError(f'Unknown task {task!r}; expected one of {TASKS + (GENERIC,)}.')
    model = functools.partial(_MODELS[task], config)

    def forward(is_training, *args, **kwargs):
        with perceiver.recording() as intermediates:
            output = model(*args, is_training=is_training, **kwargs)
        return output, intermediates

    train = hk.transform_with_state(functools.partial(forward, True))
    run = train if is_training else hk.transform_with_state(functools.partial(forward, False))
    return hk.TransformedWithState(init=train.init, apply=run.apply)
