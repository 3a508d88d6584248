"""Tiny random `transformers` checkpoints (and a tiny byte-level BPE tokenizer) for tests.

Every family is hidden 64, 2 layers, 4 heads, 2 kv heads, so a forward pass is instant.
Weights are redrawn from a seeded generator at a scale where logits are O(1) and biases
are non-zero, so parity against PyTorch is a meaningful check, not a comparison of zeros.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path

import gguf
import numpy as np
import tokenizers
import torch
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from qstar_jax.models.gguf_checkpoint import ROPE_FREQS

FAMILIES = ("llama", "llama3_rope", "linear_rope", "mistral_sliding", "qwen2", "qwen2_yarn")
VOCAB_SIZE = 512  # model vocab; the tiny tokenizer stays below it
SLIDING_WINDOW = 96  # shorter than the 300-token parity sequence
EOS_TOKEN = "<|im_end|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Step-by-step text, so the tokenizer learns merges of punctuation with newlines.
TRAINING_TEXT = """\
Question: Tom has 3 apples and buys 5 more. How many apples does he have?
Step 1: Tom starts with 3 apples.
Step 2: He buys 5 more, so 3 + 5 = 8.
The answer is 8.

Question: A train travels 60 km in 1.5 hours. What is its speed?
Step 1: Speed is distance divided by time.
Step 2: 60 / 1.5 = 40.
The answer is 40 km/h.

Question: Use 4, 6, 8 and 2 to reach 24.
Step 1: 8 × 2 = 16.
Step 2: 16 + 6 = 22.
Step 3: 22 + 4 − 2 = 24? No: 2 is used twice.
Step 3: 6 ÷ 2 = 3, then 8 × 3 = 24.
The answer is 24.

def add(a, b):
    return a + b

def solve(numbers):
    total = 0
    for n in numbers:
        total += n
    return total
Café, naïve, résumé: words with accents.
"""


def _model_config(family: str) -> transformers.PretrainedConfig:
    common = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=1024, rms_norm_eps=1e-5, bos_token_id=0,
                  eos_token_id=2)
    if family == "llama":
        return transformers.LlamaConfig(**common, rope_parameters={"rope_type": "default",
                                                                  "rope_theta": 10000.0})
    if family == "llama3_rope":
        # With head_dim 16 the wavelengths span 6..20000 tokens, so all three regions of
        # the Llama-3 rule (kept, blended, divided by factor) are exercised.
        return transformers.LlamaConfig(**common, rope_parameters={
            "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64})
    if family == "linear_rope":  # DeepSeek-Coder's kind of scaling
        return transformers.LlamaConfig(**common, rope_parameters={
            "rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0})
    if family == "mistral_sliding":
        return transformers.MistralConfig(**common, sliding_window=SLIDING_WINDOW)
    if family == "qwen2":  # Qwen2's own epsilon and RoPE base: neither is a loader's default
        return transformers.Qwen2Config(**{**common, "rms_norm_eps": 1e-6},
                                        tie_word_embeddings=True, rope_parameters={
                                            "rope_type": "default", "rope_theta": 1e6})
    if family == "qwen2_yarn":  # Qwen2.5's long-context setting, at the tiny model's scale:
        # positions past 64 are past the original context, and the attention factor
        # (0.1 ln 4 + 1) scales every logit by 1.30
        return transformers.Qwen2Config(**common, rope_parameters={
            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
            "original_max_position_embeddings": 64})
    raise ValueError(f"unknown tiny family {family!r}; choose one of {FAMILIES}")


def make_tiny_torch_model(family: str, *, seed: int = 0) -> transformers.PreTrainedModel:
    """A float32 PyTorch model of ``family`` with seeded, O(1)-logit random weights."""
    config = _model_config(family)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * 0.1
            param.copy_(1.0 + noise if "norm" in name else noise)
    return model.eval()


def train_tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE (~400 tokens) with a ChatML template and ``<|im_end|>`` as EOS."""
    tok = tokenizers.Tokenizer(models.BPE())
    # Split before each space-led word but keep trailing newlines with it, so BPE can learn
    # tokens such as ".\n" and ".\n\n" the way large byte-level vocabularies have them.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(r" ?[^\s]+\n*|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", EOS_TOKEN]
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TRAINING_TEXT] * 4, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token=EOS_TOKEN,
        pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE)


def save_tiny_checkpoint(path: str | Path, family: str, *, seed: int = 0,
                         with_tokenizer: bool = True, sharded: bool = False,
                         dtype: str = "float32", torch_bin: bool = False) -> Path:
    """Write a tiny HF checkpoint of ``family`` (one of FAMILIES) into ``path``.

    ``sharded`` splits the weights into several files with an index; ``dtype`` is the
    stored precision ("float32" or "bfloat16"); ``torch_bin`` stores them as PyTorch
    ``pytorch_model*.bin`` files, as transformers did before safetensors. Returns the
    directory.
    """
    path = Path(path)
    model = make_tiny_torch_model(family, seed=seed).to(getattr(torch, dtype))
    if torch_bin:
        _save_torch_bin(model, path, shards=3 if sharded else 1)
    else:
        model.save_pretrained(path, max_shard_size="100KB" if sharded else "1GB")
    if with_tokenizer:
        train_tiny_tokenizer().save_pretrained(path)
    return path


