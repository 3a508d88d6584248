"""Stage evaluate: every configured method on the held-out problems, graded and logged.

Problems go through in batches searched side by side; each finished batch is appended to
results.jsonl before the next starts, so a killed run loses no finished problem and
resumes with the problems not yet logged.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Hashable, Mapping

import numpy as np

from qstar_jax.config import (CHAIN_METHODS, REASONER_METHODS, QBackbone, Scorer,
                              ToTEvaluator, Utility)
from qstar_jax.outputs.durable import write_text_atomically
from qstar_jax.outputs.reports import SECOND_POLICY_GREEDY, write_reports
from qstar_jax.outputs.results_log import ProblemResult, ResultsLog
from qstar_jax.parallel import DATA, barrier, is_writer
from qstar_jax.policy.expander import DecoderExpander
from qstar_jax.qvalue.scorers import ScorerTokens
from qstar_jax.search.astar import AStarConfig, AStarPlanner, Budget
from qstar_jax.search.beam import BeamConfig, BeamPlanner
from qstar_jax.search.chains import (ChainConfig, ChainPlanner, greedy_planner,
                                     self_consistency_of, self_consistency_planner)
from qstar_jax.search.driver import run_search
from qstar_jax.search.interface import QValueFunction
from qstar_jax.search.planner import Planner, SearchResult
from qstar_jax.search.process_utility import PRMUtility, RuleUtility, ZeroUtility
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.matched_best_of_n import MATCHED_STATE, evaluate_best_of_n_matched
from qstar_jax.stages.prm import load_prm, prm_kind
from qstar_jax.stages.reasoners import BatchSearch, reasoner_search, reasoner_slots
from qstar_jax.stages.train_q import load_q_function
from qstar_jax.tasks.base import join_steps, state_text
from qstar_jax.tasks.code_answers import code_lines
from qstar_jax.tasks.code_rules import python_tokenizes


RESULTS_LOG = "results.jsonl"  # a line per (method, problem)


def process_utility(ctx: RunContext, problems):
    kind = ctx.config.search.utility
    if kind == Utility.zero:
        return ZeroUtility()
    if kind == Utility.code_rule:
        # The steps continue the task's code prefix (HumanEval's signature and docstring);
        # the rule reads their code as grading runs it, without the block's fences.
        return RuleUtility(rule=lambda i, steps: 0.0 if python_tokenizes(
            state_text(ctx.task.code_prefix(problems[i]), code_lines(steps))) else -0.5)
    if kind == Utility.countdown_rule:
        return RuleUtility(rule=lambda i, steps: ctx.task.step_reward(problems[i], steps))
    return PRMUtility(prm=load_prm(ctx, problems))


def slots_per_problem(ctx: RunContext, method: str, samples: int | None = None) -> int:
    """Cache slots one problem can hold at once, so a batch of problems fits the pool.
    A node's slot is freed only after its children are forked, so a step of N chains
    holds 2N slots and a beam step its parents and their children. A* keeps a slot per
    frontier node: K per expansion, for the expansions the budget allows (at least one
    step of every child per expansion). ``samples``: N of a chain method (default
    eval.samples)."""
    s, e = ctx.config.search, ctx.config.eval
    if method in REASONER_METHODS:
        return reasoner_slots(ctx, method)
    if method in CHAIN_METHODS:
        return 2 * (samples or e.samples)
    if method == "beam":
        return e.beam_width * (e.beam_k + 1)
    if method in ("qstar", "qstar_no_q"):
        expansions = min(s.max_expansions, s.max_generated_tokens // s.k + 1)
        return s.k * expansions + 1
    return 2


def answer_key(ctx: RunContext) -> Callable[[tuple[str, ...]], Hashable | None]:
    """What self-consistency votes on: the task's ``answer_key`` of a chain's text where
    it has one (the answer's value, so GSM8K's ``$18`` and ``18 dollars`` are one vote),
    else the answer it reads (a synthetic world or code task writes each answer one way)."""
    key = getattr(ctx.task, "answer_key", ctx.task.extract_answer)
    return lambda steps: key(join_steps(steps))


def planner_factory(ctx: RunContext, method: str,
                    samples: int | None = None) -> Callable[[int], Planner]:
    s, e, max_steps = ctx.config.search, ctx.config.eval, ctx.config.decode.max_steps
    chains = ChainConfig(num_chains=samples or e.samples, temperature=e.temperature,
                         max_steps=max_steps, agg=s.agg, h_agg=s.h_agg)
    if method == "greedy":
        return lambda i: greedy_planner(i, max_steps=max_steps, agg=s.agg)
    if method == "self_consistency":
        return lambda i: self_consistency_planner(i, chains, answer_key(ctx))
    if method in ("best_of_n", "best_of_n_matched"):
        rank = {Scorer.f: lambda n: n.g + s.lam * n.h, Scorer.q: lambda n: n.h,
                Scorer.prm: lambda n: n.g}[e.best_of_n_scorer]
        return lambda i: ChainPlanner(i, chains, lambda finals: np.array(
            [rank(node) for node in finals], np.float64))
    if method == "beam":
        config = BeamConfig(beam_width=e.beam_width, k=e.beam_k,
                            lam=s.lam, agg=s.agg, h_agg=s.h_agg, temperature=e.temperature,
                            max_steps=max_steps)
        return lambda i: BeamPlanner(i, config)
    lam = 0.0 if method == "qstar_no_q" else s.lam
    config = AStarConfig(k=s.k, n_complete=s.n_complete, lam=lam,
                         agg=s.agg, h_agg=s.h_agg, temperature=s.temperature,
                         expansions_per_node=s.expansions_per_node, max_steps=max_steps,
                         budget=Budget(max_expansions=s.max_expansions,
                                       max_generated_tokens=s.max_generated_tokens))
    return lambda i: AStarPlanner(i, config)


def reads_process_rewards(cfg, method: str) -> bool:
    """Whether ``method``'s choices read g, the process utility's rewards (search.utility).
    The others search with ZeroUtility, so a PRM is neither run nor charged for a search
    that ignores it: greedy, self-consistency, best-of-N ranked by Q̂, MCTSr (its own
    self-evaluation) and a Tree of Thoughts judged by Q̂ or a value prompt."""
    if method in ("greedy", SECOND_POLICY_GREEDY, "self_consistency", "mctsr"):
        return False
    if method in ("best_of_n", "best_of_n_matched"):
        return cfg.eval.best_of_n_scorer != Scorer.q
    if method in ("tot_bfs", "tot_dfs"):
        return cfg.eval.tot.evaluator == ToTEvaluator.prm
    return True  # beam, qstar and qstar_no_q rank by f = g + λ·h


def reads_any_process_rewards(cfg) -> bool:
    """Whether any method of eval.methods reads the process utility's rewards."""
    return any(reads_process_rewards(cfg, method) for method in cfg.eval.methods)


