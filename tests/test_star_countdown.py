"""The STaR experiment: its hints (a solution trace written as one expression) and its rounds
over stand-ins for the model, its training, sampling and evaluation."""

import json
import random
import re
import runpy
import shutil
import sys
import types
from fractions import Fraction
from pathlib import Path

import pytest

from qstar_jax.config import PolicyTrainingConfig
from qstar_jax.search.interface import Generation
from qstar_jax.tasks.countdown.task import CountdownTask

SCRIPT = runpy.run_path(str(Path(__file__).parents[1] / "experiments" / "star_countdown.py"))


def evaluate(expression: str) -> Fraction:
    """The expression's exact value (numbers as Fractions, Python's precedence)."""
    return eval(re.sub(r"(\d+)", r"Fraction(\1)", expression), {"Fraction": Fraction})


def test_a_hint_is_the_solution_as_one_expression_and_no_step_can_quote_it():
    task = CountdownTask({"num_count": 3, "number_range": [1, 15], "target_range": [10, 60]})
    rng = random.Random(0)
    for problem in task.load("train", limit=40, seed=0):
        steps = task.solution_steps(problem, rng)
        expression = SCRIPT["solution_expression"](steps)
        assert evaluate(expression) == problem.metadata["target"], (steps, expression)
        # Every given number used once, none other.
        assert sorted(map(int, re.findall(r"\d+", expression))) == \
            sorted(problem.metadata["numbers"])
        star = SCRIPT["star_problem"](problem, "as " + expression)
        assert star.prompt == task.prompt(problem)
        assert star.hinted_prompt.startswith(problem.question.removesuffix("."))
        assert set(star.hinted_prompt) <= set(task.alphabet)  # the policy can read it
        assert not any(star.hint in step for step in steps)


def test_an_operand_made_twice_takes_the_latest_expression():
    steps = ["2 + 2 = 4 (left: 4 4)", "4 * 4 = 16 (left: 16)"]  # 4 given, 4 made
    assert SCRIPT["solution_expression"](steps) == "(2+2)*4"


