"""The collect and label stages' wiring: what collect asks of the rollout collection, and
which of the rollouts' (s, a) pairs label labels."""

from types import SimpleNamespace

import numpy as np

from qstar_jax.config import load_config
from qstar_jax.outputs import durable
from qstar_jax.qvalue.dataset import labelled, load_labelled
from qstar_jax.qvalue.rollouts import ProblemRollouts, Rollout
from qstar_jax.stages import rollouts
from qstar_jax.stages.context import RunContext


def test_collect_samples_each_training_problem_at_collects_settings(tmp_path, monkeypatch):
    asked = {}
    monkeypatch.setattr(rollouts, "collect_rollouts", lambda problems, sampler, reward,
                        **settings: asked.update(problems=problems, sampler=sampler,
                                                 reward=reward, **settings))
    ctx = RunContext(config=load_config(None, [
        "task.train_problems=3", "collect.rollouts_per_problem=5", "collect.temperature=0.7",
        "eval.temperature=0.2", "decode.max_steps=6", "decode.slots=64"]), out=tmp_path)
    rollouts.collect(ctx)
    assert asked["problems"] == [0, 1, 2] and asked["sampler"].max_steps == 6
    del asked["problems"], asked["sampler"]
    reward = asked.pop("reward")
    assert asked == dict(per_problem=5, temperature=0.7, out_path=tmp_path / "rollouts.jsonl",
                         max_steps=6, batch_problems=64 // 6)  # 5 rollouts and the prompt
    problem = ctx.problems("train", 3)[1]
    right = ctx.task.solution_steps(problem)
    assert (reward(1, tuple(right)), reward(1, (*right[:-1], "#### -1")),
            reward(0, tuple(right))) == (1.0, 0.0, 0.0)


def test_label_drops_the_pairs_after_a_dead_state_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(rollouts, "last_step_features", lambda model, tokenizer, states,
                        steps: (np.zeros((len(steps), 4), np.float32),
                                np.zeros(len(steps), np.float32)))
    monkeypatch.setattr(rollouts, "fitted_q_labels", lambda ctx, pairs, features:
                        labelled(pairs, [0.5] * len(pairs)))

    def labelled_steps(*overrides):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        ctx = RunContext(config=load_config(None, [
            "task.train_problems=1", "label.method=fitted_q_iteration", *overrides]), out=out)
        ctx.__dict__["policy"] = SimpleNamespace(model=None, tokenizer=None)  # not loaded
        [problem] = ctx.problems("train", 1)
        right = ctx.task.solution_steps(problem)
        wrong = right[0].rsplit(" ", 1)[0] + " -1"  # the first step's sum miscomputed
        with durable.open_for_append(ctx.rollouts_path) as f:
            durable.append_records(f, [ProblemRollouts(problem_index=0, temperature=1.0, rollouts=(
                Rollout(steps=(right[0], right[1]), reward=0.0),
                Rollout(steps=(wrong, right[1]), reward=0.0))).to_json()])
        rollouts.label(ctx)
        ctx.rollouts_path.unlink()
        rollouts.label(ctx)  # labels.jsonl is there: the stage reads nothing, writes nothing
        steps, _ = load_labelled(ctx.labels_path)
        return [(s.prefix_steps, s.step_text) for s in steps], right, wrong

    live, right, wrong = labelled_steps()  # live_states_only is the default
    assert live == [((), right[0]), ((right[0],), right[1]), ((), wrong)]
    every, _, _ = labelled_steps("label.live_states_only=false")
    assert every == live + [((wrong,), right[1])]
