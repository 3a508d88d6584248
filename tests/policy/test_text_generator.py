"""The decoder's TextGenerator: rows keyed by (stream, sample, line), texts ended by the
runtime's trace end or the token limit, every slot freed, tokens charged per problem."""

import collections

import numpy as np
import pytest

from qstar_jax.policy.runtime import SampledStep, stable_id
from qstar_jax.policy.text_generator import DecoderTextGenerator
from qstar_jax.search.interface import TextRequest
from tests.support.scripted_runtime import ScriptedRuntime

TOKENS_PER_LINE = 2
LINES_PER_TEXT = 3


class LineRuntime(ScriptedRuntime):
    """A ``PolicyRuntime`` whose sampled line is the key it was drawn with; a slot's
    trace ends at its third line."""

    def __init__(self):
        super().__init__()
        self.lines = collections.Counter()

    def free(self, slots):
        assert self.held >= set(slots), "a slot freed twice"
        super().free(slots)

    def sample(self, slots, problem_indices, node_ids, temperatures):
        steps = []
        for slot, i, key in zip(slots, problem_indices, node_ids):
            self.lines[slot] += 1
            self.generated[i] += TOKENS_PER_LINE
            steps.append(SampledStep(text=str(key), token_ids=(0,) * TOKENS_PER_LINE,
                                     logprob=0.0, hidden=np.zeros(1), slot=slot,
                                     ends_trace=self.lines[slot] == LINES_PER_TEXT))
        return steps


def request(problem, stream, samples):
    return TextRequest(problem_index=problem, prompt="prompt", num_samples=samples,
                       temperature=1.0, stream=stream)


def expected(stream, sample, lines=LINES_PER_TEXT):
    return "\n".join(str(stable_id("text", stream, sample, line)) for line in range(lines))


def test_texts_are_keyed_by_stream_sample_and_line_whatever_the_batch():
    runtime = LineRuntime()
    generator = DecoderTextGenerator(runtime, max_tokens=100)
    alone = generator.generate([request(0, "score/1", 2)])
    batched = generator.generate([request(1, "critique/0", 1), request(0, "score/1", 2)])
    assert batched[1:] == alone
    assert [g.text for g in alone[0]] == [expected("score/1", 0), expected("score/1", 1)]
    assert [g.generated_tokens for g in alone[0]] == [LINES_PER_TEXT * TOKENS_PER_LINE] * 2
    assert not runtime.held, "every slot is freed"
    assert generator.generated_tokens(0) == 2 * 2 * LINES_PER_TEXT * TOKENS_PER_LINE
    assert generator.prefilled_tokens(1) == len("prompt")


def test_a_text_stops_at_the_token_limit():
    runtime = LineRuntime()
    [[text]] = DecoderTextGenerator(runtime, max_tokens=3).generate([request(0, "s", 1)])
    assert text.text == expected("s", 0, lines=2) and text.generated_tokens == 4
    assert not runtime.held


def test_a_request_asking_for_fewer_tokens_stops_there_and_leaves_the_others():
    runtime = LineRuntime()
    short = TextRequest(problem_index=0, prompt="prompt", num_samples=1, temperature=1.0,
                        stream="score/0", max_tokens=1)
    [[cut], [whole]] = DecoderTextGenerator(runtime, max_tokens=100).generate(
        [short, request(0, "critique/0", 1)])
    assert cut.text == expected("score/0", 0, lines=1) and cut.generated_tokens == 2
    assert whole.text == expected("critique/0", 0)
    assert not runtime.held


def test_bad_token_limit_is_a_clear_error():
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        DecoderTextGenerator(LineRuntime(), max_tokens=0)
