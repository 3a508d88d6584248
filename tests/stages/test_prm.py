"""The learned PRM: trained, saved, restored to the same scores; told apart from a
Math-Shepherd checkpoint by what its directory holds."""

import json

import numpy as np
import pytest
from flax import nnx

from qstar_jax.config import ConfigError
from qstar_jax.qvalue.checkpoint import BackboneIdentity, BackboneMismatchError
from qstar_jax.qvalue.head import QHead, QHeadConfig, QHeadModel
from qstar_jax.qvalue.scorers import PolicyHiddenPRM
from qstar_jax.qvalue.train import TrainConfig
from qstar_jax.search.interface import QItem
from qstar_jax.stages.prm import (LEARNED_PRM_MARKER, load_learned_prm, prm_kind,
                                  train_learned_prm)
from tests.decoding.tiny_models import tiny_config

POLICY = tiny_config(64)  # hidden size 32


def _items(hiddens):
    return [QItem(problem_index=0, prefix_steps=(), step_text=str(k), hidden=h)
            for k, h in enumerate(hiddens)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("prm")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, POLICY.hidden_size)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.float32) * 0.75  # soft labels
    head = QHead(QHeadConfig(hidden_size=POLICY.hidden_size, mlp_widths=(16,)),
                 rngs=nnx.Rngs(0))
    settings = TrainConfig(loss="bce", learning_rate=1e-2, max_steps=30, batch_size=16,
                           heldout_fraction=0.25, eval_every=5, checkpoint_every=5)
    result = train_learned_prm(head, features, labels, settings, directory,
                               BackboneIdentity.of_policy(POLICY))
    (directory / LEARNED_PRM_MARKER).write_text(json.dumps({"labels": "soft"}))
    return directory, head, result


def test_restored_prm_scores_exactly_what_the_trained_one_did(trained):
    directory, head, result = trained
    assert result.steps > 0
    hiddens = np.random.default_rng(1).normal(size=(7, POLICY.hidden_size)).astype(np.float32)
    before = PolicyHiddenPRM(QHeadModel(head)).score_steps(_items(hiddens))
    after = load_learned_prm(directory, policy_config=POLICY).score_steps(_items(hiddens))
    np.testing.assert_array_equal(after, before)
    assert np.all((after > 0) & (after < 1)) and np.ptp(after) > 0


def test_a_prm_of_another_policy_or_without_hidden_states_is_refused(trained):
    directory, head, _ = trained
    with pytest.raises(BackboneMismatchError, match="policy_features"):
        load_learned_prm(directory, policy_config=tiny_config(32))
    with pytest.raises(ValueError, match="hidden state"):
        PolicyHiddenPRM(QHeadModel(head)).score_steps(_items([None]))


def test_prm_kind_reads_what_the_directory_holds(trained, tmp_path):
    directory, _, _ = trained
    assert prm_kind(str(directory)) == "learned"
    hf = tmp_path / "shepherd"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert prm_kind(str(hf)) == "shepherd"
    assert prm_kind("smollm2-135m-instruct") == "shepherd"
    with pytest.raises(ConfigError, match="neither a PRM the train_prm stage wrote"):
        prm_kind(str(tmp_path))
