"""``PolicyRuntime``'s steps and texts on real decoders: a step's text is its first line
with EOS left out, its tokens all it sampled (EOS and newline included), its log
probability and hidden state those of its own row; a step ends the trace at EOS, a full
row or a final-answer line, and one cut at its token cap gets a line break and goes on.
Over a recording decoder: what it prefills for a problem, the key, filters and caps each
draw is made with, and when a text counts as done."""

import jax
import numpy as np
import pytest

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.kv_cache import SlotPoolExhausted
from qstar_jax.decoding.step_chunks import StepBatch
from qstar_jax.decoding.step_sampler import EndReason
from qstar_jax.models.gguf_checkpoint import check_gguf_checkpoint
from qstar_jax.models.loading import checkpoint_tokenizer, resolve_alias
from qstar_jax.models.tokenizer import BlankStepTables
from qstar_jax.policy import runtime as runtime_module
from qstar_jax.policy.runtime import (PolicyRuntime, PromptTooLong, line_break_token,
                                      stable_id, step_line)
from qstar_jax.qvalue.dataset import StepPair
from qstar_jax.qvalue.features import StepFeatures, step_texts
from qstar_jax.tasks.base import Problem, state_text
from tests.decoding.tiny_models import (COUNTING_EOS_ID, COUNTING_MAX_LEN,
                                        COUNTING_NEWLINE_ID, COUNTING_VOCAB, STEP_BUCKET)
from tests.models.test_tokenizer import byte_fallback_tokenizer


class Letters:
    """Token i reads as the i-th letter, but the newline token also carries text past its
    newline (a merged token) and EOS reads as "<eos>"."""

    def decode(self, ids):
        return "".join("\n!" if i == COUNTING_NEWLINE_ID else "<eos>" if i == COUNTING_EOS_ID
                       else chr(ord("a") + i) for i in ids)

    def encode(self, text):
        assert text == "\n", "only the line break a step cut at its cap gets is encoded"
        return [COUNTING_NEWLINE_ID]


class FLinesAnswer:
    """A line is a final answer when it holds an "f" (and is one line)."""

    def is_terminal_step(self, text):
        assert "\n" not in text, "the task is asked about one line"
        return "f" in text


def _runtime(decoder, problems, cap):
    return PolicyRuntime(decoder, Letters(), FLinesAnswer(),
                         [Problem(id=f"p{i}", question="", reference=None)
                          for i in range(problems)], [""] * problems, seed=0,
                         step_token_cap=cap)


def test_a_steps_text_tokens_and_end_follow_why_its_row_stopped(counting_decoder):
    """The counting model's greedy token after i is i + 1; 7 is the newline, 9 EOS."""
    runtime = _runtime(counting_decoder, 3, cap=5)
    prompts = [[3], [5], [7], [10], [0] * (COUNTING_MAX_LEN - 3) + [20]]
    problems = [0, 1, 0, 1, 2]
    slots = runtime.prefill_tokens(problems, prompts)
    steps = runtime.sample(slots, problems, node_ids=[0] * 5, temperatures=[0.0] * 5)
    assert [(s.text, s.token_ids, s.ends_trace) for s in steps] == [
        ("efg", (4, 5, 6, 7), True),       # NEWLINE on a final-answer line
        ("g", (6, 7), False),              # NEWLINE on another line: the trace goes on
        ("!i", (8, 9), True),              # EOS: kept in the tokens, not in the text;
        #                                    its row's merged newline carried the "!"
        ("lmnop", (11, 12, 13, 14, 15, 7), False),  # CAP: a line break written, goes on
        ("vw", (21, 22), True),            # CACHE_FULL
    ]
    assert [s.slot for s in steps] == slots
    np.testing.assert_array_equal(np.stack([s.hidden for s in steps]),
                                  np.asarray(counting_decoder.cache.last_hidden)[slots])
    assert counting_decoder.lengths(slots).tolist() == [5, 3, 3, 7, COUNTING_MAX_LEN]
    assert dict(runtime.generated) == {0: 4 + 2, 1: 2 + 6, 2: 2}
    assert dict(runtime.prefilled) == {0: 2, 1: 2, 2: COUNTING_MAX_LEN - 2}
    # The cut step's slot goes on after its line break: greedy 8, then EOS.
    [after] = runtime.sample([slots[3]], [1], node_ids=[1], temperatures=[0.0])
    assert (after.text, after.token_ids, after.ends_trace) == ("i", (8, 9), True)
    # The step after one that ended at the merged newline opens with what it carried.
    [after] = runtime.sample([slots[1]], [1], node_ids=[1], temperatures=[0.0])
    assert (after.text, after.token_ids, after.ends_trace) == ("!i", (8, 9), True)


