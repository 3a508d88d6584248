"""The collect and label stages' wiring: what collect asks of the rollout collection, and
which of the rollouts' (s, a) pairs label labels."""

from types import SimpleNamespace

import numpy as np
import pytest

from qstar_jax.config import ConfigError
from qstar_jax.config_loading import load_config
from qstar_jax.outputs import durable
from qstar_jax.policy.runtime import PolicyRuntime
from qstar_jax.qvalue.dataset import labelled, load_labelled, load_step_logprobs
from qstar_jax.qvalue.label_journal import LabelJournal
from qstar_jax.qvalue.labels_best_of import BestOfRolloutsConfig
from qstar_jax.qvalue.rollouts import ProblemRollouts, Rollout
from qstar_jax.stages import rollouts
from qstar_jax.stages.context import RunContext


STAND_IN = object.__new__(PolicyRuntime)  # a runtime that decodes nothing


def stand_in_runtime(monkeypatch) -> list:
    """ctx.runtime answers STAND_IN; returns the (problems, model) it is asked for."""
    built = []
    monkeypatch.setattr(RunContext, "runtime", lambda self, problems, model=None, rows=None:
                        built.append((problems, model)) or STAND_IN)
    return built


def test_collect_samples_each_training_problem_at_collects_settings(tmp_path, monkeypatch):
    asked = {}
    monkeypatch.setattr(rollouts, "collect_rollouts", lambda problems, sampler, reward,
                        **settings: asked.update(problems=problems, sampler=sampler,
                                                 reward=reward, **settings))
    ctx = RunContext(config=load_config(None, [
        "task.train_problems=3", "collect.rollouts_per_problem=5", "collect.temperature=0.7",
        "eval.temperature=0.2", "decode.max_steps=6", "decode.slots=64"]), out=tmp_path)
    built = stand_in_runtime(monkeypatch)
    rollouts.collect(ctx)
    assert asked["problems"] == [0, 1, 2] and asked["sampler"].max_steps == 6
    # The policy decodes the 3 training problems, built only when first asked to sample.
    assert not built and asked["sampler"].runtime is STAND_IN
    assert built == [(ctx.problems("train", 3), None)]
    del asked["problems"], asked["sampler"]
    reward = asked.pop("reward")
    assert asked == dict(per_problem=5, temperature=0.7, out_path=tmp_path / "rollouts.jsonl",
                         max_steps=6, batch_problems=64 // 6)  # 5 rollouts and the prompt
    problem = ctx.problems("train", 3)[1]
    right = ctx.task.solution_steps(problem)
    assert (reward(1, tuple(right)), reward(1, (*right[:-1], "#### -1")),
            reward(0, tuple(right))) == (1.0, 0.0, 0.0)


def no_features(monkeypatch):
    """The policy's features stood in by zeros: the label stages' tests load no model."""
    monkeypatch.setattr(rollouts, "last_step_features", lambda model, tokenizer, states,
                        steps: (np.zeros((len(steps), 4), np.float32),
                                np.zeros(len(steps), np.float32)))


def one_problem_run(out, *overrides):
    """A run on training problem 0 whose rollouts.jsonl holds two traces of two steps, the
    solution's first two and a wrong first step then the solution's second, both reward 0."""
    ctx = RunContext(config=load_config(None, ["task.train_problems=1", *overrides]), out=out)
    ctx.__dict__["policy"] = SimpleNamespace(model=None, tokenizer=None)  # not loaded
    [problem] = ctx.problems("train", 1)
    right = ctx.task.solution_steps(problem)
    wrong = right[0].rsplit(" ", 1)[0] + " -1"  # the first step's sum miscomputed
    with durable.open_for_append(ctx.rollouts_path) as f:
        durable.append_records(f, [ProblemRollouts(problem_index=0, temperature=1.0, rollouts=(
            Rollout(steps=(right[0], right[1]), reward=0.0),
            Rollout(steps=(wrong, right[1]), reward=0.0))).to_json()])
    return ctx, right, wrong


def test_label_drops_the_pairs_after_a_dead_state_when_asked(tmp_path, monkeypatch):
    no_features(monkeypatch)
    monkeypatch.setattr(rollouts, "fitted_q_labels", lambda ctx, pairs, features:
                        labelled(pairs, [0.5] * len(pairs)))

    def labelled_steps(*overrides):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        ctx, right, wrong = one_problem_run(out, "label.method=fitted_q_iteration", *overrides)
        rollouts.label(ctx)
        ctx.rollouts_path.unlink()
        rollouts.label(ctx)  # labels.jsonl is there: the stage reads nothing, writes nothing
        steps, _ = load_labelled(ctx.labels_path)
        return [(s.prefix_steps, s.step_text) for s in steps], right, wrong

    live, right, wrong = labelled_steps()  # live_states_only is the default
    assert live == [((), right[0]), ((right[0],), right[1]), ((), wrong)]
    every, _, _ = labelled_steps("label.live_states_only=false")
    assert every == live + [((wrong,), right[1])]


def test_label_reads_the_policys_features_of_each_kept_pair_after_its_own_prompt(
        tmp_path, monkeypatch):
    """The policy's model and tokenizer read each live pair's state (the training
    problem's prompt and the steps before) and step; the pair after the dead state is
    not read, and the features go to Q-hat's labels as computed."""
    read = []

    def features(model, tokenizer, states, steps):
        read.append((model, tokenizer, states, steps))
        return (np.arange(len(steps) * 4, dtype=np.float32).reshape(-1, 4),
                -np.arange(len(steps), dtype=np.float32))

    monkeypatch.setattr(rollouts, "last_step_features", features)
    monkeypatch.setattr(rollouts, "fitted_q_labels", lambda ctx, pairs, features:
                        labelled(pairs, features[:, 0].tolist()))
    ctx, right, wrong = one_problem_run(tmp_path, "label.method=fitted_q_iteration")
    ctx.__dict__["policy"] = SimpleNamespace(model="policy model", tokenizer="its tokenizer")
    rollouts.label(ctx)
    [prompt] = ctx.prompts(ctx.problems("train", 1))
    assert read == [("policy model", "its tokenizer",
                     [prompt, f"{prompt}{right[0]}\n", prompt],
                     [f"{right[0]}\n", f"{right[1]}\n", f"{wrong}\n"])]
    steps, features = load_labelled(ctx.labels_path)
    assert [s.label for s in steps] == [0.0, 4.0, 8.0]
    np.testing.assert_array_equal(features, np.arange(12, dtype=np.float32).reshape(3, 4))
    np.testing.assert_array_equal(load_step_logprobs(ctx.labels_path), [0.0, -1.0, -2.0])


class RecordedSolver(rollouts.SolverSampler):
    """The exact solver, appending each call's items to ``calls``; it raises at call
    number ``kill_at``, as a kill mid-stage would stop it."""

    def __init__(self, complete, calls: list, kill_at: int | None = None):
        super().__init__(complete)
        self.calls, self.kill_at = calls, kill_at

    def continue_from(self, items, n, temperature, max_steps=None):
        self.calls.append(list(items))
        if len(self.calls) == self.kill_at:
            raise KeyboardInterrupt
        return super().continue_from(items, n, temperature, max_steps)


def test_a_killed_label_stage_keeps_its_journal_and_a_finished_one_removes_it(
        tmp_path, monkeypatch):
    no_features(monkeypatch)
    # label.stronger_model=solver is the default; slots for one pair and its rollout a call.
    ctx, right, wrong = one_problem_run(tmp_path, "label.rollouts_per_state=1", "decode.slots=2")
    journal = LabelJournal(tmp_path / "labels.partial.jsonl")
    killed_calls = []
    monkeypatch.setattr(rollouts, "SolverSampler", lambda complete: RecordedSolver(
        complete, killed_calls, kill_at=2))
    with pytest.raises(KeyboardInterrupt):
        rollouts.label(ctx)
    # The open pairs, a call each; the second trace's last step ends it (reward 0).
    assert killed_calls == [[(0, (right[0],))], [(0, (wrong,))]]
    # right[0] then the solver's 5 steps to the answer: 0.8 ** 5 at label.gamma 0.8.
    assert journal.known() == {(0, (), right[0]): 0.8 ** 5}
    assert not ctx.labels_path.exists()

    resumed_calls = []
    monkeypatch.setattr(rollouts, "SolverSampler", lambda complete: RecordedSolver(
        complete, resumed_calls))
    save_labelled = rollouts.save_labelled

    def killed_while_saving(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rollouts, "save_labelled", killed_while_saving)
    with pytest.raises(KeyboardInterrupt):
        rollouts.label(ctx)
    assert resumed_calls == [[(0, (wrong,))]]  # the journalled pair is not completed again
    # Killed before labels.jsonl is written, the journal still holds every label.
    assert journal.known() == {(0, (), right[0]): 0.8 ** 5, (0, (), wrong): 0.0}
    monkeypatch.setattr(rollouts, "save_labelled", save_labelled)
    rollouts.label(ctx)
    assert resumed_calls == [[(0, (wrong,))]]  # nothing left to complete
    steps, _ = load_labelled(ctx.labels_path)
    assert [(s.prefix_steps, s.step_text, s.label) for s in steps] == [
        ((), right[0], 0.8 ** 5), ((right[0],), right[1], 0.0), ((), wrong, 0.0)]
    assert not journal.path.exists()  # the finished stage leaves only its labels
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "labels.jsonl", "labels.jsonl.features.npz", "rollouts.jsonl"]


