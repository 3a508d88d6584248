import numpy as np
import pytest

from qstar_jax.search.interface import QItem
from qstar_jax.search.value_prompt import ValuePromptScorer
from tests.search.fakes import ScriptedWriter


def item(problem, prefix, step):
    return QItem(problem_index=problem, prefix_steps=prefix, step_text=step, hidden=None)


def test_value_is_the_sum_of_the_mapped_verdicts_of_v_samples():
    writer = ScriptedWriter({
        "value 0: a|b": ["likely", "Sure. sure", "it is impossible, I think"],
        "value 1: c": ["impossible... no, likely", "no verdict", "Sure"],
    })
    scorer = ValuePromptScorer(generator=writer, samples=3, temperature=.6,
                               prompt=lambda i, steps: f"value {i}: {'|'.join(steps)}")
    values = scorer.score([item(0, ("a",), "b"), item(1, (), "c")])
    np.testing.assert_allclose(values, [1 + 20 + 0.001, 1 + 0 + 20])
    assert [(r.problem_index, r.num_samples, r.temperature, r.stream)
            for r in writer.requests] == [(0, 3, .6, "value/a\nb"), (1, 3, .6, "value/c")]
    assert writer.generated_tokens(0) == 1 + 2 + 5


def test_bad_sample_count_is_a_clear_error():
    with pytest.raises(ValueError, match="samples must be >= 1"):
        ValuePromptScorer(generator=ScriptedWriter({}), prompt=lambda i, s: "", samples=0)


def test_a_verdict_is_a_whole_word():
    """'unsure' and 'unlikely' name no verdict: they are not 'sure' (20) or 'likely'."""
    scorer = ValuePromptScorer(generator=ScriptedWriter({}), prompt=lambda i, s: "")
    assert [scorer.verdict_value(reply) for reply in
            ("Unsure.", "unlikely", "Sure!", "(impossible)", "likely\nsure")] == [
        0.0, 0.0, 20.0, 0.001, 20.0]


def test_a_scorer_reads_the_verdicts_it_is_given():
    """With values {yes: 1, no: -1}, the last of those words counts; 'sure' is none."""
    scorer = ValuePromptScorer(generator=ScriptedWriter({}), prompt=lambda i, s: "",
                               values={"yes": 1.0, "no": -1.0})
    assert [scorer.verdict_value(reply) for reply in ("No, yes.", "yes... no", "Sure")] == [
        1.0, -1.0, 0.0]