class Spaced(Letters):
    """Token 6 reads as a space, the newline token as a newline alone and EOS's id as a
    letter (the decoder here has no EOS)."""

    def decode(self, ids):
        return "".join({6: " ", COUNTING_NEWLINE_ID: "\n", COUNTING_EOS_ID: "j"}.get(i)
                       or Letters.decode(self, [i])
                       for i in ids)


def _blank_steps_runtime(counting_model, cap: int) -> PolicyRuntime:
    """A runtime whose decoder has blank-step tables: 6 and 7 whitespace, 7 a newline with
    nothing before it."""
    decoder = Decoder(counting_model, num_slots=4, max_len=COUNTING_MAX_LEN,
                      newline_table=np.arange(COUNTING_VOCAB) == COUNTING_NEWLINE_ID,
                      blank_steps=BlankStepTables(
                          blank_line=np.arange(COUNTING_VOCAB) == COUNTING_NEWLINE_ID,
                          whitespace=np.isin(np.arange(COUNTING_VOCAB), [6, 7])),
                      eos_ids=[], min_batch_bucket=2, min_step_bucket=STEP_BUCKET)
    return PolicyRuntime(decoder, Spaced(), FLinesAnswer(),
                         [Problem(id="p0", question="", reference=None)], [""], seed=0,
                         step_token_cap=cap)


def test_a_blank_line_is_the_start_of_the_steps_text_and_the_task_reads_its_last_line(
        counting_model):
    """A step that opens with a blank line goes on past it: its text keeps the blank line,
    so the trace's text is what the row holds, and the task is asked whether its last line
    ends the trace."""
    runtime = _blank_steps_runtime(counting_model, cap=5)
    slots = runtime.prefill_tokens([0, 0], [[5], [2]])
    steps = runtime.sample(slots, [0, 0], node_ids=[0, 1], temperatures=[0.0, 0.0])
    assert [(s.text, s.token_ids, s.ends_trace) for s in steps] == [
        (" \nijk", (6, 7, 8, 9, 10, 7), False),  # cut at the cap: a line break written
        ("def ", (3, 4, 5, 6, 7), True)]          # its newline follows text: "f" answers
    row = Spaced().decode([5, *steps[0].token_ids])
    assert row == state_text(Spaced().decode([5]), [steps[0].text])


def test_a_step_of_blank_lines_alone_cut_at_its_cap_keeps_them_all_in_its_text(
        counting_model):
    runtime = _blank_steps_runtime(counting_model, cap=2)
    slots = runtime.prefill_tokens([0], [[5]])
    [step] = runtime.sample(slots, [0], node_ids=[0], temperatures=[0.0])
    assert (step.text, step.token_ids, step.ends_trace) == (" \n", (6, 7, 7), False)
    row = Spaced().decode([5, *step.token_ids])
    assert row == state_text(Spaced().decode([5]), [step.text])


@pytest.mark.parametrize("decoded, text, carry", [
    ("abc\ndef", "abc", "def"), ("\n\nThe answer\nmore", "\n\nThe answer", "more"),
    (" \n", " ", ""), ("\n\n", "", "\n"), ("    return x\n", "    return x", ""),
    ("x.\n\n", "x.", "\n"), ("def f(x):\n   ", "def f(x):", "   ")])
def test_a_step_ended_at_a_newline_runs_to_the_first_newline_after_some_text(
        decoded, text, carry):
    """What follows that newline (a merged token's indentation) is the next line's."""
    assert step_line(decoded, ended_at_newline=True) == (text, carry)


