"""experiments/value_model_from_scratch.py (docs/default_experiment.md's small value model):
its piece vocabulary, numbers below 100 as single tokens or every character alone, and the
solver-written training rows with their exact discounted values, on a stand-in task; and
its report (train and held-out rows, AUCs overall and by step) from stand-in steps and
scores, the model's training left out."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from qstar_jax.tasks.base import STEP_SEPARATOR
from tests.support.experiments import experiment_module

PROMPT = "Reach 10.\n"


@pytest.fixture
def value_model(monkeypatch):
    """The script as a module (``python experiments/value_model_from_scratch.py``)."""
    return experiment_module(monkeypatch, "value_model_from_scratch")


def test_numbers_below_100_are_single_pieces_after_the_digits(value_model):
    vocabulary = value_model.PieceVocabulary(number_tokens=True)
    # <pad> 0, <unk> 1, digits 2-11, "00"-"09" 12-21, "10"-"99" 22-111, then characters.
    assert len(vocabulary.ids) == 112 + 95 - 10 + 1
    assert [vocabulary.ids[piece] for piece in ("0", "9", "00", "09", "10", "42", "99", " ")
            ] == [2, 11, 12, 21, 22, 54, 111, 112]
    # "123" is "12" then "3"; "007" is "00" then "7"; a character outside ASCII is <unk>.
    assert vocabulary.encode("12+7=19\n") == [24, vocabulary.ids["+"], 9, vocabulary.ids["="],
                                             31, vocabulary.ids["\n"]]
    assert vocabulary.encode("123 007é") == [24, 5, 112, 12, 9, 1]


def test_character_pieces_split_every_number(value_model):
    vocabulary = value_model.PieceVocabulary(number_tokens=False)
    assert len(vocabulary.ids) == 2 + 95 + 1
    assert [vocabulary.ids[piece] for piece in (" ", "0", "9", "~", "\n")] == [2, 18, 27, 96, 97]
    assert vocabulary.encode("12 é\n") == [19, 20, 2, 1, 97]


def stand_in_context(solutions: dict[str, list[str]], loaded: list) -> SimpleNamespace:
    """A task whose problems are solved by fixed steps; after a wrong step "w<depth>" the
    solver goes on with "x" steps to the solution's length (none for a problem "stuck")."""

    def solver_completion(problem, prefix):
        solution = solutions[problem]
        if list(prefix) == solution[:len(prefix)]:
            return solution[len(prefix):]
        return [] if problem == "stuck" else ["x"] * (len(solution) - len(prefix))

    def load(split, *, limit, seed):
        loaded.append((split, limit, seed))
        return list(solutions)[:limit]

    task = SimpleNamespace(load=load, solution_steps=lambda problem: solutions[problem],
                           solver_completion=solver_completion,
                           wrong_step=lambda problem, prefix, rng: f"w{len(prefix)}")
    return SimpleNamespace(task=task, config=SimpleNamespace(task=SimpleNamespace(
        train_split="train")), prompts=lambda problems: [PROMPT for _ in problems])


def state(*steps: str) -> str:
    return PROMPT + "".join(step + STEP_SEPARATOR for step in steps)


def test_each_solution_step_is_valued_by_the_steps_left_beside_a_wrong_one(value_model,
                                                                           monkeypatch):
    """No dead prefixes: a 3-step solution's steps valued 0.5^2, 0.5, 1, each followed by
    the wrong step in its place, valued 0."""
    monkeypatch.setattr(value_model, "DEAD_PREFIX_SHARE", 0.0)
    loaded = []
    ctx = stand_in_context({"p": ["a", "b", "c"], "q": ["d"]}, loaded)
    texts, labels, left_out = value_model.synthetic_rows(ctx, count=1, gamma=0.5, seed=4)
    assert loaded == [("train", 1, 5)]
    assert texts == [state("a"), state("w0"), state("a", "b"), state("a", "w1"),
                     state("a", "b", "c"), state("a", "b", "w2")]
    assert labels == [0.25, 0.0, 0.5, 0.0, 1.0, 0.0]
    assert left_out == 0


def test_a_synthetic_problem_that_asks_what_a_held_out_one_asks_is_left_out(value_model):
    """Both problems' prompts are a held-out prompt: no rows, two left out."""
    ctx = stand_in_context({"p": ["a", "b", "c"], "q": ["d"]}, [])
    assert value_model.synthetic_rows(ctx, count=2, gamma=0.5, seed=4,
                                      held_out_prompts=frozenset({PROMPT})) == ([], [], 2)


def test_a_state_after_a_wrong_line_is_valued_0_and_has_no_wrong_sibling(value_model,
                                                                         monkeypatch):
    """Every prefix dead past the first step: a 2-step solution gives its first step
    (0.5) and its wrong twin, then the wrong first line and the solver's next step (0);
    where the solver has no step after the wrong line, no row."""
    monkeypatch.setattr(value_model, "DEAD_PREFIX_SHARE", 1.0)
    ctx = stand_in_context({"p": ["a", "b"], "stuck": ["a", "b"]}, [])
    texts, labels, _ = value_model.synthetic_rows(ctx, count=2, gamma=0.5, seed=0)
    assert texts == [state("a"), state("w0"), state("w0", "x"), state("a"), state("w0")]
    assert labels == [0.5, 0.0, 0.0, 0.5, 0.0]


