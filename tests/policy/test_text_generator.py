"""The decoder's TextGenerator: rows keyed by (stream, sample), texts read through their
answer line and cut at the token limit, every slot freed, tokens charged per problem;
finished rows kept per problem and forked for prompts that continue them."""

import pytest

from qstar_jax.decoding.kv_cache import SlotPoolExhausted
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.policy.kept_rows import MIN_SHARED_TOKENS, KeptRows
from qstar_jax.policy.runtime import SampledText, stable_id
from qstar_jax.policy.text_generator import DecoderTextGenerator
from qstar_jax.search.interface import TextRequest
from tests.support.scripted_runtime import ScriptedRuntime

TOKENS_PER_LINE = 2
LINES = 4  # "<key>/0", "<key>/1", "answer <key>", "after": the last is past the answer


class LineRuntime(ScriptedRuntime):
    """A ``PolicyRuntime`` whose sampled text is four lines of two tokens each, named by
    the key it was drawn with, cut at the row's token limit; each call's temperatures
    and token limits are recorded."""

    def __init__(self):
        super().__init__()
        self.sampled_with: list[tuple[list[float], list[int]]] = []

    def free(self, slots):
        assert self.held >= set(slots), "a slot freed twice"
        super().free(slots)

    def sample_texts(self, slots, problem_indices, node_ids, temperatures, max_tokens,
                     read_complete):
        self.sampled_with.append((list(temperatures), list(max_tokens)))
        texts = []
        for i, key, limit, check in zip(problem_indices, node_ids, max_tokens, read_complete):
            lines = [f"{key}/0", f"{key}/1", f"answer {key}", "after"]
            n = min(limit, LINES * TOKENS_PER_LINE)
            # A line per chunk: the check runs after each and may end the text there.
            read = next((k for k in range(1, LINES) if check is not None
                         and check("\n".join(lines[:k]))), None)
            n = n if read is None else min(n, read * TOKENS_PER_LINE)
            self.generated[i] += n
            # The runtime's text ends at the answer line; "after" is sampled, not read.
            texts.append(SampledText(text="\n".join(lines[:min(-(-n // TOKENS_PER_LINE), 3)]),
                                     token_ids=(0,) * n, cut=read is None and n == limit))
        return texts


def request(problem, stream, samples):
    return TextRequest(problem_index=problem, prompt="prompt", num_samples=samples,
                       temperature=1.0, stream=stream)


def expected(stream, sample, lines=3):
    key = stable_id("text", stream, sample)
    return "\n".join([f"{key}/0", f"{key}/1", f"answer {key}"][:lines])


def test_texts_are_keyed_by_stream_and_sample_whatever_the_batch():
    runtime = LineRuntime()
    generator = DecoderTextGenerator(runtime, max_tokens=100)
    alone = generator.generate([request(0, "score/1", 2)])
    batched = generator.generate([request(1, "critique/0", 1), request(0, "score/1", 2)])
    assert batched[1:] == alone
    assert [g.text for g in alone[0]] == [expected("score/1", 0), expected("score/1", 1)]
    # Read through the answer line; the line after it was sampled and is charged.
    assert [g.generated_tokens for g in alone[0]] == [LINES * TOKENS_PER_LINE] * 2
    assert not runtime.held, "every slot is freed"
    assert generator.generated_tokens(0) == 2 * 2 * LINES * TOKENS_PER_LINE
    assert generator.prefilled_tokens(1) == len("prompt")


def test_a_text_stops_at_the_token_limit():
    runtime = LineRuntime()
    [[text]] = DecoderTextGenerator(runtime, max_tokens=3).generate([request(0, "s", 1)])
    assert text.text == expected("s", 0, lines=2) and text.generated_tokens == 3
    assert not runtime.held


def test_a_request_asking_for_fewer_tokens_stops_there_and_leaves_the_others():
    runtime = LineRuntime()
    short = TextRequest(problem_index=0, prompt="prompt", num_samples=1, temperature=1.0,
                        stream="score/0", max_tokens=1)
    [[cut], [whole]] = DecoderTextGenerator(runtime, max_tokens=100).generate(
        [short, request(0, "critique/0", 1)])
    assert cut.text == expected("score/0", 0, lines=1) and cut.generated_tokens == 1
    assert whole.text == expected("critique/0", 0)
    assert cut.cut and not whole.cut  # the runtime's word, passed on
    assert not runtime.held


def test_rows_sample_at_their_requests_temperature_under_the_generators_token_cap():
    """A request asking for more tokens than the generator's cap (5 > 3) gets the cap."""
    runtime = LineRuntime()
    greedy = TextRequest(problem_index=0, prompt="prompt", num_samples=1, temperature=0.0,
                         stream="score/0", max_tokens=5)
    warm = TextRequest(problem_index=1, prompt="prompt", num_samples=2, temperature=0.7,
                       stream="critique/0")
    [[cut], pair] = DecoderTextGenerator(runtime, max_tokens=3).generate([greedy, warm])
    assert runtime.sampled_with == [([0.0, 0.7, 0.7], [3, 3, 3])]
    assert cut.text == expected("score/0", 0, lines=2) and cut.generated_tokens == 3
    assert [t.generated_tokens for t in pair] == [3, 3]


def test_each_samples_read_check_goes_with_its_own_request():
    """Two samples of a request whose check holds once its second line is written, beside
    a request without one: the checked samples stop there, the other reads on."""
    runtime = LineRuntime()
    checked = TextRequest(problem_index=0, prompt="prompt", num_samples=2, temperature=1.0,
                          stream="score/0", read_complete=lambda text: "/1" in text)
    [cut, [whole]] = DecoderTextGenerator(runtime, max_tokens=100).generate(
        [checked, request(1, "critique/0", 1)])
    assert [t.text for t in cut] == [expected("score/0", j, lines=2) for j in (0, 1)]
    assert [t.generated_tokens for t in cut] == [2 * TOKENS_PER_LINE] * 2
    assert whole.text == expected("critique/0", 0)
    assert whole.generated_tokens == LINES * TOKENS_PER_LINE


def test_bad_token_limit_is_a_clear_error():
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        DecoderTextGenerator(LineRuntime(), max_tokens=0)


class KeepingRuntime(LineRuntime):
    """LineRuntime that records each prefill's fork sources and shared prefixes; a full
    cache refuses the next call named in ``full`` ("prefill_tokens", "fork" or
    "sample_texts") once, before it changes anything."""

    def __init__(self):
        super().__init__()
        self.prefills = []
        self.full = None

    def _refuse(self, call):
        if self.full == call:
            self.full = None
            raise SlotPoolExhausted("full")

    def prefill_tokens(self, problem_indices, token_lists, *, sources=None, shared=None):
        self._refuse("prefill_tokens")
        self.prefills.append((list(sources), list(shared)))
        return super().prefill_tokens(problem_indices, token_lists, sources=sources,
                                      shared=shared)

    def fork(self, parents, counts):
        self._refuse("fork")
        return super().fork(parents, counts)

    def sample_texts(self, *args):
        self._refuse("sample_texts")
        return super().sample_texts(*args)


QUESTION = "a question long enough to share: "


def ask(generator, problem, prompt, samples=1):
    return generator.generate([TextRequest(problem_index=problem, prompt=prompt,
                                           num_samples=samples, temperature=1.0,
                                           stream="s")])


def test_a_prompt_continuing_a_kept_row_is_forked_from_it_and_charged_its_new_tokens():
    runtime = KeepingRuntime()
    generator = DecoderTextGenerator(runtime, max_tokens=100, kept_rows_per_problem=2)
    ask(generator, 0, QUESTION)  # kept: the prompt and its 3 lines of 2 tokens
    [kept] = runtime.held
    ask(generator, 0, QUESTION + "more")
    # The row holds the prompt's characters, then sampled tokens (0s): "more" is new.
    assert runtime.prefills[-1] == ([kept], [len(QUESTION)])
    assert generator.prefilled_tokens(0) == len(QUESTION) + len("more")
    ask(generator, 1, QUESTION + "more")  # another problem's rows are never its source
    assert runtime.prefills[-1] == ([None], [0])
    ask(generator, 0, "short")  # nothing long enough in common: a whole prefill
    assert runtime.prefills[-1] == ([None], [0])
    assert len(generator.kept) == 3  # problem 0 keeps its last 2 rows, problem 1 its one
    generator.drop_kept()
    assert not runtime.held


def test_a_single_samples_row_keeps_its_sampled_tokens_after_the_prompt():
    """A prompt that continues the sampled text (a critique quoting the answer) shares the
    prompt and the 8 sampled tokens (LineRuntime's 0s) and is charged only "more"."""
    runtime = KeepingRuntime()
    generator = DecoderTextGenerator(runtime, max_tokens=100, kept_rows_per_problem=1)
    ask(generator, 0, QUESTION)
    [kept] = runtime.held
    answer = "\0" * LINES * TOKENS_PER_LINE
    ask(generator, 0, QUESTION + answer + "more")
    assert runtime.prefills[-1] == ([kept], [len(QUESTION) + 8])
    assert generator.prefilled_tokens(0) == len(QUESTION) + len("more")


def test_samples_of_one_prompt_keep_the_prompt_they_share():
    runtime = KeepingRuntime()
    generator = DecoderTextGenerator(runtime, max_tokens=100, kept_rows_per_problem=1)
    ask(generator, 0, QUESTION, samples=3)
    assert len(runtime.held) == 1  # the prompt's row; the samples went back
    ask(generator, 0, QUESTION + "again")
    assert runtime.prefills[-1][1] == [len(QUESTION)]


def test_a_full_cache_drops_the_kept_rows_and_tries_again():
    runtime = KeepingRuntime()
    generator = DecoderTextGenerator(runtime, max_tokens=100, kept_rows_per_problem=2)
    ask(generator, 0, QUESTION)
    runtime.full = "prefill_tokens"
    [[text]] = ask(generator, 0, QUESTION + "more")
    assert text.text == expected("s", 0)
    assert runtime.prefills[-1] == ([None], [0])  # the kept row was dropped before the retry
    runtime.full = "prefill_tokens"
    generator.drop_kept()
    with pytest.raises(SlotPoolExhausted):  # with nothing kept, a full cache is an error
        ask(generator, 0, QUESTION)


@pytest.mark.parametrize("call", ["fork", "sample_texts"])
def test_a_cache_full_when_forking_or_sampling_drops_the_kept_rows_too(call):
    runtime = KeepingRuntime()
    generator = DecoderTextGenerator(runtime, max_tokens=100, kept_rows_per_problem=2)
    ask(generator, 0, QUESTION)
    ask(generator, 1, QUESTION)
    runtime.full = call
    texts = ask(generator, 0, QUESTION + "more", samples=2)
    assert [t.text for t in texts[0]] == [expected("s", 0), expected("s", 1)]
    assert len(generator.kept) == 1  # the others' rows went; the new prompt's is kept
    generator.drop_kept()
    assert not runtime.held


def test_kept_rows_share_a_prefix_of_at_least_min_shared_tokens_and_leave_the_last():
    kept = KeptRows(per_problem=2)
    assert kept.keep(0, 5, list(range(40))) == []
    assert kept.best_source(0, list(range(MIN_SHARED_TOKENS - 1)) + [99]) == (None, 0)
    assert kept.best_source(0, list(range(30)) + [99]) == (5, 30)
    assert kept.best_source(0, list(range(20))) == (5, 19)  # the last token is prefilled
    assert kept.keep(0, 6, list(range(10))) == [] and kept.keep(0, 7, [1]) == [5]
    assert sorted(kept.drop_all()) == [6, 7] and len(kept) == 0
    assert KeptRows(per_problem=0).keep(0, 5, [1, 2]) == [5]  # nothing kept


def test_a_kept_row_sharing_exactly_min_shared_tokens_is_a_source_and_counts_as_used():
    kept = KeptRows(per_problem=2)
    kept.keep(0, 5, list(range(40)))
    kept.keep(0, 6, [99] * 40)
    assert kept.best_source(0, list(range(MIN_SHARED_TOKENS)) + [99]) == (5, MIN_SHARED_TOKENS)
    # Row 5, kept first but forked from since, is the more recently used: 6 goes first.
    assert kept.keep(0, 7, [1]) == [6]


def test_a_negative_number_of_kept_rows_is_refused():
    with pytest.raises(ValueError, match=r"^per_problem must be >= 0 \(0 keeps nothing\), "
                                         r"got -1$"):
        KeptRows(per_problem=-1)


def bad_request(**setting):
    return TextRequest(**{**dict(problem_index=0, prompt="prompt", num_samples=1,
                                 temperature=1.0, stream="s"), **setting})


@pytest.mark.parametrize("setting, message", [
    (dict(temperature=-0.5), r"requests\[1\]\.temperature must be finite and >= 0 "
                             r"\(0 = greedy\), got -0\.5"),
    (dict(temperature=float("nan")), r"requests\[1\]\.temperature must be finite"),
    (dict(temperature=float("inf")), r"requests\[1\]\.temperature must be finite"),
    (dict(num_samples=0), r"requests\[1\]\.num_samples must be an integer >= 1, got 0"),
    (dict(num_samples=1.5), r"requests\[1\]\.num_samples must be an integer >= 1"),
    (dict(max_tokens=-3), r"requests\[1\]\.max_tokens must be None \(the generator's own "
                          r"limit\) or an integer >= 1, got -3"),
    (dict(max_tokens=0), r"requests\[1\]\.max_tokens must be None .* got 0"),
])
def test_a_bad_request_is_refused_by_name_before_any_slot_is_taken(setting, message):
    runtime = LineRuntime()
    with pytest.raises(ValueError, match=message):
        DecoderTextGenerator(runtime, max_tokens=100).generate(
            [request(0, "ok", 2), bad_request(**setting)])
    assert not runtime.held and not runtime.prefilled and runtime.sampled_with == []


class FourSlotRuntime(LineRuntime):
    """LineRuntime whose cache holds four slots and whose sampling refuses bad settings
    as PolicyRuntime's does (SamplingParams.make, the step sampler's token caps): after
    the prompts took their slots."""

    def _take(self, n):
        if len(self.held) + n > 4:
            raise SlotPoolExhausted(f"{len(self.held)} of 4 slots held, {n} more asked for")
        return super()._take(n)

    def sample_texts(self, slots, problem_indices, node_ids, temperatures, max_tokens,
                     read_complete):
        SamplingParams.make(len(slots), temperature=temperatures)
        if min(max_tokens) < 1:
            raise ValueError(f"max_tokens must be integers >= 1, got {max_tokens}")
        return super().sample_texts(slots, problem_indices, node_ids, temperatures,
                                    max_tokens, read_complete)


def test_failed_calls_free_the_slots_they_took_and_leave_the_kept_rows():
    """Four failed calls on a four-slot cache, one of them failing after its prompt was
    prefilled and forked (its read check raises): every slot they took goes back, and a
    call needing all four slots then succeeds, the kept row dropped to make room."""
    runtime = FourSlotRuntime()
    generator = DecoderTextGenerator(runtime, max_tokens=100, kept_rows_per_problem=1)
    ask(generator, 0, QUESTION)
    [kept] = runtime.held

    def broken_check(text):
        raise RuntimeError("a read check that fails")

    for bad in [bad_request(temperature=-1.0), bad_request(max_tokens=-3),
                bad_request(num_samples=0),
                bad_request(num_samples=2, read_complete=broken_check)]:
        with pytest.raises((ValueError, RuntimeError)):
            generator.generate([bad])
        assert runtime.held == {kept} and len(generator.kept) == 1
    texts = ask(generator, 1, QUESTION, samples=3)
    assert [t.text for t in texts[0]] == [expected("s", j) for j in range(3)]
    generator.drop_kept()
    assert not runtime.held