@pytest.mark.parametrize("decoded", ["abc", "  \n  x", "\n\n \n", ""])
def test_a_step_ended_otherwise_is_all_its_text(decoded):
    """Cut at its cap or at EOS: it holds no newline after text, and a step of blank
    lines alone (they join the next step, and the cap came first) is its blank lines."""
    assert step_line(decoded, ended_at_newline=False) == (decoded, "")


def test_a_step_drawn_twice_in_a_trie_and_cut_at_its_cap_has_its_line_break_in_both_slots(
        counting_decoder):
    runtime = _runtime(counting_decoder, 1, cap=5)
    [slot] = runtime.prefill_tokens([0], [[10]])
    [steps] = runtime.sample_trie([slot], [0], group_ids=[3], temperatures=[0.0], counts=[2])
    assert [(s.text, s.token_ids, s.ends_trace) for s in steps] == [
        ("lmnop", (11, 12, 13, 14, 15, 7), False)] * 2
    slots = [s.slot for s in steps]
    assert slots[0] == slot and counting_decoder.lengths(slots).tolist() == [7, 7]
    assert dict(runtime.generated) == {0: 5 + 1}  # the trie's 5 tokens and one line break
    np.testing.assert_array_equal(steps[1].hidden, steps[0].hidden)
    after = runtime.sample(slots, [0, 0], node_ids=[1, 2], temperatures=[0.0, 0.0])
    assert [(s.text, s.token_ids) for s in after] == [("i", (8, 9))] * 2


def test_what_a_merged_newline_carries_opens_the_next_step_in_forks_tries_and_not_after_free(
        counting_decoder):
    """The newline token reads as "\\n!": the "!" is the next line's start (SmolLM2 writes
    a newline and the next line's indentation as one token), so every step after it,
    sampled in its slot, a fork of it or a trie over it, opens with "!", and the trace's
    text is what the row holds. A slot freed and taken again carries nothing."""
    runtime = _runtime(counting_decoder, 1, cap=5)
    [slot] = runtime.prefill_tokens([0], [[5]])
    [step] = runtime.sample([slot], [0], node_ids=[0], temperatures=[0.0])
    assert (step.text, step.token_ids, step.carry) == ("g", (6, 7), "!")
    [forks] = runtime.fork([slot], [1])
    [[in_trie, copy]] = runtime.sample_trie([slot], [0], group_ids=[1], temperatures=[0.0],
                                            counts=[2])
    [forked] = runtime.sample(forks, [0], node_ids=[2], temperatures=[0.0])
    assert [(s.text, s.token_ids) for s in (in_trie, copy, forked)] == [("!i", (8, 9))] * 3
    row = Letters().decode([5, *step.token_ids, *forked.token_ids[:-1]])
    assert row == state_text(Letters().decode([5]), [step.text]) + forked.text
    runtime.free([in_trie.slot, copy.slot, *forks])
    [fresh] = runtime.prefill_tokens([0], [[10]])
    assert fresh in (in_trie.slot, copy.slot, *forks)
    [step] = runtime.sample([fresh], [0], node_ids=[3], temperatures=[0.0])
    assert step.text == "lmnop"


def test_a_text_leaves_out_eos_and_stops_at_its_answer_line(counting_decoder):
    runtime = _runtime(counting_decoder, 2, cap=5)
    slots = runtime.prefill_tokens([0, 1], [[1], [5]])
    answer, plain = runtime.sample_texts(slots, [0, 1], node_ids=[0, 0],
                                         temperatures=[0.0, 0.0], max_tokens=[12, 12])
    # 2..6, the newline, 8 and EOS: the first line is an answer, so the text ends there.
    assert answer.text == "cdefg" and answer.token_ids == (2, 3, 4, 5, 6, 7, 8, 9)
    assert plain.text == "g\n!i" and plain.token_ids == (6, 7, 8, 9)
    assert dict(runtime.generated) == {0: 8, 1: 4}


