import jax
import numpy as np
import pytest

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.paged_cache import Paging
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.step_sampler import EndReason, end_reason_after
from tests.decoding.full_forward import greedy_reference
from tests.decoding.tiny_models import (COUNTING_EOS_ID, COUNTING_MAX_LEN, COUNTING_NEWLINE_ID,
                                        COUNTING_VOCAB, STEP_BUCKET)

PROMPTS = [[3, 14, 15, 9, 26], [5, 35, 8, 9, 7, 9, 32, 3, 8, 4, 6], [2, 7, 1]]
SAMPLED = dict(temperature=1.0, top_k=40, top_p=0.95)


def _keys(*seeds) -> jax.Array:
    return jax.vmap(jax.random.key)(np.array(seeds))


def test_greedy_steps_equal_the_full_forward_pass(random_decoder, full_forward):
    slots = random_decoder.allocate(3)
    random_decoder.prefill(slots, PROMPTS)
    caps = [[12, 5, 9], [4, 7, 2]]  # rows stop at different times, then continue
    histories = [list(p) for p in PROMPTS]
    for step_index, step_caps in enumerate(caps):
        step = random_decoder.sample_steps(slots, problem_keys=_keys(0, 1, 2), node_ids=[0, 0, 0],
                                           params=SamplingParams.make(3), max_tokens=step_caps)
        np.testing.assert_array_equal(step.num_tokens, step_caps)
        np.testing.assert_array_equal(step.end_reason, [EndReason.CAP] * 3)
        for row, history in enumerate(histories):
            tokens, logprobs, hidden = greedy_reference(full_forward, history, step_caps[row])
            assert step.row_tokens(row) == tokens, (step_index, row)
            np.testing.assert_allclose(step.logprobs[row, :step_caps[row]], logprobs, atol=1e-5)
            np.testing.assert_allclose(step.hidden[row], hidden, atol=1e-5)
            history.extend(tokens)
    np.testing.assert_array_equal(random_decoder.lengths(slots), [len(h) for h in histories])


def test_forked_slot_decodes_like_a_fresh_prefill(random_decoder):
    parent, child, fresh = random_decoder.allocate(3)
    random_decoder.prefill([parent], [PROMPTS[1]])
    first = random_decoder.sample_steps([parent], problem_keys=_keys(5), node_ids=[0],
                                        params=SamplingParams.make(1, **SAMPLED), max_tokens=6)
    random_decoder.fork([parent], [child])
    random_decoder.prefill([fresh], [PROMPTS[1] + first.row_tokens(0)])
    np.testing.assert_array_equal(random_decoder.lengths([parent, child, fresh]), [17, 17, 17])
    # All three continue with the same key and node id, so they must sample the same step.
    step = random_decoder.sample_steps([child, fresh, parent], problem_keys=_keys(9, 9, 9),
                                       node_ids=[3, 3, 3],
                                       params=SamplingParams.make(3, **SAMPLED), max_tokens=10)
    assert step.row_tokens(0) == step.row_tokens(1) == step.row_tokens(2)
    np.testing.assert_array_equal(step.logprobs[0], step.logprobs[2])
    np.testing.assert_array_equal(step.hidden[0], step.hidden[2])
    np.testing.assert_allclose(step.logprobs[0], step.logprobs[1], atol=1e-5)
    np.testing.assert_allclose(step.hidden[0], step.hidden[1], atol=1e-5)


def test_rows_do_not_depend_on_batch_company_or_order(random_decoder):
    params = dict(temperature=[1.0, 0.8, 1.2], top_k=[0, 20, 40], top_p=[0.9, 1.0, 0.95])

    def run(rows):
        slots = random_decoder.allocate(len(rows))
        random_decoder.prefill(slots, [PROMPTS[r] for r in rows])
        step = random_decoder.sample_steps(
            slots, problem_keys=_keys(*(10 + r for r in rows)), node_ids=[7 * r for r in rows],
            params=SamplingParams.make(len(rows), **{k: [v[r] for r in rows]
                                                     for k, v in params.items()}),
            max_tokens=12)
        random_decoder.free(slots)
        return {r: (step.row_tokens(i), step.logprobs[i], step.hidden[i])
                for i, r in enumerate(rows)}

    together = run([0, 1, 2])
    apart = {**run([2, 0]), **run([1])}
    for r in range(3):
        assert together[r][0] == apart[r][0]
        np.testing.assert_allclose(together[r][1], apart[r][1], atol=1e-5)
        np.testing.assert_allclose(together[r][2], apart[r][2], atol=1e-5)
    assert together[0][0] != together[2][0]  # sampling really is on


