"""train_q on a separate backbone (q_train.backbone=separate): the configured model, its
pretrained weights, reads each labelled step's text after its problem's prompt; q_train
sizes the head and the layers training may change."""

import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from flax import nnx

from qstar_jax.config_loading import load_config
from qstar_jax.models.loading import LoadedModel
from qstar_jax.qvalue.checkpoint import BackboneIdentity
from qstar_jax.qvalue.dataset import LabelledStep, save_labelled
from qstar_jax.qvalue.head import QHeadConfig
from qstar_jax.qvalue.train import TrainResult
from qstar_jax.stages import separate_q
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.train_q import train_config, train_q
from qstar_jax.tasks.base import state_text
from tests.qvalue.tiny import BACKBONE, random_backbone_q

STEPS = [LabelledStep(problem_index=1, prefix_steps=(), step_text="a = 1", label=1.0),
         LabelledStep(problem_index=0, prefix_steps=("b = 2",), step_text="#### 2", label=0.0),
         LabelledStep(problem_index=1, prefix_steps=("a = 1",), step_text="#### 1", label=0.5)]


def encode(text):
    return [ord(c) % BACKBONE.vocab_size for c in text]


@pytest.mark.parametrize(("trainable_layers", "layer_rows"), [(1, [0.0, 1.0]), (0, [0.0, 0.0]),
                                                          (-1, [1.0, 1.0])])
def test_separate_q_trains_the_pretrained_model_on_each_steps_text(tmp_path, monkeypatch,
                                                                   trainable_layers,
                                                                   layer_rows):
    pretrained = LoadedModel(config=BACKBONE, model=random_backbone_q(seed=7).backbone,
                             tokenizer=SimpleNamespace(encode=encode, encode_input=encode,
                                                       pad_id=0))
    loaded = []
    monkeypatch.setattr(RunContext, "load", lambda self, source: loaded.append(source)
                        or pretrained)
    fitted = {}

    def fit(model, batch, labels, config, *, update_mask, checkpointer, mesh):
        fitted.update(model=model, batch=batch, labels=labels, config=config,
                      mask=update_mask, checkpointer=checkpointer)
        return TrainResult(steps=3, stopped_early=False, best_step=None,
                           best_heldout_loss=None, heldout_losses=())
    monkeypatch.setattr(separate_q, "train_q_model", fit)
    # Built from shapes with other weights than the pretrained model's: fast, and only the
    # pretrained weights copied in make the backbone the pretrained one.
    monkeypatch.setattr(separate_q, "BackboneQ", lambda config, head, *, rngs:
                        random_backbone_q(seed=0, config=config, head=head))
    ctx = RunContext(config=load_config(None, [
        "q_train.backbone=separate", "q_train.separate_model=/a/model",
        "q_train.second_opinion=null", f"q_train.trainable_layers={trainable_layers}",
        "q_train.hidden_layers=2", "q_train.loss=mse", "task.train_problems=2"]), out=tmp_path)
    save_labelled(ctx.labels_path, STEPS)
    train_q(ctx)

    assert loaded == ["/a/model"]
    prompts = ctx.prompts(ctx.problems("train", 2))
    texts = [encode(state_text(prompts[s.problem_index], (*s.prefix_steps, s.step_text)))
             for s in STEPS]
    batch = fitted["batch"]
    assert batch.tokens.shape[1] % 16 == 0 and list(batch.lengths) == [len(t) for t in texts]
    assert [list(row[:len(t)]) for row, t in zip(batch.tokens, texts)] == texts
    np.testing.assert_array_equal(fitted["labels"], [1.0, 0.0, 0.5])
    assert fitted["config"] == train_config(ctx, 3)
    model = fitted["model"]
    assert model.head_config == QHeadConfig(hidden_size=16, mlp_widths=(16, 16), output="raw")
    jax.tree.map(np.testing.assert_array_equal,
                 nnx.to_pure_dict(nnx.state(model.backbone, nnx.Param)),
                 nnx.to_pure_dict(nnx.state(pretrained.model, nnx.Param)))
    # At 1 the last of the 2 layers trains, at 0 neither (the head alone), at -1 both.
    for rows in jax.tree.leaves(fitted["mask"]["backbone"]["layers"]):
        np.testing.assert_array_equal(rows.ravel(), layer_rows)
    # Checkpointed in q_dir as a separate backbone of the loaded config, which is what
    # load_backbone_q rebuilds the model from, under the head trained.
    checkpointer = fitted["checkpointer"]
    assert checkpointer.directory == ctx.q_dir
    assert checkpointer.identity == BackboneIdentity.of_separate_backbone(BACKBONE)
    assert checkpointer.head_config == model.head_config
    assert json.loads((tmp_path / "q_training.json").read_text())["examples"] == 3
