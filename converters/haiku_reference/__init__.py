"""Haiku (JAX) mirror of the official Perceiver IO code, used as the reference for conversion.

Parameter trees match the released checkpoints' module paths, leaf names and shapes; numerics
match the official implementation. Needs the optional `jax` extra (jax, dm-haiku).
"""