def test_a_text_says_whether_it_was_cut_at_its_token_limit_or_a_full_row(counting_decoder):
    """Cut: 2, 3, 4 at its limit of 3, and a row with 3 places left; not cut: 6..EOS."""
    runtime = _runtime(counting_decoder, 3, cap=5)
    slots = runtime.prefill_tokens([0, 1, 2], [[1], [5], [0] * (COUNTING_MAX_LEN - 4) + [10]])
    capped, ended, full = runtime.sample_texts(slots, [0, 1, 2], node_ids=[0, 0, 0],
                                               temperatures=[0.0] * 3, max_tokens=[3, 12, 12])
    assert capped.token_ids == (2, 3, 4) and capped.cut
    assert ended.token_ids == (6, 7, 8, 9) and not ended.cut
    assert full.token_ids == (11, 12, 13) and full.cut


def test_a_steps_log_probability_and_hidden_state_are_its_own_rows(random_decoder,
                                                                   full_forward):
    runtime = _runtime(random_decoder, 2, cap=4)
    prompts = [[3, 1, 4], [2, 7]]
    slots = runtime.prefill_tokens([0, 1], prompts)
    steps = runtime.sample(slots, [0, 1], node_ids=[5, 6], temperatures=[30.0, 30.0])
    for prompt, step in zip(prompts, steps):
        # CAP (no newline or EOS ids): 4 tokens sampled, then the line break written.
        assert len(step.token_ids) == 5 and step.token_ids[-1] == COUNTING_NEWLINE_ID
        assert not step.ends_trace
        hidden, logits = full_forward(prompt + list(step.token_ids))
        np.testing.assert_allclose(step.hidden, hidden[-1], atol=1e-4)
        logprobs = jax.nn.log_softmax(logits[len(prompt) - 1:-1], axis=-1)
        expected = float(sum(logprobs[i, t] for i, t in enumerate(step.token_ids)))
        assert step.logprob == pytest.approx(expected, abs=1e-3)
    assert steps[0].logprob != pytest.approx(steps[1].logprob, abs=1e-2)


def test_a_cut_step_is_ended_by_the_separators_own_token_where_it_encodes_as_two():
    """A Llama-2-style tokenizer encodes "\n" as "▁" and the byte piece "<0x0A>"; SmolLM2's
    as one token, "Ċ"."""
    llama_style = byte_fallback_tokenizer()
    assert line_break_token(llama_style) == \
        llama_style.hf_tokenizer.convert_tokens_to_ids("<0x0A>")
    assert len(llama_style.encode("\n")) == 2
    assert line_break_token(Letters()) == COUNTING_NEWLINE_ID


class Glyphs:
    """Token i reads as one character of its own, the newline token as a newline: a text
    encodes back to the tokens it was decoded from."""

    pad_id = 0

    def decode(self, ids):
        return "".join("\n" if i == COUNTING_NEWLINE_ID else chr(0x100 + i) for i in ids)

    def encode(self, text):
        return [COUNTING_NEWLINE_ID if c == "\n" else ord(c) - 0x100 for c in text]

    encode_input = encode  # no BOS


def test_a_step_cut_at_its_cap_has_the_features_labelling_reads_from_its_text(
        random_decoder, random_model):
    """Q̂ reads the same hidden state and log-probability of a cut step at search time as
    the label stage computes from the trace's text (the step ended by the separator), and
    the next step, sampled from the step's slot, is the one sampled after a prefill of
    that text."""
    prompt = Glyphs().decode([3, 1, 4, 1, 5])
    runtime = PolicyRuntime(random_decoder, Glyphs(), FLinesAnswer(),
                            [Problem(id="p0", question="", reference=None)], [prompt], seed=0,
                            step_token_cap=4)
    [slot] = runtime.prefill([0], [()])
    [cut] = runtime.sample([slot], [0], node_ids=[5], temperatures=[30.0])
    assert len(cut.text) == 4 and not cut.ends_trace  # 4 tokens, none a newline
    [next_step] = runtime.sample([slot], [0], node_ids=[7], temperatures=[30.0])
    assert len(next_step.text) == 4 and not next_step.ends_trace  # cut too
    [fresh] = runtime.prefill([0], [(cut.text,)])
    [from_text] = runtime.sample([fresh], [0], node_ids=[7], temperatures=[30.0])
    assert from_text.token_ids == next_step.token_ids
    items = [StepPair(problem_index=0, prefix_steps=(), step_text=cut.text),
             StepPair(problem_index=0, prefix_steps=(cut.text,),
                      step_text=next_step.text)]
    hidden, logprob = StepFeatures(random_model, Glyphs())(*step_texts([prompt], items))
    for k, step in enumerate([cut, next_step]):
        np.testing.assert_allclose(step.hidden, hidden[k], rtol=1e-4, atol=1e-4)
        assert step.logprob == pytest.approx(float(logprob[k]), abs=1e-3)


