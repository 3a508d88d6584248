"""SmolLM2's tokenizer, rebuilt by transformers from the vocabulary inside its GGUF,
kept in the tokenizer cache and read back from there: the same tokenizer; and the GGUF
parsed once per process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import transformers

from qstar_jax.models import CheckpointError
from qstar_jax.models.gguf_checkpoint import architecture, open_gguf
from qstar_jax.models.loading import resolve_alias
from qstar_jax.models.tokenizer import (DEFAULT_CACHE_FOLDER, Tokenizer, _save_whole,
                                       tokenizer_cache_folder)
from tests.support.tiny_checkpoints import save_tiny_gguf

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
    # One entry, no partial folder left, keyed by the file as it is and the transformers
    # that wrote it.
    stat = GGUF.stat()
    assert [entry.name for entry in tmp_path.iterdir()] == [
        f"{GGUF.stem}-{stat.st_size}-{stat.st_mtime_ns}-transformers{transformers.__version__}"]
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


class _Saver:
    """Stands in for a transformers tokenizer: saves one tokenizer.json saying ``text``."""

    def __init__(self, text: str):
        self.text = text

    def save_pretrained(self, folder):
        (Path(folder) / "tokenizer.json").write_text(self.text)


def test_an_entry_is_saved_whole_or_not_at_all(tmp_path):
    cache = tmp_path / "cache" / "tokenizers"  # made, parents and all
    _save_whole(_Saver("first"), cache / "entry")
    assert [path.name for path in cache.iterdir()] == ["entry"]
    # Another process got there first: its entry stays, nothing fails, nothing is left.
    _save_whole(_Saver("second"), cache / "entry")
    assert [path.name for path in cache.iterdir()] == ["entry"]
    assert [path.name for path in (cache / "entry").iterdir()] == ["tokenizer.json"]
    assert (cache / "entry" / "tokenizer.json").read_text() == "first"
    # A cache that cannot be written (its folder is a file): nothing fails.
    (tmp_path / "blocked").write_text("")
    _save_whole(_Saver("third"), tmp_path / "blocked" / "entry")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["blocked", "cache"]


def test_the_cache_folder_is_the_environments_or_off(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("QSTAR_TOKENIZER_CACHE", raising=False)
    assert tokenizer_cache_folder() == DEFAULT_CACHE_FOLDER.expanduser()
    assert tokenizer_cache_folder() == tmp_path / ".cache/qstar_jax/tokenizers"
    monkeypatch.setenv("QSTAR_TOKENIZER_CACHE", "~/tokenizers")
    assert tokenizer_cache_folder() == tmp_path / "tokenizers"
    monkeypatch.setenv("QSTAR_TOKENIZER_CACHE", " Off\n")
    assert tokenizer_cache_folder() is None


def test_a_gguf_file_is_parsed_once_until_it_changes(tmp_path, monkeypatch):
    path = save_tiny_gguf(tmp_path / "model.gguf")
    first = open_gguf(path)
    assert open_gguf(path) is first
    monkeypatch.chdir(tmp_path)
    assert open_gguf(Path("model.gguf")) is first  # the same file by another name
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: read again
    touched = open_gguf(path)
    assert touched is not first
    # Replaced by a file of another size within the same modification time: read again.
    os.replace(save_tiny_gguf(tmp_path / "new.gguf", family="qwen2"), path)
    assert path.stat().st_size != stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    replaced = open_gguf(path)
    assert replaced is not touched and architecture(replaced, path) == "qwen2"
    # Another file of the same size and time is another file.
    other = save_tiny_gguf(tmp_path / "other.gguf", family="qwen2", seed=1)
    assert other.stat().st_size == path.stat().st_size
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert open_gguf(other) is not open_gguf(path)
    path.unlink()
    with pytest.raises(CheckpointError, match=r"model\.gguf cannot be read"):
        open_gguf(path)