def test_each_round_samples_the_last_policy_and_fine_tunes_the_weak_one(tmp_path, monkeypatch,
                                                                          capsys):
    """Stand-ins for the model, its training, its sampling and the evaluation runs, over 2
    weak and 3 STaR problems (indices 2-4). The weak policy's second plain sample for p2 is
    right and p3 is right only with its hint; round 0's policy gets p2-p4 right, round 1's
    none. Each round samples the last round's policy (round 2, after a restart, round 1's
    saved one) and fine-tunes the weak policy, not the last round's, on the kept pairs under
    their plain and hinted questions, seeded seed + round + 1; a round that keeps nothing
    copies the weak policy."""
    main = SCRIPT["main"]
    weak, round_0, round_1 = Path("weak_policy"), Path("round_0/policy"), Path("round_1/policy")
    right = {weak: {(2, False), (3, True)}, round_0: {(2, False), (3, False), (4, False)},
             round_1: set()}  # (problem, hinted) each policy gets right
    trained, sampled, evaluated, temperatures = [], [], [], set()

    def train_policy_on(model, tokenizer, examples, steps, seed, folder, settings):
        trained.append((model, examples, steps, seed, folder.relative_to(tmp_path)))
        folder.mkdir(parents=True)
        (folder / "trained").write_text(folder.name)

    class Rationales:
        def __init__(self, ctx, problems, prompts_of, temperature):
            self.policy = Path(ctx.config.policy.source).relative_to(tmp_path)
            sampled.append(self.policy)
            temperatures.add(temperature)
            self.task, self.problems, self.prompts_of = ctx.task, problems, prompts_of

        def sample(self, prompts, n):
            out = []
            for prompt in prompts:
                i = self.prompts_of[prompt]
                hinted = not prompt.startswith(self.problems[i].question)
                steps = tuple(self.task.solution_steps(self.problems[i], random.Random(0)))
                out.append([("1 + 1 = 2",), steps if (i, hinted) in right[self.policy]
                            else ("2 + 2 = 4",)][:n])
            return out

    def evaluate(policy, folder, overrides):
        r = int(folder.name.removeprefix("eval_"))
        evaluated.append((policy.relative_to(tmp_path), folder.relative_to(tmp_path)))
        return {m: {"accuracy": accuracy[r], "ci95": [0.0, 0.123456]}
                for m, accuracy in [("greedy", [0, .25, .5, .75]), ("qstar", [.5, .625, .75, 1])]}

    for name, stand_in in [("LlamaModel", lambda config, rngs: "weak model"),
                           ("policy_model_config", lambda ctx, tokenizer: None),
                           ("train_policy_on", train_policy_on),
                           ("load_model", lambda folder: types.SimpleNamespace(
                               model=("loaded", folder.relative_to(tmp_path)))),
                           ("DecoderRationales", Rationales), ("evaluate", evaluate)]:
        monkeypatch.setitem(main.__globals__, name, stand_in)

    def run(rounds, samples=2):
        monkeypatch.setattr(sys, "argv", [
            "star_countdown.py", "--out", str(tmp_path), "--rounds", str(rounds),
            "--weak-problems", "2", "--weak-steps", "5", "--star-problems", "3",
            "--samples", str(samples), "--round-steps", "7", "--temperature", "0.6"])
        main()
        return json.loads(capsys.readouterr().out.splitlines()[-1])

    task = CountdownTask({"num_count": 3, "number_range": [1, 15], "target_range": [10, 60]})
    problems = task.load("train", limit=5, seed=0)
    rng = random.Random(0)
    solutions = [task.solution_steps(p, rng) for p in problems]
    stars = [SCRIPT["star_problem"](p, "as " + SCRIPT["solution_expression"](s))
             for p, s in zip(problems, solutions)]

    def pairs(indices, steps_of=lambda i: task.solution_steps(problems[i], random.Random(0))):
        return ([(stars[i].prompt, list(steps_of(i))) for i in indices]
                + [(stars[i].hinted_prompt, list(steps_of(i))) for i in indices])

    result = run(2)
    assert (result["kept"], result["rationalized"]) == ([2, 2, 3], [0, 1, 0])
    assert trained == [("weak model", pairs([0, 1], lambda i: solutions[i]), 5, 0, weak),
                       (("loaded", weak), pairs([2, 3]), 7, 1, round_0),
                       (("loaded", weak), pairs([2, 3, 4]), 7, 2, round_1)]
    assert sampled == [weak, round_0] and temperatures == {0.6}
    assert evaluated == [(weak, Path("eval_0")), (round_0, Path("eval_1")),
                         (round_1, Path("eval_2"))]
    for log in (trained, sampled, evaluated):
        log.clear()
    result = run(3)
    assert trained == []
    assert (tmp_path / "round_2/policy/trained").read_text() == "weak_policy"
    assert sampled == [round_1]
    assert [policy for policy, _ in evaluated] == [weak, round_0, round_1,
                                                   Path("round_2/policy")]
    assert {k: v for k, v in result.items() if k != "seconds"} == {
        "rounds": 3, "kept": [2, 2, 3, 0], "rationalized": [0, 1, 0, 0],
        "greedy_accuracy": [0, .25, .5, .75], "qstar_accuracy": [.5, .625, .75, 1],
        "greedy_ci95": [[0.0, 0.1235]] * 4, "qstar_ci95": [[0.0, 0.1235]] * 4}
    # The folder's rounds were made with 2 samples a problem: a rerun with 8 would reuse
    # them and report 8, so it stops, naming the setting.
    with pytest.raises(SystemExit) as stopped:
        run(3, samples=8)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        f"error: --out {tmp_path} holds a run made with other settings (--samples 2 there, 8 "
        "now): rerun with its settings to go on, or name another --out")