def test_a_token_is_drawn_by_its_problem_key_node_id_and_position(random_decoder,
                                                                 full_forward):
    """At temperature 30 (near uniform draws), row 0's tokens at positions 11-16 are the
    ones ``jax.random.categorical`` draws with ``fold_in(fold_in(key(9), 5), position)``
    from the full forward pass's logits; row 1 (the same prompt, key and node id) draws
    them again, and rows 2 and 3, another node id or another key, draw other steps."""
    slots = random_decoder.allocate(4)
    random_decoder.prefill(slots, [PROMPTS[1]] * 4)
    step = random_decoder.sample_steps(slots, problem_keys=_keys(9, 9, 9, 10),
                                       node_ids=[5, 5, 6, 5],
                                       params=SamplingParams.make(4, temperature=30.0),
                                       max_tokens=6)
    node_key = jax.random.fold_in(jax.random.key(9), 5)
    history = list(PROMPTS[1])
    for position in range(11, 17):
        logits = full_forward(history)[1][-1]
        history.append(int(jax.random.categorical(jax.random.fold_in(node_key, position),
                                                  logits / 30.0)))
    assert step.row_tokens(0) == step.row_tokens(1) == history[11:]
    assert step.row_tokens(2) != history[11:] and step.row_tokens(3) != history[11:]


def test_top_k_and_top_p_filter_the_steps_draws(random_decoder):
    """At temperature 30 the random model's draws are near uniform; top-k 1, or a top-p
    below the likeliest token's mass, leaves only the argmax: those rows sample the greedy
    step, each token's log-probability still under the unmodified distribution."""
    slots = random_decoder.allocate(4)
    random_decoder.prefill(slots, [PROMPTS[1]] * 4)
    step = random_decoder.sample_steps(
        slots, problem_keys=_keys(0, 1, 2, 3), node_ids=[0, 1, 2, 3],
        params=SamplingParams.make(4, temperature=[0.0, 30.0, 30.0, 30.0], top_k=[0, 1, 0, 0],
                                   top_p=[1.0, 1.0, 0.01, 1.0]),
        max_tokens=8)
    greedy = step.row_tokens(0)
    assert step.row_tokens(1) == step.row_tokens(2) == greedy
    np.testing.assert_allclose(step.logprobs[1], step.logprobs[0], atol=1e-5)
    np.testing.assert_allclose(step.logprobs[2], step.logprobs[0], atol=1e-5)
    assert step.row_tokens(3) != greedy  # unfiltered, the same temperature draws others


def test_each_row_ends_its_step_for_its_own_reason(counting_decoder):
    # The counting model continues i with i + 1; token 7 holds a newline, 9 is EOS.
    two_short_of_full = [(i - 9) % 32 for i in range(COUNTING_MAX_LEN - 2)]  # ends with 20
    prompts = [[1, 2, 3, 4], [6, 7], [10], two_short_of_full, [5], list(range(COUNTING_MAX_LEN))]
    caps = [16, 16, 4, 16, 2, 16]
    expected = [([5, 6, 7], EndReason.NEWLINE), ([8, 9], EndReason.EOS),
                ([11, 12, 13, 14], EndReason.CAP), ([21, 22], EndReason.CACHE_FULL),
                ([6, 7], EndReason.NEWLINE), ([], EndReason.CACHE_FULL)]
    slots = counting_decoder.allocate(6)
    counting_decoder.prefill(slots, prompts)
    step = counting_decoder.sample_steps(slots, problem_keys=_keys(*range(6)), node_ids=[0] * 6,
                                         params=SamplingParams.make(6), max_tokens=caps)
    got = [(step.row_tokens(i), EndReason(int(step.end_reason[i]))) for i in range(6)]
    assert got == expected
    np.testing.assert_array_equal(counting_decoder.lengths(slots),
                                  [len(p) + len(t) for p, (t, _) in zip(prompts, got)])


