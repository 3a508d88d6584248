"""Counting how often a training loop traces its step: each trace shards a batch."""

from __future__ import annotations

from qstar_jax.parallel import shard_rows


def count_step_traces(monkeypatch, module) -> list:
    """The meshes ``module``'s step was traced on, one per trace, as the test runs: its
    ``shard_rows`` records the mesh of each call, which only tracing the step makes."""
    traced = []
    monkeypatch.setattr(module, "shard_rows",
                        lambda rows, mesh: traced.append(mesh) or shard_rows(rows, mesh))
    return traced