def step(problem_index: int, prefix: tuple[str, ...], text: str, label: float):
    return SimpleNamespace(problem_index=problem_index, prefix_steps=prefix, step_text=text,
                           label=label)


# 10 training problems: the last (10%) held out. Its steps: two first steps, one that can
# still reach the answer ("ok"), and two second steps after "ok".
STEPS = [step(0, (), "ok", 0.5), step(3, ("ok",), "bad", 0.0), step(9, (), "ok", 0.5),
         step(9, (), "bad", 0.0), step(9, ("ok",), "ok", 1.0), step(9, ("ok",), "ok!", 1.0)]


def report_of(value_model, monkeypatch, capsys, *, scores, logprobs, steps=STEPS):
    """main's report on ``steps``, the held-out rows scored ``scores``; a step can still
    succeed when all its lines are "ok" (or "ok!")."""
    trained = []
    ctx = SimpleNamespace(
        config=SimpleNamespace(task=SimpleNamespace(name="arithmetic", train_split="train",
                                                    train_problems=10),
                               label=SimpleNamespace(gamma=0.5), seed=0),
        problems=lambda split, count: list(range(count)),
        prompts=lambda problems: [f"P{i}\n" for i in problems], labels_path="labels.jsonl",
        task=SimpleNamespace(can_still_succeed=lambda problem, steps: all(
            line.startswith("ok") for line in steps), solver_completion=None,
            wrong_step=None))  # synthetic_rows, their reader, is a stand-in too
    monkeypatch.setattr(value_model.RunContext, "of_run", lambda run: ctx)
    monkeypatch.setattr(value_model, "load_labelled", lambda path: (steps, None))
    monkeypatch.setattr(value_model, "load_step_logprobs", lambda path: logprobs)
    asked = []
    monkeypatch.setattr(value_model, "synthetic_rows",
                        lambda ctx, count, gamma, seed, held_out_prompts: asked.append(
                            held_out_prompts) or (["P0\nok\nok\n"] * count, [1.0] * count, 1))
    monkeypatch.setattr(value_model, "BackboneQ", lambda config, head, rngs: "model")
    monkeypatch.setattr(value_model, "train_q_model",
                        lambda model, ids, labels, training: trained.append(labels.tolist()))
    monkeypatch.setattr(value_model, "BackboneQModel", lambda model, pad_id: SimpleNamespace(
        score_texts=lambda ids: np.array(scores[:len(ids)])))
    report = value_model.main(["run", "--synthetic", "3", "--steps", "2"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    assert trained == [[0.5, 0.0, 1.0, 1.0, 1.0]]  # the 2 training steps' labels, then 3
    assert asked == [{"P9\n"}]  # the held-out problem's prompt
    return report


def test_the_report_reads_held_out_scores_against_the_exact_value(value_model, monkeypatch,
                                                                  capsys):
    """Held out: "ok" (live) 0.9, "bad" 0.5, "ok ok" 0.2, "ok ok!" 0.8: overall 2 of the 3
    live steps outscore the dead one; at step 1 both do (1.0); step 2's are all live (no
    AUC: None). The log-probabilities rank "bad" first at step 1 (0.0)."""
    report = report_of(value_model, monkeypatch, capsys, scores=[0.9, 0.5, 0.2, 0.8],
                       logprobs=np.array([-1.0, -2.0, -3.0, -0.5, -1.0, -1.0]))
    assert report == {"train_rows": 5, "held_out_rows": 4, "synthetic_problems_left_out": 1,
                      "seconds_per_step": report[
        "seconds_per_step"], "auc": 0.667, "auc_by_step": {"1": 1.0, "2": None},
        "logprob_auc_by_step": {"1": 0.0, "2": None}}
    report = report_of(value_model, monkeypatch, capsys, scores=[0.9, 0.5, 0.2, 0.8],
                       logprobs=None)
    assert report["logprob_auc_by_step"] is None


def test_held_out_steps_all_of_one_class_report_no_auc(value_model, monkeypatch, capsys):
    """Every held-out step can still succeed: no AUC overall (it crashed on round(None)
    after training), nor by step."""
    steps = [*STEPS[:2], STEPS[2], STEPS[4]]
    report = report_of(value_model, monkeypatch, capsys, scores=[0.9, 0.2], logprobs=None,
                       steps=steps)
    assert (report["held_out_rows"], report["auc"], report["auc_by_step"]) == (
        2, None, {"1": None, "2": None})


def test_a_world_whose_solver_writes_no_wrong_steps_is_refused_before_work(value_model,
                                                                           monkeypatch):
    """Countdown has an exact value but no solver completions or wrong steps (it failed
    on solution_steps' missing rng after loading the run)."""
    ctx = SimpleNamespace(config=SimpleNamespace(task=SimpleNamespace(name="countdown")),
                          task=SimpleNamespace(can_still_succeed=lambda problem, steps: True))
    monkeypatch.setattr(value_model.RunContext, "of_run", lambda run: ctx)
    with pytest.raises(SystemExit, match="countdown: needs a world whose solver writes"):
        value_model.main(["run"])