def test_label_by_best_of_rollouts_samples_at_the_label_and_collect_settings(
        tmp_path, monkeypatch):
    no_features(monkeypatch)
    asked = {}

    def best_of_rollouts(pairs, sampler, reward, config, **journals):
        asked.update(pairs=pairs, sampler=sampler, reward=reward, config=config, **journals)
        return labelled(pairs, [0.25] * len(pairs))

    monkeypatch.setattr(rollouts, "best_of_rollouts_labels", best_of_rollouts)
    ctx, right, wrong = one_problem_run(tmp_path, "label.method=best_of_rollouts",
                                        "label.rollouts_per_state=3", "label.gamma=0.9",
                                        "label.trace_is_a_rollout=true", "collect.temperature=0.7",
                                        "eval.temperature=0.2", "decode.max_steps=6",
                                        "decode.slots=9")
    built = stand_in_runtime(monkeypatch)
    rollouts.label(ctx)
    assert not built and asked["sampler"].runtime is STAND_IN
    assert built == [(ctx.problems("train", 1), None)]  # the policy on the training problem
    assert asked.pop("config") == BestOfRolloutsConfig(
        rollouts=3, temperature=0.7, discount=0.9, max_steps=6,
        batch_pairs=2,  # 9 slots hold two pairs' states and 3 rollouts each
        trace_is_a_rollout=True)
    assert asked.pop("sampler").max_steps == 6
    assert [(p.prefix_steps, p.step_text) for p in asked.pop("pairs")] == [
        ((), right[0]), ((right[0],), right[1]), ((), wrong)]
    assert asked.pop("journal").path == tmp_path / "labels.partial.jsonl"
    assert asked.pop("outcomes").path == tmp_path / "step_outcomes.jsonl"
    # Each (s, a) of the traces with (steps after a, the trace's reward) per trace.
    assert asked.pop("traces") == {(0, (), right[0]): [(1, 0.0)],
                                   (0, (right[0],), right[1]): [(0, 0.0)],
                                   (0, (), wrong): [(1, 0.0)], (0, (wrong,), right[1]): [(0, 0.0)]}
    reward = asked.pop("reward")
    assert (reward(0, tuple(ctx.task.solution_steps(ctx.problems("train", 1)[0]))),
            reward(0, (right[0], right[1]))) == (1.0, 0.0)
    assert asked == {}
    steps, _ = load_labelled(ctx.labels_path)
    assert [s.label for s in steps] == [0.25] * 3


