import json

import pytest

from qstar_jax.training.star import StarLoop, StarProblem, kept_examples

HINT = "(hint: the answer is 7)"
PROBLEMS = [StarProblem(id=f"p{i}", prompt=f"q{i}", hinted_prompt=f"q{i} {HINT}", hint=HINT)
            for i in range(3)]


class ScriptedSampler:
    """Rationales per prompt; a rationale is right when it ends with "= 7"."""

    def __init__(self, script, calls):
        self.script, self.calls = script, calls

    def sample(self, prompts, n):
        self.calls.append(list(prompts))
        return [[tuple(r.split("|")) for r in self.script.get(p, [])][:n] for p in prompts]


def is_right(problem, rationale):
    return rationale[-1].endswith("= 7")


SCRIPT = {
    "q0": ["3 + 3 = 6", "3 + 4 = 7"],  # the second rationale is right
    "q1": ["1 + 1 = 2", "0 = 0"],  # wrong: rationalized with the hint
    f"q1 {HINT}": [f"as {HINT} says|= 7", "2 + 5 = 7"],  # quoting the hint: dropped
    "q2": ["9 = 9"],
    f"q2 {HINT}": ["8 = 8"],  # no right rationale even with the hint
}


def test_kept_rationales_are_right_and_hints_never_saved():
    calls = []
    kept = kept_examples(PROBLEMS, ScriptedSampler(SCRIPT, calls), 2, is_right)
    assert [(e.problem_id, e.prompt, e.rationale, e.rationalized) for e in kept] == [
        ("p0", "q0", ("3 + 4 = 7",), False), ("p1", "q1", ("2 + 5 = 7",), True)]
    assert calls == [["q0", "q1", "q2"], [f"q1 {HINT}", f"q2 {HINT}"]]
    assert all(is_right(None, e.rationale) for e in kept)


def test_the_first_right_rationale_that_does_not_quote_the_hint_is_kept():
    """Plain samples are held to the hint too: the first right one quotes it, so the
    second right one is kept, not the third."""
    script = {"q0": [f"{HINT}|= 7", "1 + 6 = 7", "2 + 5 = 7"]}
    kept = kept_examples(PROBLEMS[:1], ScriptedSampler(script, []), 3, is_right)
    assert [(e.problem_id, e.rationale, e.rationalized) for e in kept] == [
        ("p0", ("1 + 6 = 7",), False)]


@pytest.mark.parametrize("rationalize, trained_on, calls_per_round", [
    (True, [("p0", ("3 + 4 = 7",)), ("p1", ("2 + 5 = 7",))], 2),
    (False, [("p0", ("3 + 4 = 7",))], 1)])
def test_each_round_fine_tunes_on_its_kept_examples(tmp_path, rationalize, trained_on,
                                                      calls_per_round):
    trained, calls = [], []

    def finetune(examples, r):
        trained.append((r, [(e.problem_id, e.rationale) for e in examples]))
        return f"policy{r}"

    loop = StarLoop(folder=tmp_path, rounds=2, samples=2,
                    sampler=lambda policy: ScriptedSampler(SCRIPT, calls), finetune=finetune,
                    save=lambda policy, folder: None, load=lambda folder: "base",
                    is_right=is_right, rationalize=rationalize)
    assert loop.run(PROBLEMS) == [len(trained_on)] * 2
    assert trained == [(0, trained_on), (1, trained_on)]
    assert len(calls) == 2 * calls_per_round


def test_without_rationalization_failures_are_not_retried():
    calls = []
    kept = kept_examples(PROBLEMS, ScriptedSampler(SCRIPT, calls), 2, is_right,
                         rationalize=False)
    assert [e.problem_id for e in kept] == ["p0"] and len(calls) == 1


def test_rounds_resume_after_a_kill(tmp_path):
    calls, trained, saved, kill, sampled_from = [], [], {}, [True], []

    class Killed(Exception):
        pass

    def finetune(examples, r):
        if r == 1 and kill[0]:
            raise Killed
        trained.append(r)
        return f"policy{r}"

    def sampler(policy):
        sampled_from.append(policy)
        return ScriptedSampler(SCRIPT, calls)

    def loop():
        return StarLoop(folder=tmp_path, rounds=3, samples=2, sampler=sampler,
                        finetune=finetune, save=lambda p, folder: saved.__setitem__(folder, p),
                        load=lambda folder: "base" if folder is None else saved[folder],
                        is_right=is_right)

    with pytest.raises(Killed):
        loop().run(PROBLEMS)
    assert trained == [0]
    assert sampled_from == ["base", "policy0"]  # each round samples the last round's policy
    kill[0] = False
    sampled_from.clear()
    sampled_before = len(calls)
    assert loop().run(PROBLEMS) == [2, 2, 2]
    assert trained == [0, 1, 2]  # round 0 was not trained again
    assert sampled_from == ["policy0", "policy1"]  # round 1 from round 0's saved policy
    assert len(calls) == sampled_before + 2 * 2  # rounds 1 and 2 only, two calls each
    for r in range(3):
        text = (tmp_path / f"round_{r}" / "examples.jsonl").read_text()
        assert HINT not in text and "hint" not in text
        assert [json.loads(line)["prompt"] for line in text.splitlines()] == ["q0", "q1"]


def test_a_round_killed_while_saving_its_policy_is_trained_again(tmp_path):
    """A round counts as done only once its policy is saved: a kill inside ``save`` leaves
    no done.json, and the rerun trains the round again and loads what it saved."""
    trained, saved, kill = [], {}, [True]

    def save(policy, folder):
        if kill[0]:
            raise KeyboardInterrupt
        saved[folder] = policy

    def loop():
        return StarLoop(folder=tmp_path, rounds=1, samples=2,
                        sampler=lambda policy: ScriptedSampler(SCRIPT, []),
                        finetune=lambda examples, r: trained.append(r) or f"policy{r}",
                        save=save, load=lambda folder: "base" if folder is None
                        else saved[folder], is_right=is_right)

    with pytest.raises(KeyboardInterrupt):
        loop().run(PROBLEMS)
    assert not (tmp_path / "round_0" / "done.json").exists()
    kill[0] = False
    assert loop().run(PROBLEMS) == [2] and trained == [0, 0]
    assert saved == {tmp_path / "round_0" / "policy": "policy0"}
