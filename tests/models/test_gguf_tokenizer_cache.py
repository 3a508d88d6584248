"""SmolLM2's tokenizer, rebuilt by transformers from the vocabulary inside its GGUF,
kept in the tokenizer cache and read back from there: the same tokenizer; and the GGUF
parsed once per process."""

from __future__ import annotations

import os

import numpy as np
import pytest
import transformers

from qstar_jax.models.gguf_checkpoint import open_gguf
from qstar_jax.models.loading import resolve_alias
from qstar_jax.models.tokenizer import Tokenizer

GGUF = resolve_alias("smollm2-135m-instruct")
TEXTS = ["def add(a, b):\n    return a + b\n", "Natalia sold 48 clips in April. #### 72",
         "émigré 日本語 🙂\n\n", "<|im_start|>user\nHi<|im_end|>\n"]


@pytest.fixture
def loads(monkeypatch) -> list[dict]:
    """The keyword arguments of each transformers tokenizer load from now on."""
    calls = []
    load = transformers.AutoTokenizer.from_pretrained

    def recording_load(source, **kwargs):
        calls.append(kwargs)
        return load(source, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", recording_load)
    return calls


def test_a_gguf_tokenizer_is_converted_once_and_read_back_the_same(tmp_path, monkeypatch,
                                                                   loads):
    monkeypatch.setenv("QSTAR_TOKENIZER_CACHE", str(tmp_path))
    converted = Tokenizer.from_gguf(GGUF, extra_eos_ids=[2])
    cached = Tokenizer.from_gguf(GGUF, extra_eos_ids=[2])
    assert [call.get("gguf_file") for call in loads] == [GGUF.name, None]
    assert len(list(tmp_path.iterdir())) == 1  # one entry, no partial folder left
    chat = converted.apply_chat_template([{"role": "user", "content": TEXTS[1]}])
    assert cached.apply_chat_template([{"role": "user", "content": TEXTS[1]}]) == chat
    for text in [*TEXTS, chat]:
        ids = converted.encode(text)
        assert cached.encode(text) == ids, text
        assert cached.decode(ids) == converted.decode(ids) == text
    assert (cached.eos_ids, cached.pad_id, cached.vocab_size) == (
        converted.eos_ids, converted.pad_id, converted.vocab_size)
    np.testing.assert_array_equal(cached.newline_table(converted.vocab_size),
                                  converted.newline_table(converted.vocab_size))


def test_with_the_cache_off_nothing_is_kept(tmp_path, monkeypatch, loads):
    monkeypatch.setenv("QSTAR_TOKENIZER_CACHE", "off")
    monkeypatch.setenv("HOME", str(tmp_path))  # where the default folder would be
    Tokenizer.from_gguf(GGUF)
    assert [call.get("gguf_file") for call in loads] == [GGUF.name]
    assert not any(tmp_path.iterdir())


def test_a_gguf_file_is_parsed_once_until_it_changes(tmp_path):
    copy = tmp_path / "model.gguf"
    copy.write_bytes(GGUF.read_bytes())
    first = open_gguf(copy)
    assert open_gguf(copy) is first
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: read again
    assert open_gguf(copy) is not first
