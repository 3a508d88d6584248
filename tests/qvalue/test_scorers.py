"""Q̂ as search calls it: over the policy's hidden states, each item's hidden state, its
log-probability under the policy and under a second opinion, in the head's columns; over
a separate backbone, the text of each item's own prompt, path and step."""

import dataclasses
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qstar_jax.qvalue import scorers
from qstar_jax.qvalue.backbone import BackboneQModel
from qstar_jax.qvalue.features import shared_carriers
from qstar_jax.qvalue.head import QHead, QHeadConfig, QHeadModel
from qstar_jax.qvalue.scorers import PolicyHiddenQ
from qstar_jax.search.interface import QItem
from tests.qvalue.tiny import BACKBONE, random_backbone_q

# value = h0 - h1 + 2 * (10 * policy log-prob) - 3 * (10 * second opinion's), log-probs
# clipped at -30.
KERNEL = [[1.0], [-1.0], [2.0], [-3.0]]


@pytest.fixture(scope="module")
def head_model():
    config = QHeadConfig(hidden_size=2, step_logprob=True, second_opinion=True, output="raw")
    head = QHead(config, rngs=nnx.Rngs(0))
    head.out.kernel[...] = jnp.asarray(KERNEL)
    head.out.bias[...] = jnp.zeros(1)
    return QHeadModel(head)


def items(logprobs):
    return [QItem(problem_index=i, prefix_steps=("a",) * i, step_text=f"s{i}",
                  hidden=np.array([i, 2.0 * i], np.float32), logprob=logprob)
            for i, logprob in enumerate(logprobs)]


def test_each_column_reads_its_own_log_probability(head_model):
    asked = []

    def second_opinion(batch):
        asked.append([(item.problem_index, item.step_text) for item in batch])
        return np.array([-0.25, -1.0, -0.5], np.float32)

    scores = PolicyHiddenQ(head_model, second_opinion).score(items([-0.5, -40.0, 0.0]))
    # 0 + 2 * -5 - 3 * -2.5; 1 - 2 + 2 * -300 - 3 * -10; 2 - 4 + 0 - 3 * -5
    np.testing.assert_allclose(scores, [-2.5, -571.0, 13.0], rtol=1e-6)
    assert asked == [[(0, "s0"), (1, "s1"), (2, "s2")]]
    assert PolicyHiddenQ(head_model, second_opinion).score([]).shape == (0,)
    assert len(asked) == 1  # no items, no second opinion asked


def test_an_item_without_a_log_probability_is_refused_by_a_head_that_reads_one(head_model):
    with pytest.raises(ValueError, match="reads each step's log-probability, and none"):
        PolicyHiddenQ(head_model, lambda batch: np.zeros(len(batch))).score(
            items([-0.5, None]))
    with pytest.raises(ValueError, match="under the second opinion, and none was given"):
        PolicyHiddenQ(head_model).score(items([-0.5]))


def test_the_learned_prm_refuses_an_item_without_a_hidden_state(head_model):
    no_hidden = [dataclasses.replace(item, hidden=None) for item in items([-0.5, -1.0])]
    with pytest.raises(ValueError, match="reads the policy's hidden state of each step, but "
                                         "an item has none; use an expander that returns them"):
        scorers.PolicyHiddenPRM(head_model).score_steps(items([-0.5]) + no_hidden[1:])


def test_a_separate_backbone_scores_each_items_own_prompt_path_and_step(monkeypatch):
    backbone = random_backbone_q()
    monkeypatch.setattr(scorers, "load_backbone_q", lambda q_dir, mesh: backbone)
    loaded = []

    def encode(text):
        return [ord(c) % 40 for c in text]

    tokenizer = SimpleNamespace(encode=encode, encode_input=encode, pad_id=0)
    ctx = SimpleNamespace(
        config=SimpleNamespace(q_train=SimpleNamespace(separate_model="/a/model")),
        load=lambda source: loaded.append(source) or SimpleNamespace(tokenizer=tokenizer),
        prompts=lambda problems: [f"P{p}\n" for p in problems], q_dir="/q", mesh=None)
    q_fn = scorers.SeparateBackboneQ(ctx, [3, 5])
    items_ab_c = [QItem(problem_index=1, prefix_steps=("a", "b"), step_text="c", hidden=None),
                  QItem(problem_index=0, prefix_steps=(), step_text="d", hidden=None)]
    scores = q_fn.score(items_ab_c)
    texts = [tokenizer.encode("P5\na\nb\nc\n"), tokenizer.encode("P3\nd\n")]
    np.testing.assert_allclose(scores, BackboneQModel(backbone).score_texts(texts), rtol=1e-6)
    assert loaded == ["/a/model"] and q_fn.score([]).shape == (0,)
    # The backbone's forward tokens, each problem's own: 9 and 5 characters.
    assert (q_fn.forward_tokens[1], q_fn.forward_tokens[0]) == (9, 5)
    # On a backbone of 8 positions, the 9 tokens of 'P5\na\nb\nc\n' are scored as its
    # last 8, '5\na\nb\nc\n', and 8 are counted.
    short = random_backbone_q(config=dataclasses.replace(BACKBONE, max_position_embeddings=8))
    monkeypatch.setattr(scorers, "load_backbone_q", lambda q_dir, mesh: short)
    q_fn = scorers.SeparateBackboneQ(ctx, [3, 5])
    np.testing.assert_allclose(
        q_fn.score(items_ab_c[:1]),
        BackboneQModel(short).score_texts([tokenizer.encode("5\na\nb\nc\n")]), rtol=1e-6)
    assert q_fn.forward_tokens[1] == 8