def test_a_prompt_forked_from_a_slot_computes_and_is_charged_only_past_the_shared_tokens(
        random_decoder):
    runtime = _runtime(random_decoder, 2, cap=4)
    parents = runtime.prefill_tokens([0, 1], [[3, 1, 4, 1, 5], [2, 7, 1, 8]])
    parent_hidden = np.asarray(random_decoder.cache.last_hidden)[parents]
    prompts = [[3, 1, 4, 1, 5, 9, 2], [2, 7, 1, 8, 2], [6, 6, 6]]
    # Each fork from its own parent; a fresh prompt's shared count is ignored: it has
    # nothing to share.
    slots = runtime.prefill_tokens([0, 1, 1], prompts, sources=[*parents, None],
                                   shared=[5, 4, 2])
    assert dict(runtime.prefilled) == {0: 5 + 2, 1: 4 + 1 + 3}
    whole = random_decoder.allocate(3)
    random_decoder.prefill(whole, prompts)
    np.testing.assert_array_equal(random_decoder.lengths([*parents, *slots]), [5, 4, 7, 5, 3])
    last_hidden = np.asarray(random_decoder.cache.last_hidden)
    np.testing.assert_allclose(last_hidden[slots], last_hidden[whole], atol=1e-5)
    np.testing.assert_array_equal(last_hidden[parents], parent_hidden)
    # A pool too small for the fresh prompts: the forks taken before go back, uncharged.
    runtime.free(whole)
    with pytest.raises(SlotPoolExhausted):
        runtime.prefill_tokens([0] * 4, [prompts[0]] * 2 + [prompts[2]] * 2,
                               sources=[parents[0]] * 2 + [None] * 2, shared=[5, 5, 0, 0])
    assert random_decoder.pool.num_free == 3
    assert dict(runtime.prefilled) == {0: 5 + 2, 1: 4 + 1 + 3}


class Chars:
    def encode(self, text):
        return [ord(c) for c in text]

    encode_input = encode  # no BOS

    def decode(self, ids):
        return "".join(map(chr, ids))


def newline_steps(slots, step) -> StepBatch:
    """Every row of ``slots`` sampled the tokens ``step``, ended at its newline."""
    rows = len(slots)
    return StepBatch(slots=np.asarray(slots), tokens=np.tile(step, (rows, 1)),
                     logprobs=np.zeros((rows, len(step)), np.float32),
                     num_tokens=np.full(rows, len(step)),
                     end_reason=np.full(rows, EndReason.NEWLINE.value),
                     hidden=np.zeros((rows, 2), np.float32))