def _save_torch_bin(model: transformers.PreTrainedModel, path: Path, shards: int) -> None:
    """The config and ``torch.save``d state dicts in transformers' pre-safetensors names
    (this transformers writes safetensors only); a tied head keeps its own key, sharing
    the embedding's storage."""
    model.config.save_pretrained(path)
    state = model.state_dict()
    if shards == 1:
        torch.save(state, path / "pytorch_model.bin")
        return
    files = [f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin" for i in range(shards)]
    weight_map = {name: files[i % shards] for i, name in enumerate(state)}
    for file in files:
        torch.save({n: t for n, t in state.items() if weight_map[n] == file}, path / file)
    (path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))


def rope_frequency_factors(model) -> np.ndarray:
    """[head_dim // 2] float32: each plain RoPE frequency over the one ``model`` (a
    transformers Llama) rotates by."""
    cfg = model.config
    theta, dim = cfg.rope_parameters["rope_theta"], cfg.head_dim
    plain = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return (plain / model.model.rotary_emb.inv_freq.double()).float().numpy()


def _llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter order for Q/K rows: each head's two rotary halves interleaved."""
    return (weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def save_tiny_gguf(path: str | Path, *, family: str = "llama", seed: int = 0,
                   drop: Collection[str] = (),
                   raw: Mapping[str, tuple[np.ndarray, gguf.GGMLQuantizationType]] | None = None,
                   scaling_type: gguf.RopeScalingType | None = None,
                   extra_keys: Mapping[str, float | int | str | list[str]] | None = None
                   ) -> Path:
    """Write the tiny ``family`` model ("llama", "linear_rope", "llama3_rope", "qwen2" or
    "qwen2_yarn") as a llama.cpp-style F32 GGUF (no vocabulary).

    Q/K rows of the llama architecture are permuted as llama.cpp's converter does, so a
    loader must undo it; qwen2's are not (llama.cpp rotates them as transformers does),
    and its tied head is left out, as the converter leaves it. A
    llama3_rope model's scaling goes in as llama.cpp's converter stores it: a
    ``rope_freqs`` tensor, the factor each frequency is divided by (here read off
    transformers' own scaled frequencies), and no scaling keys. ``drop``
    leaves out GGUF tensors by name; ``raw`` replaces a tensor by (bytes, quantization type),
    ``scaling_type`` names a RoPE scaling the weights were not trained with, and
    ``extra_keys`` adds metadata (a float as float32, an int as uint32, a string, a list of
    strings), for tests of bad files and of tokenizer keys. Returns ``path``.
    """
    if family not in ("llama", "linear_rope", "llama3_rope", "qwen2", "qwen2_yarn"):
        raise ValueError(f"no GGUF writer for the tiny family {family!r}")
    path = Path(path)
    model = make_tiny_torch_model(family, seed=seed)
    cfg = model.config
    arch = gguf.MODEL_ARCH.QWEN2 if family.startswith("qwen2") else gguf.MODEL_ARCH.LLAMA
    writer = gguf.GGUFWriter(path, arch=gguf.MODEL_ARCH_NAMES[arch])
    interleaved = arch == gguf.MODEL_ARCH.LLAMA  # llama.cpp's pairwise RoPE order for Q/K
    if family == "qwen2_yarn":  # the keys llama.cpp's converter writes for a YaRN config
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(cfg.rope_parameters["factor"])
        writer.add_rope_scaling_orig_ctx_len(
            cfg.rope_parameters["original_max_position_embeddings"])
    elif family == "linear_rope" or scaling_type is not None:
        writer.add_rope_scaling_type(scaling_type or gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(cfg.rope_parameters.get("factor", 4.0))
    adders = {int: writer.add_uint32, float: writer.add_float32, str: writer.add_string,
              list: writer.add_array}
    for name, value in (extra_keys or {}).items():
        adders[type(value)](name, value)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_bos_token_id(cfg.bos_token_id)
    writer.add_eos_token_id(cfg.eos_token_id)
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    tensors = {names.get_name(hf_name, try_suffixes=(".weight", ".bias")): tensor.numpy()
               for hf_name, tensor in model.state_dict().items()
               if not (cfg.tie_word_embeddings and hf_name == "lm_head.weight")}
    if family == "llama3_rope":
        tensors = {ROPE_FREQS: rope_frequency_factors(model), **tensors}
    for name, value in tensors.items():
        if name in drop:
            continue
        if raw and name in raw:
            data, quant = raw[name]
            writer.add_tensor(name, data, raw_dtype=quant)
            continue
        if interleaved and ".attn_q." in name:
            value = _llama_cpp_permute(value, cfg.num_attention_heads)
        elif interleaved and ".attn_k." in name:
            value = _llama_cpp_permute(value, cfg.num_key_value_heads)
        writer.add_tensor(name, np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
