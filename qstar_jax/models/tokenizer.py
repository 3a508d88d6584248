"""The tokenizer the decoder and the search use: a thin wrapper over an HF fast tokenizer.

A GGUF's vocabulary, converted once, is kept in the tokenizer cache: ``QSTAR_TOKENIZER_CACHE``
names the folder (default ``~/.cache/qstar_jax/tokenizers``), ``off`` converts it afresh
on every load."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import transformers


class Tokenizer:
    """Encoding, decoding, the chat template, stop ids, and the per-token line tables."""

    def __init__(self, hf_tokenizer: transformers.PreTrainedTokenizerBase, *,
                 extra_eos_ids: Iterable[int] = ()):
        """``extra_eos_ids``: stop ids the model config or generation config adds to the
        tokenizer's own EOS (chat models often end turns with a token that is not EOS)."""
        if not hf_tokenizer.is_fast:
            raise ValueError(f"{type(hf_tokenizer).__name__} is a slow tokenizer; "
                             "load a fast one (a checkpoint with tokenizer.json)")
        self._hf = hf_tokenizer
        # By vocab size, each from one decode per token: the newline table and the others.
        self._token_tables: dict[int, tuple[np.ndarray, BlankStepTables]] = {}
        own = () if hf_tokenizer.eos_token_id is None else (hf_tokenizer.eos_token_id,)
        self._eos_ids = tuple(dict.fromkeys((*own, *map(int, extra_eos_ids))))
        if not self._eos_ids:
            raise ValueError("the tokenizer defines no EOS token and the model config names none, "
                             "so generation could never stop; set eos_token_id in config.json")
        bos = hf_tokenizer.bos_token_id
        # Whether the tokenizer starts its inputs with BOS (Llama-2, Mistral, DeepSeek do).
        self._input_bos = (bos if bos is not None and hf_tokenizer.encode(
            "a", add_special_tokens=True)[:1] == [bos] else None)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, gguf_file: str | None = None,
                        extra_eos_ids: Iterable[int] = ()) -> "Tokenizer":
        """From an HF directory's tokenizer files, or from the vocabulary inside a GGUF."""
        kwargs = {} if gguf_file is None else {"gguf_file": gguf_file}
        hf = transformers.AutoTokenizer.from_pretrained(str(directory), **kwargs)
        return cls(hf, extra_eos_ids=extra_eos_ids)

    @classmethod
    def from_gguf(cls, path: Path, *, extra_eos_ids: Iterable[int] = ()) -> "Tokenizer":
        """From the vocabulary inside the GGUF file ``path``. transformers rebuilds a fast
        tokenizer from it (parsing the file again: about 10 s for SmolLM2's 49k tokens);
        the result is kept in the tokenizer cache (``tokenizer_cache_folder``), keyed by
        the file's name, size and modification time and the transformers version, and
        later loads read it from there as an HF tokenizer folder."""
        folder = tokenizer_cache_folder()
        if folder is not None:
            stat = path.stat()
            saved = folder / (f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}"
                              f"-transformers{transformers.__version__}")
            if (saved / "tokenizer.json").is_file():
                return cls.from_pretrained(saved, extra_eos_ids=extra_eos_ids)
        tokenizer = cls.from_pretrained(path.parent, gguf_file=path.name,
                                        extra_eos_ids=extra_eos_ids)
        if folder is not None:
            _save_whole(tokenizer.hf_tokenizer, saved)
        return tokenizer

    @property
    def hf_tokenizer(self) -> transformers.PreTrainedTokenizerBase:
        return self._hf

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends generation: the tokenizer's EOS first, then the configs' extra."""
        return self._eos_ids

    @property
    def pad_id(self) -> int:
        """The pad token, or the first EOS id where the tokenizer has none (a common choice)."""
        return self._hf.pad_token_id if self._hf.pad_token_id is not None else self._eos_ids[0]

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added tokens included."""
        return len(self._hf)

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``. Special tokens are off by default: chat-template output
        already carries them, and a second BOS changes what the model sees."""
        return self._hf.encode(text, add_special_tokens=add_special_tokens)

    def encode_input(self, text: str) -> list[int]:
        """Token ids of ``text`` as the whole of a model's input (a prompt and the steps
        after it): BOS first where the tokenizer starts its inputs with one and the text
        does not already begin with it (chat-template output often does), as
        ``transformers`` encodes a prompt; otherwise ``encode(text)``."""
        ids = self.encode(text)
        bos = self._input_bos
        return ids if bos is None or ids[:1] == [bos] else [bos, *ids]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self._hf.decode(list(ids), skip_special_tokens=skip_special_tokens,
                               clean_up_tokenization_spaces=False)

    @property
    def has_chat_template(self) -> bool:
        return bool(self._hf.chat_template)

    def apply_chat_template(self, messages: Sequence[dict[str, str]]) -> str:
        """The prompt text for ``messages`` ({"role", "content"} dicts), ending with the
        assistant's generation prompt."""
        if not self.has_chat_template:
            raise ValueError("this tokenizer has no chat template; format the prompt yourself "
                             "or load a checkpoint whose tokenizer_config has one")
        return self._hf.apply_chat_template(list(messages), tokenize=False,
                                            add_generation_prompt=True)

    def newline_table(self, vocab_size: int) -> np.ndarray:
        """bool [vocab_size]: True where the token's text contains a newline.

        Each id is decoded on its own through the tokenizer's decoder, which maps byte-level
        symbols (``Ċ``) and byte-fallback pieces (``<0x0A>``) back to bytes. A token holding
        part of a multi-byte character decodes to U+FFFD, and since a newline byte is never
        part of a multi-byte UTF-8 sequence this cannot hide one. Ids past the tokenizer
        (model vocabularies are often padded) are False. Decoded once per size (every
        stage's decoder asks for it); the table returned is read-only.
        """
        return self._tables(vocab_size)[0]

    def blank_step_tables(self, vocab_size: int) -> BlankStepTables:
        """The tables with which a blank line joins the step after it instead of being a
        step (``decoding.line_tables``), read from the same decoded texts as
        ``newline_table``: ids past the tokenizer are neither."""
        return self._tables(vocab_size)[1]

    def _tables(self, vocab_size: int) -> tuple[np.ndarray, BlankStepTables]:
        if vocab_size not in self._token_tables:
            self._token_tables[vocab_size] = self._decoded_tables(vocab_size)
        return self._token_tables[vocab_size]

    def _decoded_tables(self, vocab_size: int) -> tuple[np.ndarray, BlankStepTables]:
        known = min(vocab_size, len(self._hf))
        texts = self._hf.batch_decode([[i] for i in range(known)], skip_special_tokens=False,
                                      clean_up_tokenization_spaces=False)

        def table(values: list[bool]) -> np.ndarray:
            out = np.zeros(vocab_size, dtype=bool)
            out[:known] = values
            out.flags.writeable = False
            return out

        return table(["\n" in text for text in texts]), BlankStepTables(
            blank_line=table(["\n" in text and not text.split("\n", 1)[0].strip()
                              for text in texts]),
            whitespace=table([not text.strip() for text in texts]))


class BlankStepTables(NamedTuple):
    """bool [V] tables on the host: ``blank_line``, the token holds a newline with only
    whitespace before it (it would end a blank step); ``whitespace``, its text is
    whitespace only (a blank step stays blank after it)."""

    blank_line: np.ndarray
    whitespace: np.ndarray


DEFAULT_CACHE_FOLDER = Path("~/.cache/qstar_jax/tokenizers")


def tokenizer_cache_folder() -> Path | None:
    """The folder the environment asks for, or None when the cache is off."""
    setting = os.environ.get("QSTAR_TOKENIZER_CACHE", str(DEFAULT_CACHE_FOLDER))
    return None if setting.strip().lower() == "off" else Path(setting).expanduser()


def _save_whole(hf_tokenizer: transformers.PreTrainedTokenizerBase, folder: Path) -> None:
    """Saves ``hf_tokenizer`` as ``folder``, all at once: written beside it and renamed,
    so a reader never sees half a folder (where another process got there first, or the
    cache cannot be written, nothing is kept and nothing fails)."""
    partial = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        hf_tokenizer.save_pretrained(partial)
        os.rename(partial, folder)
    except OSError:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