class RecordingDecoder:
    """The ``Decoder`` calls a ``PolicyRuntime`` makes, recorded: slots handed out in
    order (and the parents they go beside), forks, prefills, and each ``sample_steps``
    call's keys, params and token caps; every row samples ``step`` ("ok\\n"), and ``done``
    is asked, where given, about each of ``texts``."""

    max_len = 16

    def __init__(self, texts=(), step="ok\n"):
        self.texts, self.step, self._next = texts, step, 0
        self.prefilled, self.sampled, self.near, self.forked = [], [], [], []

    def allocate(self, n, near=None):
        self.near.append(None if near is None else list(near))
        self._next += n
        return list(range(self._next - n, self._next))

    def fork(self, parents, children):
        self.forked.append((list(parents), list(children)))

    def prefill(self, slots, tokens, starts):
        self.prefilled.append((list(slots), [list(t) for t in tokens], list(starts)))

    def sample_steps(self, slots, *, problem_keys, node_ids, params, max_tokens, newline_ends,
                     done=None):
        self.sampled.append(dict(
            keys=jax.random.key_data(problem_keys).tolist(), node_ids=list(node_ids),
            temperature=params.temperature.tolist(), top_k=params.top_k.tolist(),
            top_p=params.top_p.tolist(), max_tokens=np.asarray(max_tokens).tolist(),
            newline_ends=newline_ends,
            done=None if done is None else [[done(row, Chars().encode(text))
                                             for text in self.texts]
                                            for row in range(len(slots))]))
        return newline_steps(slots, Chars().encode(self.step))


def _recorded(ids, decoder, *, seed=5):
    return PolicyRuntime(decoder, Chars(), FLinesAnswer(),
                         [Problem(id=i, question="", reference=None) for i in ids],
                         [f"Q {i}\n" for i in ids], seed=seed, step_token_cap=3, top_k=40,
                         top_p=0.9)


def test_a_problems_prompt_and_steps_are_prefilled_and_charged_to_it():
    decoder = RecordingDecoder()
    runtime = _recorded(["p0", "p1", "p2"], decoder)
    assert runtime.prefill([2, 0], [("a", "b"), ()]) == [0, 1]
    assert decoder.prefilled == [([0, 1], [Chars().encode("Q p2\na\nb\n"),
                                           Chars().encode("Q p0\n")], [0, 0])]
    assert dict(runtime.prefilled) == {2: 9, 0: 5}


class BosChars(Chars):
    """A tokenizer that starts a model's input with BOS (id 1), as Llama-2's does."""

    def encode_input(self, text):
        return [1, *self.encode(text)]


def test_a_prompt_and_a_text_start_with_the_bos_their_tokenizer_starts_inputs_with():
    decoder = RecordingDecoder()
    runtime = PolicyRuntime(decoder, BosChars(), FLinesAnswer(),
                            [Problem(id="p0", question="", reference=None)], ["Q\n"], seed=5,
                            step_token_cap=3)
    runtime.prefill([0], [("a",)])
    runtime.prefill_texts([0], ["critique"])
    assert [tokens for _, lists, _ in decoder.prefilled for tokens in lists] == [
        [1, *Chars().encode("Q\na\n")], [1, *Chars().encode("critique")]]
    assert runtime.prefilled[0] == 5 + 9


def test_a_prompt_longer_than_a_cache_row_is_refused_by_name_before_any_slot_is_taken():
    decoder = RecordingDecoder()
    runtime = _recorded(["p0", "p1"], decoder)
    with pytest.raises(PromptTooLong, match="^a prompt of problem p1 has 17 tokens, more than "
                                            "a cache row's 16$"):
        runtime.prefill_tokens([0, 1], [[1] * 16, [1] * 17])
    assert decoder._next == 0 and decoder.prefilled == [] and not runtime.prefilled


def test_a_problems_prompt_that_fills_a_cache_row_is_refused_and_its_steps_are_not():
    # A prompt alone of max_len tokens left no room: its search answered '' as complete.
    decoder = RecordingDecoder()
    runtime = PolicyRuntime(decoder, Chars(), FLinesAnswer(),
                            [Problem(id=i, question="", reference=None) for i in ("p0", "p1")],
                            ["Q p0\n", "Q" * 15 + "\n"], seed=5, step_token_cap=3)
    with pytest.raises(PromptTooLong, match="^a prompt of problem p1 has 16 tokens, filling a "
                                            "cache row of 16 with no room left for a step$"):
        runtime.prefill([0, 1], [(), ()])
    assert decoder._next == 0 and decoder.prefilled == []
    assert runtime.prefill([0], [()]) == [0]
    # A node whose steps fill the row is a search state that ran out of room, not refused.
    assert runtime.prefill([0], [("a" * 10,)]) == [1]


