"""An independent newline oracle for byte-level BPE vocabularies, to check newline_table."""

from __future__ import annotations

import numpy as np
from transformers.convert_slow_tokenizer import bytes_to_unicode


def byte_level_newline_table(hf_tokenizer, vocab_size: int) -> np.ndarray:
    """bool [vocab_size] from the raw vocabulary: each symbol mapped back to its byte."""
    byte_of = {symbol: byte for byte, symbol in bytes_to_unicode().items()}
    special = set(hf_tokenizer.all_special_ids) | set(hf_tokenizer.added_tokens_decoder)
    table = np.zeros(vocab_size, dtype=bool)
    for token_id, token in enumerate(hf_tokenizer.convert_ids_to_tokens(range(len(hf_tokenizer)))):
        if token_id in special:
            table[token_id] = "\n" in token
        else:
            table[token_id] = ord("\n") in bytes(byte_of[symbol] for symbol in token)
    return table