def test_a_whole_text_runs_past_newlines_to_eos_or_its_cap(counting_decoder):
    """``newline_ends=False`` (the text generator's texts): token 7 no longer ends the
    row; EOS and the cap still do, and no new variant is traced for it."""
    slots = counting_decoder.allocate(2)
    counting_decoder.prefill(slots, [[4], [1]])
    counting_decoder.sample_steps(slots, problem_keys=_keys(0, 1), node_ids=[0, 0],
                                  params=SamplingParams.make(2), max_tokens=[8, 3])
    traced = dict(counting_decoder.trace_counts)
    counting_decoder.prefill(slots, [[4], [1]])
    step = counting_decoder.sample_steps(slots, problem_keys=_keys(0, 1), node_ids=[0, 0],
                                         params=SamplingParams.make(2), max_tokens=[8, 3],
                                         newline_ends=False)
    assert [(step.row_tokens(i), EndReason(int(step.end_reason[i]))) for i in range(2)] == [
        ([5, 6, 7, 8, 9], EndReason.EOS), ([2, 3, 4], EndReason.CAP)]
    assert dict(counting_decoder.trace_counts) == traced


def test_a_host_check_between_chunks_ends_the_rows_it_calls_done(counting_model):
    """``done`` runs on each going row (its index in the call and its tokens) after every
    chunk (here 4 tokens): a row it calls complete ends there (EndReason.DONE) with the
    chunk's tokens; the others go on to their own ends."""
    newline_table = np.zeros(COUNTING_VOCAB, bool)
    newline_table[COUNTING_NEWLINE_ID] = True
    decoder = Decoder(counting_model, num_slots=4, max_len=COUNTING_MAX_LEN,
                      newline_table=newline_table, eos_ids=[COUNTING_EOS_ID],
                      min_batch_bucket=2, min_step_bucket=STEP_BUCKET, step_chunk=4)
    slots = decoder.allocate(2)
    decoder.prefill(slots, [[1], [10]])
    step = decoder.sample_steps(slots, problem_keys=_keys(0, 1), node_ids=[0, 0],
                                params=SamplingParams.make(2), max_tokens=12,
                                newline_ends=False,
                                done=lambda row, tokens: (3 if row == 0 else 15) in tokens)
    assert [(step.row_tokens(i), EndReason(int(step.end_reason[i]))) for i in range(2)] == [
        ([2, 3, 4, 5], EndReason.DONE), (list(range(11, 19)), EndReason.DONE)]
    np.testing.assert_array_equal(decoder.lengths(slots), [5, 9])


def test_a_host_check_that_raises_gives_back_the_pages_reserved_past_what_was_sampled(
        counting_model):
    """On pages a step reserves its cap's pages up front (1 + 12 tokens: 4 four-token
    pages a row); a ``done`` that raises after the first 4-token chunk leaves each row
    holding its 5 tokens' 2 pages, the rest back in the pool."""
    decoder = Decoder(counting_model, num_slots=4, max_len=COUNTING_MAX_LEN,
                      newline_table=np.zeros(COUNTING_VOCAB, bool), eos_ids=[],
                      min_batch_bucket=2, min_step_bucket=STEP_BUCKET, step_chunk=4,
                      paging=Paging(page_size=4, num_pages=16))
    slots = decoder.allocate(2)
    decoder.prefill(slots, [[1], [10]])

    def done(row, tokens):
        raise RuntimeError("the caller's check failed")
    with pytest.raises(RuntimeError, match="the caller's check failed"):
        decoder.sample_steps(slots, problem_keys=_keys(0, 1), node_ids=[0, 0],
                             params=SamplingParams.make(2), max_tokens=12, done=done)
    np.testing.assert_array_equal(decoder.lengths(slots), [5, 5])
    np.testing.assert_array_equal(decoder.pages.pages_held[slots], [2, 2])
    assert decoder.pages.num_free_pages == 12
    decoder.pages.check_counts()