def test_every_draw_is_keyed_by_the_seed_and_problem_id_under_the_runtimes_filters():
    """Problem p2's key is fold_in(key(5), stable_id("p2")) wherever p2 stands in the
    list; steps, texts and tries all sample at top_k 40 and top_p .9."""
    decoder = RecordingDecoder()
    runtime = _recorded(["p0", "p1", "p2"], decoder)
    runtime.sample([3, 4], [2, 0], node_ids=[7, 8], temperatures=[0.5, 1.0])
    runtime.sample_texts([3], [1], node_ids=[9], temperatures=[0.0], max_tokens=[6])
    _recorded(["p2"], decoder).sample([3], [0], node_ids=[7], temperatures=[0.5])

    def key(seed, problem_id):
        return jax.random.key_data(jax.random.fold_in(jax.random.key(seed),
                                                       stable_id(problem_id))).tolist()

    steps, texts, moved = decoder.sampled
    assert steps["keys"] == [key(5, "p2"), key(5, "p0")] and moved["keys"] == [key(5, "p2")]
    assert texts["keys"] == [key(5, "p1")] != [key(6, "p1")]
    assert (steps["node_ids"], steps["temperature"], steps["max_tokens"]) == (
        [7, 8], [0.5, 1.0], 3)
    assert (texts["max_tokens"], steps["newline_ends"], texts["newline_ends"]) == (
        [6], True, False)
    assert [(c["top_k"], c["top_p"]) for c in (steps, texts)] == [
        ([40, 40], pytest.approx([0.9, 0.9])), ([40], pytest.approx([0.9]))]


def test_tries_draw_from_the_problems_key_table_under_the_runtimes_filters(monkeypatch):
    runtime = _recorded(["p0", "p1", "p2"], RecordingDecoder())
    asked = []
    monkeypatch.setattr(runtime_module, "sample_trie_steps", lambda decoder, slots, counts,
                        **kw: asked.append((list(slots), list(counts), kw))
                        or ([[] for _ in slots], [5] * len(slots)))
    assert runtime.sample_trie([3], [2], [11], [0.5], [4]) == [[]]
    assert dict(runtime.generated) == {2: 5}  # the tokens the trie fed, charged to p2
    [(slots, counts, kw)] = asked
    assert (slots, counts, kw["key_rows"], kw["group_ids"], kw["max_tokens"]) == (
        [3], [4], [2], [11], 3)
    assert kw["key_table"] is runtime._keys
    assert (kw["params"].temperature.tolist(), kw["params"].top_k.tolist(),
            kw["params"].top_p.tolist()) == ([0.5], [40], pytest.approx([0.9]))


def test_a_text_is_done_once_an_answer_line_is_whole_or_its_rows_check_says_so():
    """An "f" line is an answer once its newline is sampled; row 1's own check holds for
    a text ending "be", row 0 has none."""
    decoder = RecordingDecoder(texts=["a\nf", "a\nf\n", "a\nbe"])
    _recorded(["p0"], decoder).sample_texts(
        [3, 4], [0, 0], node_ids=[1, 2], temperatures=[0.0, 0.0], max_tokens=[9, 9],
        read_complete=[None, lambda text: text.endswith("be")])
    [call] = decoder.sampled
    assert call["done"] == [[False, True, False], [False, True, True]]


def test_forked_slots_are_allocated_beside_their_parents_and_returned_per_parent():
    """Each child is allocated near its parent (on a mesh, its data shard: the decoder
    refuses a fork across shards) and forked from it; a count of 0 gets no slot."""
    decoder = RecordingDecoder()
    runtime = _recorded(["p0"], decoder)
    assert runtime.fork([7, 3, 9], [2, 0, 1]) == [[0, 1], [], [2]]
    assert decoder.near == [[7, 7, 9]] and decoder.forked == [([7, 7, 9], [0, 1, 2])]


def test_a_text_ends_at_its_first_answer_line():
    """A chunk sampled past the answer line may hold another: the text stops at the first."""
    decoder = RecordingDecoder(step="a\nf1\nf2\n")
    [text] = _recorded(["p0"], decoder).sample_texts([3], [0], node_ids=[1],
                                                      temperatures=[0.0], max_tokens=[9])
    assert text.text == "a\nf1" and len(text.token_ids) == len("a\nf1\nf2\n")


