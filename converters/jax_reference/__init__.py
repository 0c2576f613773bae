"""The project's own JAX reference of Perceiver IO: pure `jax.numpy` functions that read a Haiku parameter
tree by its official module paths and compute what the official modules compute, for the six released
models and every custom model of the official building set. It is what `convert-checkpoint verify` runs
PyTorch against. Needs jax (the optional `jax` extra); the configurations are the port's own config objects.

    from converters.jax_reference import build
    reference = build("imagenet_conv", config)            # a config object, official keys, or None
    params, state = reference.init(rng, images)             # a new tree, official names and shapes
    (logits, stages), state = reference.apply(params, state, rng, images)
"""

from .models import ReferenceModel, build
from .scope import ReferenceTreeError

__all__ = ["ReferenceModel", "ReferenceTreeError", "build"]
