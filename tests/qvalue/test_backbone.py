import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qstar_jax.decoding.kv_cache import init_cache
from qstar_jax.decoding.token_batch import pad_token_batch
from qstar_jax.qvalue.backbone import BackboneQ, BackboneQModel, backbone_update_mask
from qstar_jax.qvalue.head import QHeadConfig
from qstar_jax.qvalue.train import TrainConfig, train_q_model
from tests.qvalue.tiny import BACKBONE, random_backbone_q

SEQUENCES = [[5, 9, 2], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [3, 3], [11, 12, 13, 14],
             [20, 21], [30, 31, 32], [8, 8, 8, 8, 8]]


@pytest.fixture(scope="module")
def model():
    return random_backbone_q()


def test_scores_read_the_last_real_token_whatever_the_padding(model):
    """score_texts pads rows and tokens to buckets; each score must equal the head on the
    last hidden state of that sequence run alone, unpadded."""
    sequences = [SEQUENCES[0], SEQUENCES[2]]  # lengths 3 and 9, padded to 16
    scores = BackboneQModel(model).score_texts(sequences)
    assert scores.shape == (2,)

    @jax.jit
    def unpadded_value(tokens):
        length = tokens.shape[1]
        cache = init_cache(BACKBONE, slots=1, max_len=length)
        hidden, _, _ = model.backbone(tokens, jnp.arange(length)[None], jnp.zeros(1, jnp.int32),
                                      cache.k, cache.v)
        return model.head.values(hidden[:, -1])[0]

    alone = [float(unpadded_value(jnp.asarray([ids], jnp.int32))) for ids in sequences]
    np.testing.assert_allclose(scores, alone, rtol=1e-5)
    assert abs(scores[0] - scores[1]) > 1e-3  # the sequences really score differently


def test_a_raw_head_scores_texts_with_its_raw_values(model):
    """The sigmoid head's scores are the sigmoid of what the same weights give raw."""
    raw = nnx.clone(model)
    raw.head.head_config = dataclasses.replace(model.head_config, output="raw")
    sequences = SEQUENCES[:2]
    raw_scores = BackboneQModel(raw).score_texts(sequences)
    np.testing.assert_allclose(1 / (1 + np.exp(-raw_scores)),
                               BackboneQModel(model).score_texts(sequences), rtol=1e-5)


def test_a_sequence_past_the_positions_fails_or_keeps_its_last_tokens():
    """On a backbone of 24 positions (the default 4096 asks the same of sequences 170
    times as long)."""
    limit = 24
    scorer = BackboneQModel(random_backbone_q(
        config=dataclasses.replace(BACKBONE, max_position_embeddings=limit)))
    long = [(7 * i) % 30 + 1 for i in range(limit + 5)]
    with pytest.raises(ValueError, match="keep_last"):
        scorer.score_texts([long])
    kept = scorer.score_texts([long, SEQUENCES[0]], keep_last=True)
    np.testing.assert_allclose(kept, scorer.score_texts([long[-limit:], SEQUENCES[0]]), rtol=1e-6)


def param_tree(model):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_training_the_last_layer_leaves_frozen_rows_untouched(model):
    trained = nnx.clone(model)
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0], np.float32)
    # A large weight decay: frozen rows would move even where their gradient is zero.
    config = TrainConfig(learning_rate=1e-2, weight_decay=0.5, max_steps=2, batch_size=4,
                         heldout_fraction=0.0)
    train_q_model(trained, pad_token_batch(SEQUENCES), labels, config,
                  update_mask=backbone_update_mask(trained, 1), progress=False)
    before, after = param_tree(model), param_tree(trained)
    layers_before, layers_after = before["backbone"]["layers"], after["backbone"]["layers"]
    stacked = [("input_layernorm", "weight"), ("mlp", "down_proj", "kernel"),
               ("self_attn", "q_proj", "kernel")]
    for path in stacked:
        b, a = layers_before, layers_after
        for key in path:
            b, a = b[key], a[key]
        np.testing.assert_array_equal(a[0], b[0])  # layer 0 of 2: frozen
        assert not np.array_equal(a[1], b[1]), path
    for frozen in (("embed_tokens", "embedding"), ("lm_head", "kernel")):
        np.testing.assert_array_equal(after["backbone"][frozen[0]][frozen[1]],
                                      before["backbone"][frozen[0]][frozen[1]])
    assert not np.array_equal(after["backbone"]["norm"]["weight"],
                              before["backbone"]["norm"]["weight"])
    assert not np.array_equal(after["head"]["out"]["kernel"], before["head"]["out"]["kernel"])


def test_masks_for_the_whole_backbone_and_for_the_head_alone(model):
    everything = backbone_update_mask(model, None)
    assert everything["backbone"]["embed_tokens"]["embedding"] == 1
    assert everything["backbone"]["lm_head"]["kernel"] == 0  # never feeds Q̂
    np.testing.assert_array_equal(everything["backbone"]["layers"]["mlp"]["up_proj"]["kernel"],
                                  np.ones((2, 1, 1)))
    head_only = backbone_update_mask(model, 0)
    assert not any(np.any(leaf) for leaf in jax.tree.leaves(head_only["backbone"]))
    assert all(np.all(leaf == 1) for leaf in jax.tree.leaves(head_only["head"]))


def test_a_mask_of_every_layer_still_freezes_the_embeddings(model):
    all_layers = backbone_update_mask(model, 2)  # both of the 2 layers
    np.testing.assert_array_equal(all_layers["backbone"]["layers"]["mlp"]["up_proj"]["kernel"],
                                  np.ones((2, 1, 1)))
    np.testing.assert_array_equal(all_layers["backbone"]["layers"]["input_layernorm"]["weight"],
                                  np.ones((2, 1)))
    assert all_layers["backbone"]["norm"]["weight"] == 1
    assert all_layers["backbone"]["embed_tokens"]["embedding"] == 0  # only with None
    assert all_layers["backbone"]["lm_head"]["kernel"] == 0
    assert all(np.all(leaf == 1) for leaf in jax.tree.leaves(all_layers["head"]))


def test_bad_inputs_are_rejected(model):
    with pytest.raises(ValueError, match="trainable_layers=3"):
        backbone_update_mask(model, 3)
    with pytest.raises(ValueError, match="does not match"):
        BackboneQ(BACKBONE, QHeadConfig(hidden_size=8), rngs=nnx.Rngs(0))