ENTRY_POINTS = {
    "prefill": lambda runtime, bad: runtime.prefill([0, bad], [(), ("a",)]),
    "prefill_texts": lambda runtime, bad: runtime.prefill_texts([bad], ["x"]),
    "prefill_tokens": lambda runtime, bad: runtime.prefill_tokens([bad], [[1]]),
    "sample": lambda runtime, bad: runtime.sample([3], [bad], node_ids=[0],
                                                  temperatures=[0.0]),
    "sample_texts": lambda runtime, bad: runtime.sample_texts(
        [3], [bad], node_ids=[0], temperatures=[0.0], max_tokens=[4]),
    "sample_trie": lambda runtime, bad: runtime.sample_trie([3], [bad], [0], [0.0], [2]),
}


@pytest.mark.parametrize("bad", [2, 5, -1])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_problem_index_outside_the_runtimes_problems_is_refused_before_the_decoder(
        entry, bad):
    """A JAX gather clamps an index past the end: problem 5 of 2 drew problem 1's random
    numbers and was charged under a problem that does not exist."""
    decoder = RecordingDecoder()
    runtime = _recorded(["p0", "p1"], decoder)
    with pytest.raises(ValueError, match=rf"^problem_indices \[{bad}\] fall outside \[0, 2\): "
                                         r"this runtime holds 2 problems$"):
        ENTRY_POINTS[entry](runtime, bad)
    assert decoder._next == 0 and decoder.prefilled == [] and decoder.sampled == []
    assert not runtime.generated and not runtime.prefilled


def test_prefill_tokens_leaves_the_callers_shared_counts_as_they_were():
    """A fresh row's shared count is read as 0, in the runtime's own copy of the counts."""
    decoder = RecordingDecoder()
    shared = np.array([2, 3], np.int64)
    _recorded(["p0"], decoder).prefill_tokens([0, 0], [[1, 2, 3], [4, 5, 6, 7]],
                                              sources=[9, None], shared=shared)
    assert shared.tolist() == [2, 3]
    assert decoder.prefilled[-1][2] == [2, 0]


class ReplayDecoder(RecordingDecoder):
    """A ``RecordingDecoder`` whose every row samples the next of ``steps`` (token lists,
    each ended at a newline), one a call."""

    max_len = 64

    def __init__(self, steps):
        super().__init__()
        self.steps = iter(steps)

    def sample_steps(self, slots, **kwargs):
        return newline_steps(slots, next(self.steps))


class NoAnswerLines:
    def is_terminal_step(self, text):
        return False


def test_smollm2s_newline_and_indentation_token_leaves_each_code_line_its_indentation():
    """SmolLM2 writes a newline and the next line's indentation as one token ("\\n   "), so
    a step ends at that token and the indentation is the next step's: the program's lines
    keep it (HumanEval's programs lost it, every nested line an IndentationError)."""
    path = resolve_alias("smollm2-135m-instruct")
    tokenizer = checkpoint_tokenizer(path, check_gguf_checkpoint(path))
    program = "def f(x):\n    if x:\n        return x\n    return 0\n"
    tokens = tokenizer.encode(program)
    assert any(text.startswith("\n ") for text in map(tokenizer.decode, ([t] for t in tokens)))
    steps, start = [], 0
    for end, token in enumerate(tokens, 1):
        if "\n" in tokenizer.decode([token]):
            steps.append(tokens[start:end])
            start = end
    runtime = PolicyRuntime(ReplayDecoder(steps), tokenizer, NoAnswerLines(),
                            [Problem(id="p0", question="", reference=None)], [""], seed=0,
                            step_token_cap=16)
    [slot] = runtime.prefill_tokens([0], [tokenizer.encode("```python\n")])
    texts = [runtime.sample([slot], [0], node_ids=[k], temperatures=[1.0])[0].text
             for k in range(len(steps))]
    assert state_text("", texts) == program
