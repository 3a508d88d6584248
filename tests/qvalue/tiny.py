"""Tiny synthetic data and configs shared by the Q̂ tests (one shape set, so the jit
compiles of building and running a backbone are paid once per test process)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qstar_jax.models.config import ModelConfig
from qstar_jax.qvalue.backbone import BackboneQ
from qstar_jax.qvalue.head import QHeadConfig

E = 8  # hidden size of the synthetic features

BACKBONE = ModelConfig(model_type="llama", vocab_size=40, hidden_size=16, intermediate_size=32,
                       num_layers=2, num_heads=2, num_kv_heads=1, head_dim=8)
BACKBONE_HEAD = QHeadConfig(hidden_size=16, mlp_widths=(8,))


def separable_features(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """features [~n, E] float32 and labels [~n] in {0, 1}: label = (w·x > 0), with every
    point at least 0.5 from the boundary (points inside the margin are dropped)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=E)
    x = rng.normal(size=(n, E)).astype(np.float32)
    margin = x @ w / np.linalg.norm(w)
    keep = np.abs(margin) > 0.5
    return x[keep], (margin[keep] > 0).astype(np.float32)


def random_backbone_q(seed: int = 0, config: ModelConfig = BACKBONE,
                      head: QHeadConfig = BACKBONE_HEAD) -> BackboneQ:
    """A ``BackboneQ`` (of the tiny config unless given) with weights drawn by numpy
    (N(0, 0.2)): building from shapes avoids compiling a random initializer for every
    parameter shape."""
    def build():
        return BackboneQ(config, head, rngs=nnx.Rngs(0))

    graphdef, shapes, _ = nnx.split(nnx.eval_shape(build), nnx.Param, ...)
    rest = jax.jit(lambda: nnx.split(build(), nnx.Param, ...)[2])()
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.2, s.shape), s.dtype),
                          nnx.to_pure_dict(shapes))
    return nnx.merge(graphdef, params, rest)