@pytest.mark.parametrize("override, message", [
    ("eval.methods=[greedy]", r"eval.methods=\['greedy'\]: the evaluation runs report greedy "
                              "and qstar; list both"),
    ("search.k=0", "config error: search.k: must be >= 1, got 0"),
    ("--temperature=0", "--temperature must be greater than 0, got 0.0"),
])
def test_settings_the_runs_cannot_use_stop_it_before_any_training(
        tmp_path, monkeypatch, capsys, override, message):
    monkeypatch.setattr(sys, "argv", ["star_countdown.py", "--out", str(tmp_path), override])
    with pytest.raises(SystemExit) as stopped:
        SCRIPT["main"]()
    assert stopped.value.code == 2
    assert re.search(f"error: {message}$", capsys.readouterr().err.strip())
    assert list(tmp_path.iterdir()) == []


def test_rationales_are_sampled_a_few_prompts_a_call_at_half_the_slot_length(monkeypatch):
    """7 slots hold 2 prompts of a root and 2 samples each: 5 prompts go in calls of 2, 2
    and 1, each sample capped at max_len // 2 = 50 tokens and split into its non-empty
    steps."""
    made, calls = [], []

    class Generator:
        def __init__(self, runtime, max_tokens):
            made.append((runtime, max_tokens))

        def generate(self, requests):
            calls.append([(r.problem_index, r.prompt, r.num_samples, r.temperature, r.stream)
                          for r in requests])
            return [[Generation(text=f"{r.prompt} 1\n\n{r.prompt} {j}", generated_tokens=2)
                     for j in range(r.num_samples)] for r in requests]

    monkeypatch.setitem(SCRIPT["DecoderRationales"].__init__.__globals__,
                        "DecoderTextGenerator", Generator)
    ctx = types.SimpleNamespace(runtime=lambda problems: ("runtime of", problems),
                                config=types.SimpleNamespace(
                                    decode=types.SimpleNamespace(max_len=101, slots=7)))
    prompts_of = {p: i for i, p in enumerate("vwxyz")}
    sampler = SCRIPT["DecoderRationales"](ctx, ["problems"], prompts_of, 0.8)
    rationales = sampler.sample(list("zyxwv"), 2)
    assert made == [(("runtime of", ["problems"]), 50)]
    assert calls == [[(4, "z", 2, 0.8, "star"), (3, "y", 2, 0.8, "star")],
                     [(2, "x", 2, 0.8, "star"), (1, "w", 2, 0.8, "star")],
                     [(0, "v", 2, 0.8, "star")]]
    assert rationales == [[(f"{p} 1", f"{p} {j}") for j in range(2)] for p in "zyxwv"]