def test_no_retrace_when_only_data_changes(random_decoder):
    def round_trip(seed, prompts, caps, params):
        slots = random_decoder.allocate(3)
        random_decoder.prefill(slots, prompts)
        random_decoder.fork(slots[:1], slots[2:])
        random_decoder.sample_steps(slots, problem_keys=_keys(seed, seed + 1, seed + 2),
                                    node_ids=[seed, 1, 2], params=params, max_tokens=caps)
        random_decoder.free(slots)

    round_trip(0, PROMPTS, 9, SamplingParams.make(3))
    warm = dict(random_decoder.trace_counts)
    round_trip(1, PROMPTS[::-1], [3, 16, 1], SamplingParams.make(3, **SAMPLED))
    round_trip(2, [[1] * 16, [4], [9, 9]], [16, 16, 16],
               SamplingParams.make(3, temperature=[0.0, 2.0, 0.5], top_k=[0, 1, 5]))
    assert warm["prefill"] >= 1 and warm["sample_step"] >= 1
    assert dict(random_decoder.trace_counts) == warm


def test_the_decoders_programs_are_named_for_what_they_run(random_decoder):
    """Each jitted decoder function's HLO module is jit_<its name>, as a profiler trace
    names the module its kernels ran in (experiments/device_trace.py)."""
    slots = random_decoder.allocate(1)
    random_decoder.prefill(slots, [[1, 2, 3]])
    random_decoder.sample_steps(slots, problem_keys=_keys(0), node_ids=[0],
                                params=SamplingParams.make(1), max_tokens=2)
    for name in ("prefill", "sample_step"):
        assert random_decoder.compiled_text(name).startswith(f"HloModule jit_{name},")


@pytest.mark.parametrize("layer_weights", ["per-layer", "stacked", "unrolled",
                                           "per-layer-transposed"])
def test_other_layer_weights_sample_what_the_cpu_default_samples(random_decoder, random_model,
                                                                 layer_weights):
    """A decoder that reads a per-layer copy as loaded, or scans the stacked layers (the
    default on TPU), rolled or unrolled, or reads a per-layer copy with transposed
    attention projections, samples the same steps as the CPU's default, a per-layer copy
    with every product as rows (run on this CPU by the row kernels' jnp reference)."""
    assert random_decoder.layer_weights == "per-layer-kernels"
    other = Decoder(random_model, num_slots=4, max_len=random_decoder.max_len,
                       newline_table=np.zeros(random_model.config.vocab_size, bool), eos_ids=[],
                       layer_weights=layer_weights)
    assert other.layer_weights == layer_weights
    steps = []
    for decoder in (random_decoder, other):
        slots = decoder.allocate(3)
        decoder.prefill(slots, PROMPTS)
        steps.append(decoder.sample_steps(slots, problem_keys=_keys(0, 1, 2), node_ids=[0, 1, 2],
                                          params=SamplingParams.make(3, **SAMPLED),
                                          max_tokens=9))
    np.testing.assert_array_equal(steps[0].tokens, steps[1].tokens)
    np.testing.assert_allclose(steps[0].hidden, steps[1].hidden, atol=1e-5)


def test_the_first_listed_end_reason_wins_when_several_hold():
    """``end_reason_after`` at each stop's boundary and where stops coincide: EOS, then
    newline, then a full slot, then the cap (``EndReason``'s order). Token 1 holds a
    newline, 2 is EOS, 3 is both (an EOS whose text holds a newline); slots hold 10."""
    newline_table = np.array([False, True, False, True])
    eos_ids = np.array([2, 3], np.int32)
    # (token, position after it, tokens sampled, cap) -> reason (-1: the step goes on)
    cases = [((0, 9, 3, 4), -1), ((0, 9, 4, 4), EndReason.CAP), ((0, 10, 3, 4),
             EndReason.CACHE_FULL), ((0, 10, 4, 4), EndReason.CACHE_FULL),
             ((1, 5, 1, 4), EndReason.NEWLINE), ((1, 10, 4, 4), EndReason.NEWLINE),
             ((2, 5, 1, 4), EndReason.EOS), ((2, 10, 4, 4), EndReason.EOS),
             ((3, 5, 1, 4), EndReason.EOS), ((3, 10, 4, 4), EndReason.EOS)]
    tokens, positions, num_tokens, caps = (np.array(column, np.int32)
                                           for column in zip(*(case for case, _ in cases)))
    reasons = end_reason_after(tokens, positions, num_tokens, caps, newline_table[tokens],
                               eos_ids, max_len=10)
    assert np.asarray(reasons).tolist() == [int(reason) for _, reason in cases]
