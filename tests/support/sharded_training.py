"""Run in a child process with 4 CPU devices (``JAX_NUM_CPU_DEVICES=4 python -m
tests.support.sharded_training DIR``): Q̂ and policy training on meshes 4x1 and 2x2
against one device, and an orbax round trip of params saved sharded on one mesh and
restored onto another; prints one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from qstar_jax.models.config import ModelConfig
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.lm_training import LMTrainingConfig, train_causal_lm
from qstar_jax.parallel import make_mesh, place
from qstar_jax.qvalue.checkpoint import BackboneIdentity, QCheckpointer
from qstar_jax.qvalue.head import QHead, QHeadConfig
from qstar_jax.qvalue.train import TrainConfig, train_q_model

HEAD = QHeadConfig(hidden_size=8, mlp_widths=(8,), output="sigmoid")
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


def main() -> None:
    single_q, single_policy = trained_params(None), trained_policy(None)
    report = {}
    for shape in ((4, 1), (2, 2)):
        mesh = make_mesh(*shape)
        report["x".join(map(str, shape))] = {
            "q": max_difference(single_q, trained_params(mesh)),
            "policy": max_difference(single_policy, trained_policy(mesh))}
    report["round_trip"] = round_trip(Path(sys.argv[1]))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