def reads_q(cfg, method: str) -> bool:
    """Whether ``method``'s choices read Q̂ (h): best-of-N ranked by f with λ ≠ 0 or by
    Q̂, beam search and Q* with λ ≠ 0, a Tree of Thoughts judged by Q̂. The others search
    without it, so Q̂ is neither run nor charged where nothing reads it: greedy,
    self-consistency, MCTSr, qstar_no_q (λ = 0), best-of-N ranked by the process reward."""
    lam = cfg.search.lam != 0
    if method in ("best_of_n", "best_of_n_matched"):
        scorer = cfg.eval.best_of_n_scorer
        return scorer == Scorer.q or (scorer == Scorer.f and lam)
    if method in ("beam", "qstar"):
        return lam
    if method in ("tot_bfs", "tot_dfs"):
        return cfg.eval.tot.evaluator == ToTEvaluator.q
    return False


def reads_q_hat(cfg) -> bool:
    """Whether a configured method reads the trained Q̂ (``reads_q``)."""
    return any(reads_q(cfg, method) for method in cfg.eval.methods)


def evaluate(ctx: RunContext, q_fn: QValueFunction | None = None) -> dict:
    """Every configured method on the evaluation problems; ``q_fn`` replaces the trained
    Q̂ (e.g. an exact value function, to measure what a perfect Q̂ would give)."""
    cfg = ctx.config
    problems = ctx.problems(cfg.task.eval_split, cfg.task.eval_problems)
    log = ResultsLog(ctx.out / RESULTS_LOG)
    runtime = ctx.runtime(problems)
    if q_fn is None and reads_q_hat(cfg):
        q_fn = load_q_function(ctx, problems)
    # A PRM no configured method reads is not loaded.
    utility = (process_utility(ctx, problems) if reads_any_process_rewards(cfg)
               else ZeroUtility())
    # Self-consistency votes on best-of-N's chains: the same N, temperature and keys
    # sample the same chains, so they are sampled once (``self_consistency_of``).
    votes_on_best_of_n = {"self_consistency", "best_of_n"} <= set(cfg.eval.methods)
    vote_on = answer_key(ctx)
    scorers = ScorerTokens.of(q_fn, utility)

    def search(method: str, samples: int) -> None:
        """Evaluate ``method`` (N = ``samples`` for a chain method) on the problems it has
        no logged result for, a batch at a time; with ``votes_on_best_of_n``, best_of_n
        also logs self-consistency's rows."""
        derived = (("self_consistency",) if method == "best_of_n" and votes_on_best_of_n
                   else ())
        done = {m: log.done(m) for m in (method, *derived)}
        pending = [i for i, p in enumerate(problems)
                   if any(p.id not in ids for ids in done.values())]
        if not pending:
            return
        rewards = utility if reads_process_rewards(cfg, method) else ZeroUtility()
        if method == SECOND_POLICY_GREEDY:  # the second policy decodes, greedy, in a cache
            # of one batch's rows beside the policy's (which the methods after it reuse)
            rows = greedy_rows(cfg, 1 if ctx.mesh is None else ctx.mesh.shape[DATA])
            search_batch = _step_search(ctx, "greedy", 1, ctx.runtime(
                problems, model=ctx.second_policy, rows=rows), None, rewards)
        elif method in REASONER_METHODS:
            search_batch = reasoner_search(ctx, method, problems, runtime, q_fn, rewards)
        else:
            search_batch = _step_search(ctx, method, samples, runtime, q_fn, rewards)
        size = min(cfg.eval.problems_per_batch,
                   ctx.searches_per_batch(slots_per_problem(ctx, method, samples)))
        for start in range(0, len(pending), size):
            batch = pending[start:start + size]
            for i in batch:
                scorers.begin(i)
            began = time.perf_counter()
            results = search_batch(batch, f"{method} {start + len(batch)}/{len(pending)}")
            share = (time.perf_counter() - began) / len(batch)
            searched = {method: results, **{other: [self_consistency_of(r, vote_on)
                                                    for r in results] for other in derived}}
            read = {i: scorers.read(i) for i in batch}  # a vote reads no scorer
            rows = [row for m, rs in searched.items()
                    for row in _graded(ctx, m, problems, rs, share, read if m == method else {})]
            if cfg.eval.dump_trees:  # before the rows: a logged problem is not searched again
                for m, rs in searched.items():
                    _dump_trees(ctx, tree_folder(m, samples), problems, rs)
            log.append(r for r in rows if r.problem_id not in done[r.method])
            barrier("results appended")  # so every process reads the log alike

    matched = None
    methods = reported_methods(ctx)
    for method in methods:
        if method == "best_of_n_matched":
            matched = evaluate_best_of_n_matched(ctx.out / MATCHED_STATE, log, search,
                                                 cfg.eval.samples)
        elif method == "self_consistency" and votes_on_best_of_n:
            continue  # logged with best_of_n
        else:
            search(method, cfg.eval.samples)
    scoring = tuple(name for name in (uncached_q_scorer(ctx), uncached_prm(cfg)) if name)
    return write_reports(ctx.out, log.read(), methods, best_of_n_samples=cfg.eval.samples,
                         matched=matched, uncached_scorers=scoring)


