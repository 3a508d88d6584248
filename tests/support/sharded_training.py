"""Run in a child process with 4 CPU devices (``JAX_NUM_CPU_DEVICES=4 python -m
tests.support.sharded_training DIR``): Q̂ and policy training on meshes 4x1 and 2x2
against one device, orbax round trips of Q̂ training state and of a policy's parameters
saved sharded on one mesh and restored onto another's target shardings, and a trained Q̂
head and a separate-backbone Q̂ restored onto a mesh; prints one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from qstar_jax.models.compile_cache import enable_compile_cache
from qstar_jax.models.config import ModelConfig
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.lm_training import LMTrainingConfig, train_causal_lm
from qstar_jax.models.sharded_params import load_llama_onto_mesh, save_params
from qstar_jax.parallel import (ShardingRules, make_mesh, place, replicated,
                                weight_shardings)
from qstar_jax.qvalue.backbone import BackboneQ, BackboneQModel
from qstar_jax.qvalue.checkpoint import (BackboneIdentity, QCheckpointer, load_backbone_q,
                                         load_q_head)
from qstar_jax.qvalue.head import QHead, QHeadConfig
from qstar_jax.qvalue.train import TrainConfig, train_q_model

HEAD = QHeadConfig(hidden_size=8, mlp_widths=(8,), output="sigmoid")
BACKBONE_HEAD = QHeadConfig(hidden_size=8, mlp_widths=(8,))
POLICY = ModelConfig(model_type="llama", vocab_size=16, hidden_size=8, intermediate_size=16,
                     num_layers=1, num_heads=2, num_kv_heads=2, head_dim=4)


def trained_params(mesh) -> dict:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, 8)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.float32)
    head = QHead(HEAD, rngs=nnx.Rngs(0))
    train_q_model(head, features, labels, TrainConfig(max_steps=4, batch_size=16,
                                                      heldout_fraction=0.0, learning_rate=0.1),
                  progress=False, mesh=mesh)
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(head, nnx.Param)))


def trained_policy(mesh) -> dict:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, POLICY.vocab_size, (32, 12)).astype(np.int32)
    mask = np.ones(tokens.shape, np.float32)
    model = LlamaModel(POLICY, rngs=nnx.Rngs(0))
    train_causal_lm(model, tokens, mask, LMTrainingConfig(
        steps=3, batch_size=8, learning_rate=0.01, warmup_steps=1), mesh=mesh)
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def max_difference(a: dict, b: dict) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


def round_trip(directory: Path) -> dict:
    """Save params laid out over a 2x2 mesh; restore them onto a 4x1 layout."""
    values = {"w": np.arange(32, dtype=np.float32).reshape(8, 4),
              "b": np.arange(4, dtype=np.float32)}
    saved_on = make_mesh(2, 2)
    saved = place(values, {"w": NamedSharding(saved_on, PartitionSpec("data", "model")),
                           "b": NamedSharding(saved_on, PartitionSpec("model"))})
    target_on = make_mesh(4, 1)
    target = {"w": NamedSharding(target_on, PartitionSpec(None, "data")),
              "b": NamedSharding(target_on, PartitionSpec())}
    template = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            values, target)
    identity = BackboneIdentity.of_policy(POLICY)
    with QCheckpointer(directory, identity=identity, head_config=HEAD) as checkpointer:
        checkpointer.save(1, params=saved, opt_state=saved, best_params=saved,
                          progress={"step": 1})
    with QCheckpointer(directory, identity=identity, head_config=HEAD) as checkpointer:
        params, _, best, _ = checkpointer.restore(params=template, opt_state=template,
                                                  best_params=template)
    return {"equal": all(np.array_equal(np.asarray(tree[k]), values[k])
                         for tree in (params, best) for k in values),
            "shardings_as_target": all(tree[k].sharding == target[k]
                                       for tree in (params, best) for k in values)}


def params_of(module) -> dict:
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def policy_round_trip(directory: Path) -> dict:
    """A policy's params saved laid out over a 2x2 mesh (as the decoder lays them out),
    restored onto a 1x4 mesh's layout (4-way vocabulary and MLP, the 2 heads replicated)."""
    model = LlamaModel(POLICY, rngs=nnx.Rngs(0))
    saved_on = make_mesh(2, 2)
    rules = ShardingRules().for_model(POLICY, saved_on)
    nnx.update(model, place(params_of(model), weight_shardings(params_of(model), saved_on,
                                                               rules)))
    save_params(model, directory)
    target_on = make_mesh(1, 4)
    restored = load_llama_onto_mesh(directory, POLICY, target_on, dtype=np.float32)
    target = weight_shardings(params_of(restored), target_on,
                              ShardingRules().for_model(POLICY, target_on))
    return {"equal": max_difference(jax.tree.map(np.asarray, params_of(model)),
                                    jax.tree.map(np.asarray, params_of(restored))) == 0.0,
            "shardings_as_target": all(jax.tree.leaves(jax.tree.map(
                lambda x, s: x.sharding == s, params_of(restored), target))),
            "embedding_spec": str(params_of(restored)["embed_tokens"]["embedding"]
                                  .sharding.spec)}


