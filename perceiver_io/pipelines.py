"""Task pipelines on top of the models: plain Python values in, plain Python values out."""

from __future__ import annotations

import numpy as np
import torch

from .tasks import LanguagePerceiver
from .tokenizer import MASK, NUM_SPECIAL_TOKENS, BytesTokenizer

MASK_MARKER = "[MASK]"


@torch.inference_mode()
def fill_mask(model: LanguagePerceiver, text: str, mask_marker: str = MASK_MARKER) -> str:
    """Fills masked bytes of `text` with the model's most likely bytes.

    Each occurrence of `mask_marker` stands for one masked UTF-8 byte; for example
    "This is an incomplete sentence where some words are" + 9 * "[MASK]" asks for 9 bytes.
    Returns the text with every marker replaced by the predicted byte (invalid UTF-8 shows as U+FFFD).
    """
    tokenizer = BytesTokenizer()
    pieces = text.split(mask_marker)
    if len(pieces) == 1:
        raise ValueError(f"the text has no {mask_marker!r} to fill")
    ids = []
    for index, piece in enumerate(pieces):
        ids.extend(tokenizer.encode(piece).tolist())
        if index < len(pieces) - 1:
            ids.append(MASK)
    ids, input_mask = tokenizer.pad(np.asarray(ids, dtype=np.int32), model.config.max_seq_len)
    device = next(model.parameters()).device
    logits = model(torch.from_numpy(ids)[None].to(device), torch.from_numpy(input_mask)[None].to(device))[0]
    predicted = logits[:, NUM_SPECIAL_TOKENS:].argmax(-1).cpu().numpy() + NUM_SPECIAL_TOKENS
    filled = np.where(ids == MASK, predicted, ids)
    return tokenizer.decode(filled[input_mask.astype(bool)])
