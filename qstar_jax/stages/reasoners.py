"""Stage evaluate's wiring of the other reasoners: Tree of Thoughts and MCTSr.

Both run on the policy runtime Q* runs on, so their compute is counted alike: ToT's steps
through a ``DecoderExpander``, MCTSr's whole answers and ToT's value prompts through a
``DecoderTextGenerator``, each charging the problem it works for.
"""

from __future__ import annotations

from typing import Callable, Sequence

from qstar_jax.config import ToTEvaluator
from qstar_jax.policy.expander import DecoderExpander
from qstar_jax.policy.runtime import PolicyRuntime
from qstar_jax.policy.text_generator import DecoderTextGenerator
from qstar_jax.qvalue.scorers import ScorerTokens
from qstar_jax.search.driver import run_search
from qstar_jax.search.interface import ProcessUtility, QValueFunction
from qstar_jax.search.mctsr import MCTSrPlanner
from qstar_jax.search.planner import SearchResult
from qstar_jax.search.text_driver import run_text_search
from qstar_jax.search.tot import (ToTConfig, ToTDFSPlanner, process_value, q_value,
                                  tot_bfs_planner)
from qstar_jax.search.value_prompt import ValuePromptScorer
from qstar_jax.stages.context import RunContext
from qstar_jax.tasks.base import Problem
from qstar_jax.tasks.prompts import ReasonerPrompts

# (indices of the problems of a batch, progress-bar label) -> their results
BatchSearch = Callable[[list[int], str], list[SearchResult]]


def reasoner_slots(ctx: RunContext, method: str) -> int:
    """Cache slots one problem can hold at once (see ``evaluate.slots_per_problem``): a
    text holds a prompt row and a row per sample; a value prompt scores every child of a
    round at once."""
    e, t = ctx.config.eval, ctx.config.eval.tot
    value_rows = t.value_samples + 1 if t.evaluator == ToTEvaluator.value_prompt else 0
    kept = e.text_kept_rows  # the text generator's kept rows (policy/kept_rows.py)
    if method == "tot_bfs":  # a depth's parents and their children
        return t.keep * (t.k + 1) + t.keep * t.k * value_rows + kept * bool(value_rows)
    if method == "tot_dfs":  # up to K - 1 waiting siblings per depth, and K new children
        return ((t.k - 1) * ctx.config.decode.max_steps + t.k + 1 + t.k * value_rows
                + kept * bool(value_rows))
    if method == "mctsr":
        return e.mctsr.score_samples + 1 + kept
    raise ValueError(f"{method!r} is not one of the reasoner methods")


def reasoner_search(ctx: RunContext, method: str, problems: Sequence[Problem],
                    runtime: PolicyRuntime, q_fn: QValueFunction | None,
                    utility: ProcessUtility) -> BatchSearch:
    """How evaluate searches a batch of problems with ``method``; ``q_fn`` is the trained
    Q̂, ``utility`` the process utility, as for Q*."""
    cfg = ctx.config
    e = cfg.eval
    chat = ctx.policy.tokenizer.apply_chat_template if cfg.policy.chat_template else None
    prompts = ReasonerPrompts(questions=tuple(p.question for p in problems), chat=chat)
    generator = DecoderTextGenerator(runtime, max_tokens=e.text_max_tokens,
                                     kept_rows_per_problem=e.text_kept_rows)
    if method == "mctsr":
        return _dropping_kept_rows(generator, lambda batch, description: run_text_search(
            len(batch), lambda k: MCTSrPlanner(batch[k], e.mctsr, prompts), generator,
            include_trees=e.dump_trees, description=description))
    t = e.tot
    config = ToTConfig(k=t.k, keep=t.keep, threshold=t.threshold,
                       max_expansions=t.max_expansions, temperature=e.temperature,
                       max_steps=cfg.decode.max_steps, agg=cfg.search.agg,
                       h_agg=cfg.search.h_agg)
    value = process_value if t.evaluator == ToTEvaluator.prm else q_value
    if t.evaluator == ToTEvaluator.value_prompt:
        q_fn = ValuePromptScorer(generator=generator, prompt=prompts.value,
                                 samples=t.value_samples, temperature=t.value_temperature)
    elif t.evaluator == ToTEvaluator.prm:
        q_fn = None  # ranked by g: Q̂ calls would be spent for nothing
    planner = {"tot_bfs": tot_bfs_planner, "tot_dfs": ToTDFSPlanner}[method]
    expander = DecoderExpander(runtime, prefix_sharing=e.prefix_sharing)
    made = ScorerTokens.of(q_fn, utility).counting(lambda index: planner(index, config, value))
    return _dropping_kept_rows(generator, lambda batch, description: run_search(
        len(batch), lambda k: made(batch[k]), expander, q_fn, utility,
        include_trees=e.dump_trees, description=description))


def _dropping_kept_rows(generator: DecoderTextGenerator, search: BatchSearch) -> BatchSearch:
    """``search``, after which (finished or failed) the generator's kept rows are freed,
    so the next batch starts with every slot it was sized for."""
    def searched(batch: list[int], description: str) -> list[SearchResult]:
        try:
            return search(batch, description)
        finally:
            generator.drop_kept()
    return searched