def uncached_prm(cfg) -> str | None:
    """The PRM that runs its own model over each scored child's whole text, uncached,
    where a method reads one (a Math-Shepherd checkpoint); None otherwise: a learned PRM
    reads the policy's hidden states."""
    source = cfg.search.prm_model
    if (not reads_any_process_rewards(cfg) or cfg.search.utility != Utility.prm
            or source is None or prm_kind(source) != "shepherd"):
        return None
    return f"the Math-Shepherd PRM ({source})"


def uncached_q_scorer(ctx: RunContext) -> str | None:
    """The model Q̂ runs over each scored child's whole text, uncached, where a method
    reads Q̂ through one (the second policy, or a separate backbone); None otherwise."""
    if not reads_q_hat(ctx.config):
        return None
    if ctx.config.q_train.backbone == QBackbone.separate:
        return f"Q̂'s separate backbone ({ctx.config.q_train.separate_model})"
    if ctx.second_opinion_dir is not None:
        return "Q̂'s second policy"
    return None


def greedy_rows(config, data_shards: int) -> int:
    """The cache rows a batch of eval.problems_per_batch greedy searches holds at once
    (``slots_per_problem``: 2 a problem), each shard holding its share whole: the size of
    the second policy's cache for ``greedy_second_policy``, which ``memory_plan`` counts
    beside the policy's. A batch the policy's slots hold to fewer problems uses less."""
    return data_shards * 2 * -(-config.eval.problems_per_batch // data_shards)


def reported_methods(ctx: RunContext) -> tuple[str, ...]:
    """eval.methods, and after greedy the second policy's greedy where Q̂ reads one: Q*
    consults two models, so its table also shows the better one decoding alone."""
    methods = ctx.config.eval.methods
    if "greedy" not in methods or ctx.second_opinion_dir is None:
        return methods
    at = methods.index("greedy") + 1
    return (*methods[:at], SECOND_POLICY_GREEDY, *methods[at:])


def _step_search(ctx: RunContext, method: str, samples: int, runtime, q_fn: QValueFunction,
                 utility) -> BatchSearch:
    """How evaluate searches a batch with one of the step planners of ``planner_factory``."""
    make = planner_factory(ctx, method, samples)
    # One expander per method: its token counts are that method's alone.
    expander = DecoderExpander(runtime, prefix_sharing=ctx.config.eval.prefix_sharing)
    made = ScorerTokens.of(q_fn, utility).counting(make)
    return lambda batch, description: run_search(
        len(batch), lambda k: made(batch[k]), expander,
        q_fn if reads_q(ctx.config, method) else None, utility,
        include_trees=ctx.config.eval.dump_trees, description=description)


def _graded(ctx: RunContext, method: str, problems, results: list[SearchResult],
            wall_share: float, scorer_tokens: Mapping[int, tuple[int, int]] | None = None):
    """Results as logged; problems searched side by side share the batch's wall-clock
    equally, so a method's summed wall_s is the time it really took. ``scorer_tokens``:
    (Q̂'s, the PRM's) uncached forward tokens by problem index (``ScorerTokens``); a
    problem it lacks (or all, where None) read none."""
    for result in results:
        problem = problems[result.problem_index]
        completion = join_steps(result.steps)
        c = result.counters
        q_tokens, prm_tokens = (scorer_tokens or {}).get(result.problem_index, (0, 0))
        # Each distinct text is graded once: the answer is often one of the chains below,
        # and grading code runs its tests in the sandbox.
        verdicts: dict[str, tuple[bool, str | None]] = {}

        def grade(text: str) -> tuple[bool, str | None]:
            if text not in verdicts:
                verdicts[text] = _grade(ctx.task, problem, text, True)
            return verdicts[text]

        correct, status = grade(completion) if result.completed else (False, None)
        # pass@N of a chain method (any complete chain right), pass@k of MCTSr (any node
        # right): a ceiling that needs the grader, never what the method answers.
        any_correct = (any(grade(join_steps(t.steps))[0] for t in result.trajectories)
                       if method in CHAIN_METHODS + ("mctsr",) else None)
        yield ProblemResult(
            method=method, problem_id=problem.id, any_correct=any_correct,
            correct=correct, grade_status=status,
            answer=ctx.task.extract_answer(completion), completion=completion,
            completed=result.completed, generated_tokens=c.generated_tokens,
            prefilled_tokens=c.prefilled_tokens, q_calls=c.q_calls, prm_calls=c.prm_calls,
            expansions=c.expansions, wall_s=round(wall_share, 4),
            pruned=result.pruned if method == "tot_dfs" else None,
            q_scorer_tokens=q_tokens, prm_scorer_tokens=prm_tokens)


def _grade(task, problem, completion: str, completed: bool) -> tuple[bool, str | None]:
    """Whether a completed answer is right, and how its tests ended where the task runs
    tests (``grade_status``); an unfinished answer is wrong and never run."""
    if not completed:
        return False, None
    if hasattr(task, "grade_status"):
        status = task.grade_status(problem, completion)
        return status == "passed", status
    return task.grade(problem, completion), None


def tree_folder(method: str, samples: int) -> str:
    """Where ``trees/`` keeps a method's trees: best_of_n_matched's under each N it was
    searched at (``n8``), as the N it settles on may be one searched before another."""
    return f"{method}/n{samples}" if method == "best_of_n_matched" else method


def _dump_trees(ctx: RunContext, folder: str, problems, results: list[SearchResult]) -> None:
    """Each search's tree as ``trees/FOLDER/PROBLEM.json``, whole or not at all; process 0
    alone writes (every process searched alike)."""
    if not is_writer():
        return
    folder = ctx.out / "trees" / folder
    folder.mkdir(parents=True, exist_ok=True)
    for result in results:
        name = problems[result.problem_index].id.replace("/", "_")
        text = json.dumps(result.tree, default=str) + "\n"
        write_text_atomically(folder / f"{name}.json", text)
