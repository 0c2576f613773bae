"""What one forward pass of the reference reads and writes, addressed by official Haiku module paths.

A `Scope` hands each layer its parameters and state by path (`perceiver_encoder/~/cross_attention/
attention/linear`, leaf `w`), checking every shape, and keeps the intermediates the pass records. With
`creating=True` it makes the leaves it is asked for (their initialisers, drawn from its key), which is
how `init` builds a parameter tree without a module system.

The path grammar is Haiku's, which the released checkpoints carry: a module made in its parent's
constructor is `parent/~/child`, one made while the parent is called is `parent/child`, one made in
another method `m` is `parent/~m/child`; the n-th module of one name under a parent is `name_n` (the
first has no suffix), see `numbered`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from perceiver_io.errors import ConfigError, InputError

from ..stages import flatten

Tree = dict[str, dict[str, Any]]
Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


class ReferenceTreeError(ConfigError):
    """The parameter or state tree lacks a leaf the configuration reads, or holds it in another shape."""


def numbered(name: str, index: int) -> str:
    """Haiku's name for the `index`-th module called `name` under one parent: name, name_1, name_2, ..."""
    return name if index == 0 else f"{name}_{index}"


class Scope:
    """Parameters, state, random keys and recorded stages of one pass.

    params, state: {module path: {leaf: array}}; rng: a `jax.random` key or None (a pass that draws one
    without it fails, naming what needed it); training: dropout on, BatchNorm on batch statistics.
    """

    def __init__(self, params: Mapping, state: Mapping, rng: jax.Array | None, *, training: bool,
                 creating: bool = False):
        self.params: Tree = {module: dict(leaves) for module, leaves in params.items()}
        self.state: Tree = {module: dict(leaves) for module, leaves in state.items()}
        self.rng = rng
        self.training = training
        self.creating = creating
        self.stages: dict[str, Any] = {}

    def key(self, purpose: str) -> jax.Array:
        """A fresh key, split from the pass's key."""
        if self.rng is None:
            raise InputError(f"{purpose} draws random numbers: call the reference with an rng key")
        self.rng, key = jax.random.split(self.rng)
        return key

    def param(self, module: str, name: str, shape: tuple[int, ...], init: Initializer) -> jax.Array:
        return self._leaf(self.params, "parameter", module, name, shape, init, jnp.float32)

    def get_state(self, module: str, name: str, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        """A state leaf (made as zeros when creating)."""
        return self._leaf(self.state, "state", module, name, shape, lambda _k, s, d: jnp.zeros(s, d), dtype)

    def set_state(self, module: str, name: str, value: jax.Array) -> None:
        self.state[module][name] = value

    def record(self, stage: str, value: Any) -> None:
        """Keeps `value` as the stage `stage`, a mapping's items as `stage/key` (None values are not stages)."""
        self.stages.update(flatten({stage: value}))

    def _leaf(self, tree: Tree, kind: str, module: str, name: str, shape, init: Initializer, dtype) -> jax.Array:
        shape = tuple(int(size) for size in shape)
        leaves = tree.get(module)
        if leaves is None or name not in leaves:
            if not self.creating:
                raise ReferenceTreeError(
                    f"the {kind} tree has no leaf {module}/{name} (the configuration reads one of shape "
                    f"{list(shape)}): the configuration does not describe this checkpoint")
            value = init(self.key(f"initialising {module}/{name}") if kind == "parameter" else None, shape, dtype)
            tree.setdefault(module, {})[name] = value
            return value
        value = leaves[name]
        if tuple(value.shape) != shape:
            raise ReferenceTreeError(
                f"{kind} {module}/{name} has shape {list(value.shape)}, but the configuration reads "
                f"{list(shape)}: the configuration does not describe this checkpoint")
        return jnp.asarray(value)