def test_label_by_a_stronger_model_completes_with_that_model_at_the_runs_settings(
        tmp_path, monkeypatch):
    """label.stronger_model=/strong: the stronger model (not the policy) is loaded and
    decodes the training problems, capped at decode.max_steps, at label.gamma, two pairs
    a call on 9 slots, journalled; a task without an exact solver refuses 'solver'."""
    no_features(monkeypatch)
    asked, loaded = {}, []

    def stronger(pairs, sampler, reward, **settings):
        asked.update(pairs=pairs, sampler=sampler, **settings)
        return labelled(pairs, [0.5] * len(pairs))

    monkeypatch.setattr(rollouts, "stronger_completion_labels", stronger)
    monkeypatch.setattr(RunContext, "load", lambda self, source: loaded.append(source)
                        or f"the model at {source}")
    built = stand_in_runtime(monkeypatch)
    ctx, right, wrong = one_problem_run(tmp_path, "label.method=stronger_model",
                                        "label.stronger_model=/strong", "label.gamma=0.9",
                                        "label.rollouts_per_state=3", "decode.max_steps=6",
                                        "decode.slots=9")
    rollouts.label(ctx)
    assert loaded == ["/strong"]
    assert built == [(ctx.problems("train", 1), "the model at /strong")]
    sampler = asked.pop("sampler")
    assert sampler.runtime is STAND_IN and sampler.max_steps == 6
    assert [(p.prefix_steps, p.step_text) for p in asked.pop("pairs")] == [
        ((), right[0]), ((right[0],), right[1]), ((), wrong)]
    assert asked.pop("journal").path == tmp_path / "labels.partial.jsonl"
    assert asked == dict(discount=0.9, max_steps=6, batch_pairs=2)
    without_solver = SimpleNamespace(config=SimpleNamespace(label=SimpleNamespace(
        stronger_model="solver")), task=SimpleNamespace(name="gsm8k"))
    with pytest.raises(ValueError, match="label.stronger_model=solver: task gsm8k has no "
                                         "exact solver; give a model directory"):
        rollouts._stronger_sampler(without_solver, [])


def test_label_refuses_rollouts_a_killed_collect_stage_left_unfinished(tmp_path, monkeypatch):
    """A run killed in collect and resumed without it (stages=[label,...]) would label the
    problems collected so far as if they were all: the label stage names the gap."""
    no_features(monkeypatch)
    ctx, _, _ = one_problem_run(tmp_path, "task.train_problems=2")
    with pytest.raises(ConfigError, match=(
            r"^\S+rollouts.jsonl holds the rollouts of 1 of the 2 training problems: their "
            "collection was cut short; list collect in stages to finish it$")):
        rollouts.label(ctx)
    assert not ctx.labels_path.exists()
