"""A blank line joins the step after it: while a row's step is whitespace only, a newline
the line tables mark as ending a blank line ends nothing (``decoding/line_tables``), in
the step sampler, across its chunks and in the trie sampler alike; the drawn tokens are
the ones the model draws without the tables."""

import jax
import numpy as np
import pytest

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_sampler import EndReason
from qstar_jax.decoding.trie_steps import sample_trie_steps
from qstar_jax.models.tokenizer import BlankStepTables
from tests.decoding.tiny_models import COUNTING_MAX_LEN, COUNTING_VOCAB, STEP_BUCKET

# The counting model continues i with i + 1. Here tokens 7 and 12 hold a newline with
# nothing before it (they would end a blank line), 6 and 7 are whitespace, and no token
# is EOS.
NEWLINES = (7, 12)
PROMPTS = [[5], [4], [6], [11]]


def _table(ids) -> np.ndarray:
    out = np.zeros(COUNTING_VOCAB, bool)
    out[list(ids)] = True
    return out


def _tables(blank_line=NEWLINES, whitespace=(6, 7)) -> BlankStepTables:
    return BlankStepTables(blank_line=_table(blank_line), whitespace=_table(whitespace))


def _decoder(counting_model, blank_steps, step_chunk=0) -> Decoder:
    return Decoder(counting_model, num_slots=64, max_len=COUNTING_MAX_LEN,
                   newline_table=_table(NEWLINES), blank_steps=blank_steps, eos_ids=[],
                   min_batch_bucket=4, min_step_bucket=STEP_BUCKET, step_chunk=step_chunk)


def _keys(n) -> jax.Array:
    return jax.vmap(jax.random.key)(np.arange(n))


def _steps(decoder, prompts, cap=8, **settings):
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


def _trie_steps(decoder, prompts, count, cap=8, **settings):
    slots = decoder.allocate(len(prompts))
    decoder.prefill(slots, prompts)
    groups, _ = sample_trie_steps(decoder, slots, [count] * len(prompts),
                                  key_table=_keys(len(prompts)),
                                  key_rows=list(range(len(prompts))),
                                  group_ids=[0] * len(prompts),
                                  params=SamplingParams.make(len(prompts), **settings),
                                  max_tokens=cap)
    decoder.free([s.slot for steps in groups for s in steps])
    return [[(list(s.tokens), EndReason(s.end_reason)) for s in steps] for steps in groups]


# Greedy steps after PROMPTS with the tables: after [5], 6 (blank) and 7 (a newline with
# nothing before it: no end), then 8 to the newline 12; after [4] the step holds text, 5,
# when 7 comes, which ends it; after [6] the step opens with 7 and ends at 12; after [11]
# it opens with 12 and runs to its cap.
JOINED = [([6, 7, 8, 9, 10, 11, 12], EndReason.NEWLINE), ([5, 6, 7], EndReason.NEWLINE),
          ([7, 8, 9, 10, 11, 12], EndReason.NEWLINE),
          ([12, 13, 14, 15, 16, 17, 18, 19], EndReason.CAP)]


def test_a_blank_line_joins_the_step_after_it(counting_model):
    """Without the tables every one of these steps ends at its first newline."""
    assert _steps(_decoder(counting_model, None), PROMPTS) == [
        ([6, 7], EndReason.NEWLINE), ([5, 6, 7], EndReason.NEWLINE), ([7], EndReason.NEWLINE),
        ([12], EndReason.NEWLINE)]
    assert _steps(_decoder(counting_model, _tables()), PROMPTS) == JOINED
    # 6 no longer whitespace: the step after [5] holds text when 7 comes.
    assert _steps(_decoder(counting_model, _tables(whitespace=[7])), PROMPTS[:1]) == [
        ([6, 7], EndReason.NEWLINE)]


@pytest.mark.parametrize("step_chunk", [0, 1])
def test_chunks_and_tries_carry_a_steps_blankness(counting_model, step_chunk):
    """Sampled a token a chunk (the host tells each chunk whether the step so far is
    blank), or as a trie (resumed chunk by chunk from its rows' prefixes), the greedy
    steps are the same."""
    decoder = _decoder(counting_model, _tables(), step_chunk=step_chunk)
    assert _steps(decoder, PROMPTS) == JOINED
    assert _trie_steps(decoder, PROMPTS, count=2) == [[step] for step in JOINED]


@pytest.mark.parametrize("sampler", ["step", "trie"])
def test_the_tables_move_where_sampled_steps_end_not_what_they_draw(counting_model, sampler):
    """At temperature 50 the counting model draws near uniformly. With every token
    whitespace a step never ends at a newline (all run to the cap); with none, only a
    newline that opens a step is passed over. Either way each step's tokens are a prefix
    of the tokens drawn without the tables, which end at their first newline."""
    def drawn(tables, cap):
        decoder = _decoder(counting_model, tables)
        prompts = [[1]] * 8
        if sampler == "step":
            return _steps(decoder, prompts, cap=cap, temperature=50.0)
        # One trie per prompt (8 distinct keys), 8 draws each.
        return [s for group in _trie_steps(decoder, prompts, count=8, cap=cap,
                                           temperature=50.0) for s in group]

    always_blank = drawn(_tables(whitespace=range(COUNTING_VOCAB)), cap=12)
    assert {reason for _, reason in always_blank} == {EndReason.CAP}
    opening_only = drawn(_tables(whitespace=()), cap=12)
    for tokens, reason in opening_only:
        assert reason == EndReason.CAP or (
            reason == EndReason.NEWLINE and tokens[-1] in NEWLINES and len(tokens) > 1)
        assert not any(t in NEWLINES for t in tokens[1:-1])
    assert any(tokens[0] in NEWLINES for tokens, _ in opening_only)
    if sampler == "step":  # the same draws: a step's tokens do not depend on its end
        plain = drawn(None, cap=12)
        for (tokens, _), (without, _) in zip(always_blank, plain):
            assert tokens[:len(without)] == without


def test_tables_of_the_wrong_size_are_refused(counting_model):
    with pytest.raises(ValueError, match=r"blank_steps.whitespace must be a bool array of "
                                         r"shape \(32,\).*Tokenizer.blank_step_tables"):
        _decoder(counting_model, BlankStepTables(blank_line=np.zeros(COUNTING_VOCAB, bool),
                                                 whitespace=np.zeros(31, bool)))