def test_a_policy_trains_with_the_configs_settings_and_each_evaluation_runs_the_config(
        tmp_path, monkeypatch):
    """train_policy_on packs the (prompt, steps) pairs and trains at the settings' batch
    size, learning rate, gradient clip and checkpoint interval (checkpoints beside the
    round's folder, removed once it is saved), warming up for at most a fifth of its steps
    (100 of 1000, 7 of 37), at the given seed; evaluate copies the policy into the run's
    folder once and runs the STaR config there with the overrides, reading its methods'
    summary, and stops the experiment where the run fails."""
    train, evaluate = SCRIPT["train_policy_on"], SCRIPT["evaluate"]
    packed, trained, saved, runs = [], [], [], []
    for name, stand_in in [
            ("trace_examples", lambda tokenizer, prompts, steps: (tokenizer, prompts, steps)),
            ("pack_examples", lambda examples, pad: packed.append((examples, pad))
             or ("tokens", "mask")),
            ("train_causal_lm", lambda model, tokens, mask, config, desc, checkpoint_dir:
             trained.append((model, tokens, mask, config, desc, checkpoint_dir)) or "log"),
            ("save_policy", lambda *saving: saved.append(saving)),
            ("remove_training_checkpoints", lambda folder: saved.append(("removed", folder)))]:
        monkeypatch.setitem(train.__globals__, name, stand_in)
    tokenizer = types.SimpleNamespace(pad_token_id=3)
    settings = PolicyTrainingConfig(batch_size=8, learning_rate=0.5, warmup_steps=100,
                                    max_grad_norm=2.5, checkpoint_every=50)
    for steps, warmup in ((1000, 100), (37, 7)):
        train("model", tokenizer, [("p1", ["a", "b"]), ("p2", ["c"])], steps, 4,
              tmp_path / "round_0", settings)
        config = trained[-1][3]
        assert (config.steps, config.batch_size, config.learning_rate, config.warmup_steps,
                config.seed, config.max_grad_norm, config.checkpoint_every
                ) == (steps, 8, 0.5, warmup, 4, 2.5, 50)
    assert packed[-1] == ((tokenizer, ["p1", "p2"], [["a", "b"], ["c"]]), 3)
    assert trained[-1][:3] == ("model", "tokens", "mask")
    assert trained[-1][4:] == ("train round_0", tmp_path / "round_0.training")
    assert saved[-2:] == [("model", tokenizer, "log", tmp_path / "round_0"),
                          ("removed", tmp_path / "round_0")]

    def run_pipeline(argv):
        runs.append(argv)
        out = Path(argv[-1])
        (out / "summary.json").write_text(json.dumps({"methods": {"greedy": {"accuracy": .5}}}))
        return 0 if len(runs) == 1 else 1

    monkeypatch.setitem(evaluate.__globals__, "run_pipeline", run_pipeline)
    policy = tmp_path / "weak_policy"
    policy.mkdir()
    (policy / "weights").write_text("weak")
    folder = tmp_path / "eval_0"
    assert evaluate(policy, folder, ["seed=3"]) == {"greedy": {"accuracy": .5}}
    assert runs == [[str(SCRIPT["CONFIG"]), "seed=3", "--out", str(folder)]]
    assert (folder / "policy" / "weights").read_text() == "weak"
    (policy / "weights").write_text("retrained")  # a resumed evaluation keeps its copy
    with pytest.raises(SystemExit, match=f"the evaluation run in {folder} failed"):
        evaluate(policy, folder, [])
    assert (folder / "policy" / "weights").read_text() == "weak"


def test_an_evaluation_killed_while_copying_its_policy_copies_it_whole_when_resumed(
        tmp_path, monkeypatch):
    """The evaluation run reuses a policy copy it finds; one killed after its first file
    leaves none, so the resumed evaluation copies the policy again, whole."""
    evaluate, runs = SCRIPT["evaluate"], []

    def run_pipeline(argv):
        runs.append(sorted(p.name for p in (Path(argv[-1]) / "policy").iterdir()))
        (Path(argv[-1]) / "summary.json").write_text(json.dumps({"methods": {}}))
        return 0

    monkeypatch.setitem(evaluate.__globals__, "run_pipeline", run_pipeline)
    policy = tmp_path / "weak_policy"
    policy.mkdir()
    for name in ("config.json", "model.safetensors"):
        (policy / name).write_text(name)
    copyfile, copied = shutil.copyfile, []

    def killed_after_one_file(src, dst, **kwargs):
        if copied:
            raise KeyboardInterrupt
        copied.append(src)
        return copyfile(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", killed_after_one_file)
    folder = tmp_path / "eval_0"
    with pytest.raises(KeyboardInterrupt):
        evaluate(policy, folder, [])
    assert not (folder / "policy").exists()
    monkeypatch.setattr(shutil, "copyfile", copyfile)
    assert evaluate(policy, folder, []) == {}
    assert runs == [["config.json", "model.safetensors"]]


def test_an_out_that_is_a_file_stops_it_before_any_training(tmp_path, monkeypatch, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    monkeypatch.setattr(sys, "argv", ["star_countdown.py", "--out", str(taken)])
    with pytest.raises(SystemExit) as stopped:
        SCRIPT["main"]()
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"error: --out {taken} is a file; name a "
                                                    "folder")
    assert taken.read_text() == "mine"
