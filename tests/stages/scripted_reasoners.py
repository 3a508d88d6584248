"""Reasoner searches over a scripted runtime, for the tests of evaluate's wiring of ToT
and MCTSr and of their tree dumps."""

import types

import numpy as np

from qstar_jax.config_loading import load_config
from qstar_jax.policy.runtime import SampledStep, SampledText
from qstar_jax.search.process_utility import ZeroUtility
from qstar_jax.stages.reasoners import reasoner_search
from qstar_jax.tasks.base import Problem
from tests.support.scripted_runtime import ScriptedRuntime

TOKENS = 2  # per sampled line


class OneLineRuntime(ScriptedRuntime):
    """Every sampled line and text is "Score: 50" (TOKENS tokens), a line ends its trace;
    a prompt costs one token per character."""

    def sample(self, slots, problem_indices, node_ids, temperatures):
        for i in problem_indices:
            self.generated[i] += TOKENS
        return [SampledStep(text="Score: 50", token_ids=(0,) * TOKENS, logprob=0.0,
                            hidden=np.zeros(1), ends_trace=True, slot=s) for s in slots]

    def sample_texts(self, slots, problem_indices, node_ids, temperatures, max_tokens,
                     read_complete=None):
        for i in problem_indices:
            self.generated[i] += TOKENS
        return [SampledText(text="Score: 50", token_ids=(0,) * TOKENS) for _ in slots]


class CountingQ:
    """Q̂ of 0.5 for every item."""

    def score(self, items):
        return np.full(len(items), 0.5)


def run(method, *overrides):
    """``method`` over problems 0 and 2 of three: (results, the context it read)."""
    config = load_config(overrides=["eval.tot.k=2", "eval.tot.keep=2",
                                    "eval.mctsr.rollouts=1", "eval.mctsr.score_samples=2",
                                    "eval.prefix_sharing=false", *overrides])
    problems = [Problem(id=f"p{i}", question=f"q{i}", reference=None) for i in range(3)]
    runtime = OneLineRuntime()
    ctx = types.SimpleNamespace(config=config)
    search = reasoner_search(ctx, method, problems, runtime, CountingQ(), ZeroUtility())
    results = search([0, 2], method)
    assert not runtime.held, "every slot is freed"
    return results, ctx
