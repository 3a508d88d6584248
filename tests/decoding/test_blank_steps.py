"""A step that would end blank: while a row's step is whitespace only, the tokens the
line tables mark as ending a blank line are not drawn (``decoding/line_tables``), in the
step sampler, across its chunks and in the trie sampler alike."""

import jax
import numpy as np
import pytest

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_sampler import EndReason
from qstar_jax.decoding.trie_steps import sample_trie_steps
from qstar_jax.models.tokenizer import BlankStepTables
from tests.decoding.tiny_models import (COUNTING_EOS_ID, COUNTING_MAX_LEN, COUNTING_NEWLINE_ID,
                                        COUNTING_VOCAB, STEP_BUCKET)

# The counting model continues i with i + 1; token 7 holds a newline, 9 is EOS.
PROMPTS = [[5], [4], [6], [8]]


def _tables(blank_line=(), whitespace=()) -> BlankStepTables:
    def table(ids):
        out = np.zeros(COUNTING_VOCAB, bool)
        out[list(ids)] = True
        return out
    return BlankStepTables(blank_line=table(blank_line), whitespace=table(whitespace))


def _decoder(counting_model, blank_steps, step_chunk=0) -> Decoder:
    newline_table = np.zeros(COUNTING_VOCAB, bool)
    newline_table[COUNTING_NEWLINE_ID] = True
    return Decoder(counting_model, num_slots=64, max_len=COUNTING_MAX_LEN,
                   newline_table=newline_table, blank_steps=blank_steps,
                   eos_ids=[COUNTING_EOS_ID], min_batch_bucket=4,
                   min_step_bucket=STEP_BUCKET, step_chunk=step_chunk)


def _keys(n) -> jax.Array:
    return jax.vmap(jax.random.key)(np.arange(n))


def _steps(decoder, prompts, cap=6, **settings):
    slots = decoder.allocate(len(prompts))
    decoder.prefill(slots, prompts)
    step = decoder.sample_steps(slots, problem_keys=_keys(len(prompts)),
                                node_ids=[0] * len(prompts),
                                params=SamplingParams.make(len(prompts), **settings),
                                max_tokens=cap)
    out = [(step.row_tokens(i), EndReason(int(step.end_reason[i])))
           for i in range(len(prompts))]
    decoder.free(slots)
    return out


def _trie_steps(decoder, prompts, count, cap=6, **settings):
    slots = decoder.allocate(len(prompts))
    decoder.prefill(slots, prompts)
    groups, _ = sample_trie_steps(decoder, slots, [count] * len(prompts),
                                  key_table=_keys(len(prompts)),
                                  key_rows=list(range(len(prompts))),
                                  group_ids=[0] * len(prompts),
                                  params=SamplingParams.make(len(prompts), **settings),
                                  max_tokens=cap)
    decoder.free([s.slot for steps in groups for s in steps])
    return [[(list(s.tokens), s.end_reason) for s in steps] for steps in groups]


def test_a_blank_step_does_not_end_while_a_step_with_text_does(counting_model):
    """Token 6 is whitespace and 7 would end a blank line. After [5] the greedy step
    takes 6 (still blank) and then not 7; after [6] it does not open with 7; after [4]
    the step holds 5, text, and ends at 7 as before; EOS still ends a blank step. Without
    the tables every one of these ends at 7."""
    plain = _steps(_decoder(counting_model, None), PROMPTS)
    assert plain == [([6, 7], EndReason.NEWLINE), ([5, 6, 7], EndReason.NEWLINE),
                     ([7], EndReason.NEWLINE), ([9], EndReason.EOS)]
    banned = _steps(_decoder(counting_model, _tables(blank_line=[7], whitespace=[6])),
                    PROMPTS)
    after_blank, with_text, opening, eos = banned
    assert after_blank[0][0] == 6 and after_blank[0][1] != 7
    assert with_text == ([5, 6, 7], EndReason.NEWLINE)
    assert opening[0][0] != 7
    assert eos == ([9], EndReason.EOS)


def test_chunks_and_tries_carry_a_steps_blankness(counting_model):
    """Sampled a token a chunk (the host tells each chunk whether the step so far is
    blank), or as a trie (resumed chunk by chunk from its rows' prefixes), the greedy
    steps are the one-call step sampler's."""
    tables = _tables(blank_line=[7], whitespace=[6])
    whole = _steps(_decoder(counting_model, tables), PROMPTS)
    assert _steps(_decoder(counting_model, tables, step_chunk=1), PROMPTS) == whole
    for step_chunk in (0, 1):
        tries = _trie_steps(_decoder(counting_model, tables, step_chunk=step_chunk), PROMPTS,
                            count=2)
        assert [[(tokens, EndReason(reason)) for tokens, reason in group]
                for group in tries] == [[step] for step in whole]


@pytest.mark.parametrize("sampler", ["step", "trie"])
def test_sampled_steps_never_draw_a_blank_lines_token_while_blank(counting_model, sampler):
    """At temperature 50 the counting model draws near uniformly. With every token
    whitespace, a step stays blank throughout and 7 is never drawn; with none, only a
    step's first token is kept from it, and 7 ends some steps later on."""
    def drawn(tables):
        decoder = _decoder(counting_model, tables)
        prompts = [[1]] * 8
        if sampler == "step":
            return [t for t, _ in _steps(decoder, prompts, cap=12, temperature=50.0)]
        # One trie per prompt (8 distinct keys), 8 draws each.
        return [t for group in _trie_steps(decoder, prompts, count=8, cap=12,
                                           temperature=50.0) for t, _ in group]

    always_blank = drawn(_tables(blank_line=[7], whitespace=range(COUNTING_VOCAB)))
    assert all(7 not in tokens for tokens in always_blank)
    assert sum(len(tokens) for tokens in always_blank) > 40
    first_only = drawn(_tables(blank_line=[7]))
    assert all(tokens[0] != 7 for tokens in first_only)
    assert any(tokens[-1] == 7 for tokens in first_only)


def test_a_whole_text_is_not_held_to_the_step_rule(counting_model):
    """``newline_ends=False``: nothing ends a text at a newline, and nothing is banned."""
    decoder = _decoder(counting_model, _tables(blank_line=[7], whitespace=[6]))
    slots = decoder.allocate(1)
    decoder.prefill(slots, [[6]])
    step = decoder.sample_steps(slots, problem_keys=_keys(1), node_ids=[0],
                                params=SamplingParams.make(1), max_tokens=6,
                                newline_ends=False)
    assert (step.row_tokens(0), EndReason(int(step.end_reason[0]))) == ([7, 8, 9],
                                                                        EndReason.EOS)


def test_tables_of_the_wrong_size_are_refused(counting_model):
    with pytest.raises(ValueError, match=r"blank_steps.whitespace must be a bool array of "
                                         r"shape \(32,\).*Tokenizer.blank_step_tables"):
        _decoder(counting_model, BlankStepTables(blank_line=np.zeros(COUNTING_VOCAB, bool),
                                                 whitespace=np.zeros(31, bool)))
