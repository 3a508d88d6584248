"""The Tokenizer wrapper on the tiny byte-level BPE (SmolLM2's is in test_smollm2.py)."""

from __future__ import annotations

import copy
import json
import re
import shutil

import pytest
import sentencepiece
import tokenizers
import transformers

from qstar_jax.models import CheckpointError, Tokenizer, load_model
from tests.models.byte_level import byte_level_newline_table
from tests.support.tiny_checkpoints import VOCAB_SIZE, save_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), "llama", with_tokenizer=True)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir) -> Tokenizer:
    return load_model(tiny_dir).tokenizer


def test_newline_table_marks_tokens_that_merge_newlines_with_text(tokenizer):
    table = tokenizer.newline_table(VOCAB_SIZE)
    hf = tokenizer.hf_tokenizer
    for text in [".\n", ".\n\n", ":\n", "?\n", "\n"]:
        ids = tokenizer.encode(text)
        assert len(ids) == 1, f"{text!r} should be one token of the tiny vocabulary"
        assert table[ids[0]]
    assert not table[tokenizer.encode("Step")].any()
    assert (table == byte_level_newline_table(hf, VOCAB_SIZE)).all()
    assert not table[tokenizer.vocab_size:].any()  # model ids past the tokenizer


def test_newline_table_handles_partial_utf8_tokens(tokenizer):
    # "×" is two bytes; its lone lead byte decodes to U+FFFD, which is not a newline.
    lead_byte_id = tokenizer.hf_tokenizer.convert_tokens_to_ids("Ã")
    assert tokenizer.decode([lead_byte_id]) == "\ufffd"
    assert not tokenizer.newline_table(VOCAB_SIZE)[lead_byte_id]


def test_blank_step_tables_mark_tokens_that_would_end_a_blank_line(tokenizer):
    """``blank_line``: a newline with only whitespace before it in the token (it would end
    a step that is blank so far); ``whitespace``: the token's text is whitespace only.
    Read from the same decoded texts as the newline table."""
    tables = tokenizer.blank_step_tables(VOCAB_SIZE)
    newline = tokenizer.newline_table(VOCAB_SIZE)

    def one(text):
        ids = tokenizer.encode(text)
        assert len(ids) == 1, f"{text!r} should be one token of the tiny vocabulary"
        return ids[0]

    for text, blank_line, whitespace in [("\n", True, True), ("\n\n", True, True),
                                         (".\n", False, False), (":\n", False, False),
                                         (" ", False, True), ("Step", False, False)]:
        token = one(text)
        assert (tables.blank_line[token], tables.whitespace[token]) == (blank_line, whitespace)
    decoded = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
    assert tables.blank_line[:tokenizer.vocab_size].tolist() == [
        "\n" in text and not text.split("\n")[0].strip() for text in decoded]
    assert not (tables.blank_line & ~newline).any()
    assert not tables.blank_line[tokenizer.vocab_size:].any()
    assert not tables.whitespace[tokenizer.vocab_size:].any()
    assert not tables.whitespace.flags.writeable


def test_encode_decode_round_trip(tokenizer):
    text = "Step 1: 8 × 3 = 24.\n\nCafé\n"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode(text, add_special_tokens=True) == ids  # no BOS post-processor here


def test_chat_template_ends_with_generation_prompt(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert tokenizer.has_chat_template
    assert tokenizer.apply_chat_template(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_eos_pad_and_vocab_size(tokenizer):
    assert tokenizer.eos_ids == (2,)
    assert tokenizer.decode(tokenizer.eos_ids) == "<|im_end|>"
    assert tokenizer.pad_id == 0
    assert tokenizer.vocab_size == len(tokenizer.hf_tokenizer) == 420


def test_generation_config_adds_eos_ids(tiny_dir, tmp_path):
    directory = shutil.copytree(tiny_dir, tmp_path / "copy")
    generation_config = directory / "generation_config.json"
    config = json.loads(generation_config.read_text())
    generation_config.write_text(json.dumps({**config, "eos_token_id": [2, 1]}))
    assert load_model(directory).tokenizer.eos_ids == (2, 1)
    generation_config.write_text(json.dumps({**config, "eos_token_id": 1}))  # one id, bare
    assert load_model(directory).tokenizer.eos_ids == (2, 1)


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(tiny_dir, tmp_path):
    directory = shutil.copytree(tiny_dir, tmp_path / "copy")
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    hf.add_tokens([f"<extra_{i}>" for i in range(VOCAB_SIZE + 1 - len(hf))])
    hf.save_pretrained(directory)
    with pytest.raises(CheckpointError, match=re.escape(
            f"{directory}: the tokenizer has 513 tokens but the model's vocabulary is 512; "
            "the tokenizer does not belong to this model")):
        load_model(directory)


def test_config_eos_ids_are_stop_ids_too(tiny_dir, tmp_path):
    """As Llama-3-Instruct's config.json lists its end-of-turn id beside the tokenizer's
    EOS: the tokenizer's, then the config's, then the generation config's, once each."""
    directory = shutil.copytree(tiny_dir, tmp_path / "copy")
    for name, eos in (("config.json", [3, 2]), ("generation_config.json", [2, 1, 3])):
        path = directory / name
        path.write_text(json.dumps({**json.loads(path.read_text()), "eos_token_id": eos}))
    assert load_model(directory).tokenizer.eos_ids == (2, 3, 1)


def byte_fallback_tokenizer() -> Tokenizer:
    """A Llama-2-style vocabulary: "▁" word pieces, <0xNN> byte pieces for everything else."""
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)),
              "▁", "t", "h", "e", ".", "▁t", "▁th", "▁the", "▁the.", ".\n"]
    merges = [("▁", "t"), ("▁t", "h"), ("▁th", "e"), ("▁the", ".")]
    model = tokenizers.models.BPE({p: i for i, p in enumerate(pieces)}, merges,
                                  unk_token="<unk>", byte_fallback=True)
    tok = tokenizers.Tokenizer(model)
    tok.normalizer = tokenizers.normalizers.Sequence([
        tokenizers.normalizers.Prepend("▁"), tokenizers.normalizers.Replace(" ", "▁")])
    tok.decoder = tokenizers.decoders.Sequence([
        tokenizers.decoders.Replace("▁", " "), tokenizers.decoders.ByteFallback(),
        tokenizers.decoders.Fuse(), tokenizers.decoders.Strip(" ", 1, 0)])
    return Tokenizer(transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"))


def test_without_a_pad_token_eos_pads_and_without_an_eos_the_configs_must_name_one():
    tokenizer = byte_fallback_tokenizer()
    assert tokenizer.hf_tokenizer.pad_token_id is None
    assert tokenizer.pad_id == tokenizer.eos_ids[0] == 2  # "</s>"
    assert not tokenizer.has_chat_template
    with pytest.raises(ValueError, match="^this tokenizer has no chat template; format"):
        tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}])
    without_eos = copy.deepcopy(tokenizer.hf_tokenizer)
    without_eos.eos_token = None
    assert Tokenizer(without_eos, extra_eos_ids=(5, 7, 5)).eos_ids == (5, 7)
    with pytest.raises(ValueError, match="^the tokenizer defines no EOS token and the model "
                                         "config names none, so generation could never stop"):
        Tokenizer(without_eos)