def test_a_second_opinion_reads_each_items_step_after_its_own_prompt_in_one_built_pass(
        monkeypatch):
    """SecondOpinion builds the second policy's StepFeatures once and answers, for each
    call, the log-probabilities (not the hidden states) of each item's step after its
    own problem's prompt and path."""
    built, read = [], []

    class Features:
        def __init__(self, model, tokenizer):
            built.append((model, tokenizer))
            self.tokenizer = tokenizer

        def __call__(self, states, steps, rows_read):  # no text here begins another
            read.append((states, steps))
            rows_read({k: self.tokenizer.encode_input(s + a)
                       for k, (s, a) in enumerate(zip(states, steps))})
            return np.ones((len(steps), 2), np.float32), -np.arange(1.0, len(steps) + 1)

    monkeypatch.setattr(scorers, "StepFeatures", Features)
    tokenizer = SimpleNamespace(encode_input=lambda text: [ord(c) for c in text])
    opinion = scorers.SecondOpinion(SimpleNamespace(model="second", tokenizer=tokenizer),
                                    ["Q0\n", "Q1\n"])
    asked = [QItem(problem_index=1, prefix_steps=("a",), step_text="b", hidden=None),
             QItem(problem_index=0, prefix_steps=(), step_text="c", hidden=None)]
    np.testing.assert_array_equal(opinion(asked), [-1.0, -2.0])
    np.testing.assert_array_equal(opinion(asked[1:]), [-1.0])
    assert built == [("second", tokenizer)]
    assert read == [(["Q1\na\n", "Q0\n"], ["b\n", "c\n"]), (["Q0\n"], ["c\n"])]
    # The second policy read 'Q1\na\nb\n' for problem 1, 'Q0\nc\n' twice for problem 0.
    assert (opinion.forward_tokens[1], opinion.forward_tokens[0]) == (7, 10)
    assert PolicyHiddenQ(None, opinion).forward_tokens is opinion.forward_tokens


def test_a_second_opinion_counts_a_text_read_in_a_longer_ones_row_once(monkeypatch):
    """StepFeatures reads a text whose tokens begin another's (a sibling step sampled
    twice) in that one's row: it is not counted again; a problem's count begins again
    with its search, and a Q̂ with no second opinion reads no tokens of its own."""
    tokenizer = SimpleNamespace(encode_input=lambda text: [ord(c) for c in text])

    def features(states, steps, rows_read):  # StepFeatures's rows: its carriers'
        rows = [tokenizer.encode_input(s + a) for s, a in zip(states, steps)]
        rows_read({c: rows[c] for c in shared_carriers(rows)})
        return None, np.zeros(len(steps), np.float32)

    monkeypatch.setattr(scorers, "StepFeatures", lambda model, tokenizer: features)
    opinion = scorers.SecondOpinion(SimpleNamespace(model=None, tokenizer=tokenizer), ["Q\n"])
    opinion([QItem(problem_index=0, prefix_steps=(), step_text=text, hidden=None)
             for text in ("ab", "ab", "abc", "x")])
    assert opinion.forward_tokens[0] == len("Q\nab\n") + len("Q\nabc\n") + len("Q\nx\n")
    opinion.forward_tokens.begin(0)
    assert opinion.forward_tokens[0] == 0
    assert PolicyHiddenQ(None).forward_tokens is None


def test_a_searchs_scorer_tokens_are_its_q_hats_and_its_prms_each_from_its_begin():
    """evaluate reads a search's scorer tokens through ScorerTokens: Q̂'s and the process
    utility's PRM's, 0 for one with no forward pass of its own or none at all."""
    q_tokens, prm_tokens = scorers.ForwardTokens(), scorers.ForwardTokens()
    q_fn = SimpleNamespace(forward_tokens=q_tokens)
    utility = SimpleNamespace(prm=SimpleNamespace(forward_tokens=prm_tokens))
    q_tokens.add([0, 1, 0], [[1, 2], [3], [4, 5, 6]])
    prm_tokens.add([1], [[7, 8]])
    both = scorers.ScorerTokens.of(q_fn, utility)
    assert [both.read(i) for i in (0, 1, 2)] == [(5, 0), (1, 2), (0, 0)]
    both.begin(1)
    assert both.read(1) == (0, 0) and both.read(0) == (5, 0)
    # A Q̂ on the policy's hidden states alone, a rule or zero utility: nothing to count.
    alone = scorers.ScorerTokens.of(object(), SimpleNamespace())
    alone.begin(0)
    assert alone.read(0) == (0, 0) and scorers.ScorerTokens.of(None, None).read(3) == (0, 0)