def q_head_on_a_mesh(directory: Path) -> dict:
    """A trained head restored replicated onto a 4x1 mesh."""
    head = QHead(HEAD, rngs=nnx.Rngs(0))
    with QCheckpointer(directory, identity=BackboneIdentity.of_policy(POLICY),
                       head_config=HEAD) as checkpointer:
        train_q_model(head, np.ones((16, 8), np.float32), np.ones(16, np.float32),
                      TrainConfig(max_steps=2, batch_size=8, heldout_fraction=0.0),
                      checkpointer=checkpointer, progress=False)
    mesh = make_mesh(4, 1)
    loaded = load_q_head(directory, policy_config=POLICY, mesh=mesh)
    return {"equal": max_difference(jax.tree.map(np.asarray, params_of(head)),
                                    jax.tree.map(np.asarray, params_of(loaded))) == 0.0,
            "replicated_on_mesh": all(x.sharding == replicated(mesh)
                                      for x in jax.tree.leaves(params_of(loaded)))}


def backbone_q_on_a_mesh(directory: Path) -> dict:
    """A separate-backbone Q̂'s checkpoint restored replicated onto a 4x1 mesh, and the
    texts it scores there against the one-device restore."""
    shapes = nnx.eval_shape(lambda: BackboneQ(POLICY, BACKBONE_HEAD, rngs=nnx.Rngs(0)))
    best = jax.tree.map(lambda s: np.random.default_rng(0).normal(size=s.shape).astype(s.dtype),
                        nnx.to_pure_dict(nnx.state(shapes, nnx.Param)))
    with QCheckpointer(directory, identity=BackboneIdentity.of_separate_backbone(POLICY),
                       head_config=BACKBONE_HEAD) as checkpointer:
        checkpointer.save(1, params=best, opt_state={"count": np.zeros((), np.int32)},
                          best_params=best, progress={"step": 1})
    mesh = make_mesh(4, 1)
    alone, on_mesh = load_backbone_q(directory), load_backbone_q(directory, mesh=mesh)
    texts = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
    return {"equal": max_difference(jax.tree.map(np.asarray, params_of(alone)),
                                    jax.tree.map(np.asarray, params_of(on_mesh))) == 0.0,
            "replicated_on_mesh": all(x.sharding == replicated(mesh)
                                      for x in jax.tree.leaves(params_of(on_mesh))),
            "scores_differ_by": float(np.max(np.abs(
                BackboneQModel(alone).score_texts(texts, keep_last=True)
                - BackboneQModel(on_mesh).score_texts(texts, keep_last=True))))}


def main() -> None:
    enable_compile_cache()  # the suite's (the folder QSTAR_COMPILE_CACHE names)
    single_q, single_policy = trained_params(None), trained_policy(None)
    report = {}
    for shape in ((4, 1), (2, 2)):
        mesh = make_mesh(*shape)
        report["x".join(map(str, shape))] = {
            "q": max_difference(single_q, trained_params(mesh)),
            "policy": max_difference(single_policy, trained_policy(mesh))}
    folder = Path(sys.argv[1])
    report["round_trip"] = round_trip(folder / "q")
    report["policy_round_trip"] = policy_round_trip(folder / "policy")
    report["q_head_on_a_mesh"] = q_head_on_a_mesh(folder / "head")
    report["backbone_q_on_a_mesh"] = backbone_q_on_a_mesh(folder / "backbone_q")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
