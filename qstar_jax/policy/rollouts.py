"""Q̂ labelling's ``RolloutSampler`` over the batched decoder.

Each item's prompt and prefix are prefilled once and forked into ``n`` rows, which are
stepped together until every trace ends (or ``max_steps``). Items go through in chunks
that fit the slot pool.
"""

from __future__ import annotations

from typing import Callable, Sequence

from qstar_jax.policy.runtime import PolicyRuntime, stable_id


class DecoderRolloutSampler:
    def __init__(self, runtime: PolicyRuntime | Callable[[], PolicyRuntime], *,
                 max_steps: int):
        """runtime: the policy decoding, or what builds it when first asked to sample: a
        stage with nothing left to sample (every rollout on disk, every label taken from
        the traces) then builds no decoder and allocates no cache."""
        self._runtime = runtime
        self.max_steps = max_steps  # a trace that runs longer is cut off (and unfinished)

    @property
    def runtime(self) -> PolicyRuntime:
        if not isinstance(self._runtime, PolicyRuntime):
            self._runtime = self._runtime()
        return self._runtime

    def continue_from(self, items: Sequence[tuple[int, tuple[str, ...]]], n: int,
                      temperature: float, max_steps: int | None = None
                      ) -> list[list[tuple[str, ...]]]:
        limit = self.max_steps if max_steps is None else min(max_steps, self.max_steps)
        per_chunk = max(1, self.runtime.decoder.pool.num_free // (n + 1))
        out: list[list[tuple[str, ...]]] = []
        for start in range(0, len(items), per_chunk):
            out.extend(self._chunk(items[start:start + per_chunk], n, temperature, limit))
        return out

    def _chunk(self, items, n, temperature, limit):
        rt = self.runtime
        roots = rt.prefill([i for i, _ in items], [prefix for _, prefix in items])
        rows = [slot for slots in rt.fork(roots, [n] * len(items)) for slot in slots]
        rt.free(roots)
        owners = [(k, j) for k in range(len(items)) for j in range(n)]
        steps = [[] for _ in rows]
        live = list(range(len(rows)))
        for depth in range(limit):
            if not live:
                break
            sampled = rt.sample(
                [rows[r] for r in live], [items[owners[r][0]][0] for r in live],
                [stable_id("rollout", *items[owners[r][0]][1], owners[r][1], depth)
                 for r in live],
                [temperature] * len(live))
            for r, s in zip(live, sampled):
                steps[r].append(s.text)
            rt.free([rows[r] for r, s in zip(live, sampled) if s.ends_trace])
            live = [r for r, s in zip(live, sampled) if not s.ends_trace]
        rt.free([rows[r] for r in live])
        grouped = [[] for _ in items]
        for r, (k, _) in enumerate(owners):
            grouped[k].append(tuple(steps[r]))
        return grouped
