"""The UTF-8 bytes tokenizer of the language model, mirroring the official `bytes_tokenizer.BytesTokenizer`.

Ids 0-5 are special (PAD, BOS, EOS, MASK, CLS, SEP); byte b is id b + 6; the vocabulary has 262 ids.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

PAD, BOS, EOS, MASK, CLS, SEP = range(6)
NUM_SPECIAL_TOKENS = 6
VOCAB_SIZE = 256 + NUM_SPECIAL_TOKENS


class BytesTokenizer:
    """Text <-> token ids [N] (int32)."""

    pad_token = PAD
    mask_token = MASK
    vocab_size = VOCAB_SIZE

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + NUM_SPECIAL_TOKENS

    def decode(self, ids) -> str:
        """Drops special ids (below 6), as the official `to_string`; invalid UTF-8 becomes U+FFFD."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        data = (ids[ids >= NUM_SPECIAL_TOKENS] - NUM_SPECIAL_TOKENS).astype(np.uint8).tobytes()
        return data.decode("utf-8", errors="replace")

    def pad(self, ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Pads ids [N] with PAD to `length`: (ids [length], mask [length], 1 = token, 0 = padding)."""
        if len(ids) > length:
            raise InputError(f"{len(ids)} tokens do not fit the model's {length} positions")
        padded = np.full(length, PAD, dtype=np.int32)
        padded[: len(ids)] = ids
        mask = np.zeros(length, dtype=np.int32)
        mask[: len(ids)] = 1
        return padded, mask
