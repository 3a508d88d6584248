import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qstar_jax.decoding.kv_cache import init_cache
from qstar_jax.models.char_tokenizer import build_char_tokenizer
from qstar_jax.models import lm_training
from qstar_jax.models.config import ModelConfig
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.lm_training import (LMTrainingConfig, ValueHead, pack_examples,
                                          pack_value_rows, train_causal_lm)
from qstar_jax.parallel import make_mesh
from tests.support.step_traces import count_step_traces


@pytest.mark.parametrize("window", [None, 3])
def test_cache_free_forward_equals_cached_forward(window):
    cfg = ModelConfig(model_type="mistral", vocab_size=50, hidden_size=32, intermediate_size=64,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                      sliding_windows=(window, window))
    model = LlamaModel(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, 50)
    cache = init_cache(cfg, slots=2, max_len=9)
    positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
    cached, _, _ = model(tokens, positions, jnp.arange(2), cache.k, cache.v)
    np.testing.assert_allclose(model.forward_sequence(tokens), cached, atol=1e-5)


def test_char_tokenizer_round_trips_and_isolates_newlines():
    tok = build_char_tokenizer("abc \n")
    text = "ab c\nba\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert ids[4] == tok.convert_tokens_to_ids("\n")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    # A character outside the alphabet is one <unk> (id 3), not dropped.
    assert tok.encode("a?b", add_special_tokens=False) == [ids[0], 3, ids[1]]
    # Then each character once, in code point order, whatever order the alphabet lists.
    tok = build_char_tokenizer("cab\n a")
    assert len(tok) == 4 + 5
    assert tok.convert_tokens_to_ids(list("\n abc")) == [4, 5, 6, 7, 8]


# A one-layer model and its task: the completion is the prompt's digit plus one,
# learnable only from the prompt.
TINY_LM = ModelConfig(model_type="llama", vocab_size=12, hidden_size=32, intermediate_size=64,
                      num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                      tie_word_embeddings=True)
NEXT_DIGIT = [([1, 3 + d], [3 + (d + 1) % 8, 2]) for d in range(8)]


def test_training_learns_a_deterministic_continuation():
    model = LlamaModel(TINY_LM, rngs=nnx.Rngs(0))
    tokens, mask = pack_examples(NEXT_DIGIT, pad_id=0)
    assert mask.tolist()[0] == [0.0, 1.0, 1.0, 0.0]
    losses = train_causal_lm(model, tokens, mask, LMTrainingConfig(
        steps=400, batch_size=8, learning_rate=3e-3, warmup_steps=10))["loss"]
    assert len(losses) == 9  # steps 0, 50, ..., 350 and the last, 399
    assert losses[-1] < 0.1 < 2.0 < losses[0]
    logits = model.logits(model.forward_sequence(jnp.asarray(tokens)))
    assert (np.asarray(logits[:, 1].argmax(-1)) == tokens[:, 2]).all()


def test_a_clipped_gradient_bounds_every_training_step():
    """policy_training.max_grad_norm: clipped to a vanishing norm, AdamW's steps shrink
    below its epsilon and the loss stays where it started; unclipped it falls."""
    tokens, mask = pack_examples(NEXT_DIGIT, pad_id=0)
    losses = {}
    for clip in (None, 1e-12):
        model = LlamaModel(TINY_LM, rngs=nnx.Rngs(0))
        losses[clip] = train_causal_lm(model, tokens, mask, LMTrainingConfig(
            steps=101, batch_size=8, learning_rate=3e-3, warmup_steps=10,
            max_grad_norm=clip))["loss"]
    assert losses[None][0] == pytest.approx(losses[1e-12][0])
    assert abs(losses[1e-12][-1] - losses[1e-12][0]) < 0.1
    assert losses[None][-1] < losses[None][0] - 1.0


def test_joint_value_head_learns_which_continuations_are_wrong():
    model = LlamaModel(TINY_LM, rngs=nnx.Rngs(0))
    # Value rows: the right continuation (value 1 at its last token) and every wrong one
    # (value 0): the target is whether token 2 is token 1 plus one.
    rows = [([1, 3 + d, 3 + e], [(2, float(e == (d + 1) % 8))]) for d in range(8)
            for e in range(8)]
    assert pack_value_rows(rows[:2], pad_id=0, length=4).weights.tolist() == [[0, 0, 1, 0]] * 2
    tokens, mask = pack_examples(NEXT_DIGIT, pad_id=0, length=4)
    value_rows = pack_value_rows(rows, pad_id=0, length=4)
    config = LMTrainingConfig(steps=600, batch_size=8, learning_rate=3e-3, warmup_steps=10,
                              value_weight=1.0, value_batch_size=32)
    log = train_causal_lm(model, tokens, mask, config, value_rows=value_rows)
    # The base rate (1 in 8 positive) alone gives a BCE of 0.377; the head must do far better.
    assert log["value_loss"][0] > 0.3 and log["value_loss"][-1] < 0.05
    assert log["loss"][-1] < 0.1
    with pytest.raises(ValueError, match="one length"):
        train_causal_lm(model, tokens, mask, config,
                        value_rows=pack_value_rows(rows, pad_id=0, length=5))


