"""Haiku (JAX) checkpoints to PyTorch: loading, mapping, conversion, parity."""
