from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from perceiver_io.tokenizer import MASK, PAD, VOCAB_SIZE, BytesTokenizer


def test_official_encoding_of_the_colab_sentence():
    ids = BytesTokenizer().encode("This is")
    assert ids.tolist() == [b + 6 for b in b"This is"]
    assert VOCAB_SIZE == 262 and PAD == 0 and MASK == 3


@given(st.text())
def test_decode_inverts_encode(text):
    tokenizer = BytesTokenizer()
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_decode_drops_special_ids_and_pad_masks():
    tokenizer = BytesTokenizer()
    ids, mask = tokenizer.pad(tokenizer.encode("ab"), 5)
    assert ids.tolist() == [97 + 6, 98 + 6, 0, 0, 0] and mask.tolist() == [1, 1, 0, 0, 0]
    assert tokenizer.decode(np.array([1, 97 + 6, 3, 2, 98 + 6])) == "ab"
    with pytest.raises(ValueError, match="do not fit"):
        tokenizer.pad(tokenizer.encode("abc"), 2)