def test_the_first_losses_are_the_completions_and_the_step_ends_by_hand():
    """The losses logged at step 0 are the untrained model's: the next-token cross-entropy
    of the completion's 3 tokens only (not the prompt's 2, nor the 3 pads), averaged over
    them, and the value head's BCE at the two labelled step ends only, against a head
    drawn from seed + 1."""
    model = LlamaModel(TINY_LM, rngs=nnx.Rngs(0))
    tokens, mask = pack_examples([([1, 5], [6, 7, 2])], pad_id=0, length=8)
    assert mask.tolist() == [[0, 1, 1, 1, 0, 0, 0, 0]]
    value_rows = pack_value_rows([([1, 5, 9, 4, 3, 2], [(2, 1.0), (4, 0.0)])], pad_id=0,
                                 length=8)
    hidden = model.forward_sequence(jnp.asarray(np.concatenate([tokens, value_rows.tokens])))
    log_probs = np.asarray(jax.nn.log_softmax(model.logits(hidden[:1])), np.float64)[0]
    expected_loss = -np.mean([log_probs[t, tokens[0, t + 1]] for t in (1, 2, 3)])
    logits = np.asarray(ValueHead(TINY_LM.hidden_size, rngs=nnx.Rngs(4))(hidden[1]))
    expected_value_loss = np.mean([np.logaddexp(0, -logits[2]), np.logaddexp(0, logits[4])])
    log = train_causal_lm(model, tokens, mask, LMTrainingConfig(
        steps=1, batch_size=2, learning_rate=1e-3, warmup_steps=1, seed=3, value_weight=0.5,
        value_batch_size=2), value_rows=value_rows)
    assert log["loss"] == [pytest.approx(expected_loss, rel=1e-5)]
    assert log["value_loss"] == [pytest.approx(expected_value_loss, rel=1e-5)]


def test_without_a_gradient_each_step_only_decays_the_weights_by_its_learning_rate():
    """A loss mask of zeros leaves AdamW's update at zero, so step t only shrinks every
    parameter by lr_t x weight_decay: lr 0 at step 0 (warmup from 0 over 1 step), the peak
    0.1 at step 1 and half of it at step 2 (cosine decay over the 3 steps' last 2). Value
    rows under the default value_weight 0 train no head and add no gradient."""
    model = LlamaModel(TINY_LM, rngs=nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    tokens, mask = pack_examples(NEXT_DIGIT, pad_id=0)
    value_rows = pack_value_rows([([1, 3, 4], [(2, 1.0)])], pad_id=0, length=tokens.shape[1])
    log = train_causal_lm(model, tokens, np.zeros_like(mask), LMTrainingConfig(
        steps=3, batch_size=4, learning_rate=0.1, warmup_steps=1, weight_decay=0.5),
        value_rows=value_rows)
    assert list(log) == ["loss"] and len(log["loss"]) == 2  # steps 0 and 2
    decay = (1 - 0.1 * 0.5) * (1 - 0.05 * 0.5)
    jax.tree.map(lambda old, new: np.testing.assert_allclose(new, old * decay, rtol=1e-6),
                 before, jax.tree.map(np.asarray, nnx.state(model, nnx.Param)))


def test_each_step_draws_its_rows_by_the_seed():
    """A step's batch rows come from the config's seed: at seed 1 the one row of step 0 is
    NEXT_DIGIT's row 3 (seed 0 would draw row 6), and the loss logged there is row 3's
    completion cross-entropy under the untrained model."""
    model = LlamaModel(TINY_LM, rngs=nnx.Rngs(0))
    tokens, mask = pack_examples(NEXT_DIGIT, pad_id=0)
    log_probs = np.asarray(jax.nn.log_softmax(
        model.logits(model.forward_sequence(jnp.asarray(tokens)))), np.float64)
    row_losses = [-np.mean([log_probs[r, t, tokens[r, t + 1]] for t in (1, 2)])
                  for r in range(len(NEXT_DIGIT))]
    assert mask[:, 1:3].all() and mask.sum() == 2 * len(NEXT_DIGIT)
    assert abs(row_losses[3] - row_losses[6]) > 1e-3
    log = train_causal_lm(model, tokens, mask, LMTrainingConfig(
        steps=1, batch_size=1, learning_rate=1e-3, warmup_steps=0, seed=1))
    assert log["loss"] == [pytest.approx(row_losses[3], rel=1e-5)]


def test_training_on_a_mesh_traces_its_step_once(monkeypatch):
    """On a mesh the step's inputs start with the shardings it returns (the optimizer's
    step counts replicated, as the parameters are), so the second step reuses the first
    one's program rather than tracing and compiling the step again."""
    traced = count_step_traces(monkeypatch, lm_training)
    tokens, mask = pack_examples(NEXT_DIGIT, pad_id=0)
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    train_causal_lm(LlamaModel(TINY_LM, rngs=nnx.Rngs(0)), tokens, mask, LMTrainingConfig(
        steps=3, batch_size=8, learning_rate=1e-3, warmup_steps=1), mesh=mesh)
    assert traced == [mesh]
