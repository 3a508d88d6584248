"""A character-level tokenizer for small synthetic worlds (Countdown), as an HF fast tokenizer.

Each character of the alphabet is one token, so a newline is always its own token and a
policy trained from scratch needs no learned merges. Being a standard
``PreTrainedTokenizerFast``, it saves and loads with a checkpoint like any other.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """Ids 0-3 are <pad>, <bos>, <eos>, <unk>; then the alphabet's characters in order."""
    chars = sorted(set(alphabet))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({c: len(SPECIAL_TOKENS) + i for i, c in enumerate(chars)})
    # BPE without merges splits text into single characters; Split keeps every character
    # (spaces and newlines included) as its own piece.
    model = models.BPE(vocab=vocab, merges=[], unk_token="<unk>")
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>",
                                   bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