def test_newline_table_on_byte_fallback_pieces():
    tokenizer = byte_fallback_tokenizer()
    hf = tokenizer.hf_tokenizer
    newline_byte, lead_byte = hf.convert_tokens_to_ids(["<0x0A>", "<0xE2>"])
    assert newline_byte in tokenizer.encode("the\nthe")  # "\n" is not a piece: bytes
    table = tokenizer.newline_table(300)
    assert table[newline_byte] and table[hf.convert_tokens_to_ids(".\n")]
    assert not table[lead_byte]  # the first byte of a 3-byte character
    assert not table[hf.convert_tokens_to_ids(["▁the", "</s>"])].any()
    assert table.sum() == 2


def test_the_newline_table_is_decoded_once_per_size_and_read_only(tokenizer):
    table = tokenizer.newline_table(VOCAB_SIZE)
    assert tokenizer.newline_table(VOCAB_SIZE) is table  # every stage's decoder asks
    assert tokenizer.newline_table(VOCAB_SIZE + 8) is not table
    with pytest.raises(ValueError, match="read-only"):
        table[0] = True


def test_a_directory_with_only_a_sentencepiece_model_loads_as_sentencepiece_reads_it(tmp_path):
    """Llama-2-era checkpoints often ship tokenizer.model (SentencePiece) and no
    tokenizer.json: transformers converts it, which needs sentencepiece installed."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Step 1: 12 + 7 = 19.\nThe answer is 19.\n" * 50)
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=300,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, minloglevel=2)
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    shutil.copy(tmp_path / "sp.model", directory / "tokenizer.model")
    (directory / "tokenizer_config.json").write_text(json.dumps({  # as Llama-2's reads
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}))
    tokenizer = Tokenizer.from_pretrained(directory)
    reference = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    text = "Step 2: 19 - 4 = 15.\nThe answer is 15."
    assert tokenizer.encode("Step 2: 19 - 4 = 15.") == reference.encode("Step 2: 19 - 4 = 15.")
    assert tokenizer.encode(text, add_special_tokens=True)[0] == reference.bos_id()
    assert tokenizer.decode(tokenizer.encode(text)) == text
    newline = reference.piece_to_id("<0x0A>")
    assert newline in tokenizer.encode(text)
    table = tokenizer.newline_table(300)
    assert table[newline] and table.sum() == 1
    assert tokenizer.eos_ids == (reference.eos_id(),)


def test_a_models_input_starts_with_bos_where_its_tokenizer_starts_inputs_with_one():
    """As transformers encodes a prompt: Llama-2's tokenizer adds BOS to every input, so a
    plain-text prompt gets it; chat-template output that begins with it keeps one; a
    tokenizer that adds none (SmolLM2's, the from-scratch policy's) is unchanged."""
    plain = byte_fallback_tokenizer()
    assert plain.encode_input("the.") == plain.encode("the.") == [267]
    hf = copy.deepcopy(plain.hf_tokenizer)
    hf._tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)])
    with_bos = Tokenizer(hf)
    assert with_bos.encode("the.") == [267]
    for text in ("the.", "t\nthe.", ""):
        assert with_bos.encode_input(text) == hf(text).input_ids == [1, *with_bos.encode(text)]
    assert with_bos.encode_input("<s>the.") == [1, 267]  # not a second BOS
