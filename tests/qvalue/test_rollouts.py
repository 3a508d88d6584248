import json

import pytest

from qstar_jax.outputs.durable import CorruptRecordError
from qstar_jax.qvalue.rollouts import ProblemRollouts, Rollout, collect_rollouts, read_rollouts


class CountingSampler:
    """Problem p's j-th trace is ("p<p> s<j>", "answer <p+j>"); records the problems asked."""

    def __init__(self):
        self.asked: list[int] = []
        self.settings: list[tuple] = []  # (n, temperature, max_steps) of each call

    def continue_from(self, items, n, temperature, max_steps=None):
        assert all(prefix == () for _, prefix in items)
        self.asked += [p for p, _ in items]
        self.settings.append((n, temperature, max_steps))
        return [[(f"p{p} s{j}", f"answer {p + j}") for j in range(n)] for p, _ in items]


def even_answer(problem, steps):
    return float(int(steps[-1].split()[-1]) % 2 == 0)


def collect(path, problems, sampler, **kw):
    return collect_rollouts(problems, sampler, even_answer, per_problem=2, temperature=0.9,
                            out_path=path, batch_problems=2, progress=False, **kw)


def test_collects_grades_and_stores_one_line_per_problem(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    sampler = CountingSampler()
    records = collect(path, [3, 0, 5], sampler, max_steps=7)
    assert sampler.asked == [3, 0, 5] and sampler.settings == [(2, 0.9, 7)] * 2  # batches of 2
    assert [r.problem_index for r in records] == [3, 0, 5]
    assert records[1] == ProblemRollouts(problem_index=0, temperature=0.9, rollouts=(
        Rollout(steps=("p0 s0", "answer 0"), reward=1.0),
        Rollout(steps=("p0 s1", "answer 1"), reward=0.0)))
    assert len(path.read_text().splitlines()) == 3
    assert read_rollouts(path) == records


def test_resume_skips_stored_problems(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    first = collect(path, [0, 1], CountingSampler())
    sampler = CountingSampler()
    records = collect(path, [0, 1, 2, 3], sampler)
    assert sampler.asked == [2, 3]
    assert records[:2] == first
    assert [r.problem_index for r in read_rollouts(path)] == [0, 1, 2, 3]
    # Asked for stored problems only, in another order: those records, in the order asked.
    sampler = CountingSampler()
    assert collect(path, [3, 1], sampler) == [records[3], records[1]]
    assert sampler.asked == []


def test_a_collection_killed_mid_run_keeps_its_finished_batches_and_resumes_after_them(
        tmp_path):
    class KilledOnSecondCall(CountingSampler):
        def continue_from(self, items, n, temperature, max_steps=None):
            if self.asked:
                raise KeyboardInterrupt
            return super().continue_from(items, n, temperature, max_steps)

    path = tmp_path / "rollouts.jsonl"
    with pytest.raises(KeyboardInterrupt):
        collect(path, [0, 1, 2, 3], KilledOnSecondCall())
    assert [r.problem_index for r in read_rollouts(path)] == [0, 1]  # on disk before the kill
    sampler = CountingSampler()
    records = collect(path, [0, 1, 2, 3], sampler)
    assert sampler.asked == [2, 3]
    assert records == collect(tmp_path / "uninterrupted.jsonl", [0, 1, 2, 3], CountingSampler())


def test_a_torn_last_line_is_ignored_then_cut_off_before_appending(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    collect(path, [0, 1], CountingSampler())
    with open(path, "a") as f:
        f.write('{"problem_index": 2, "temperature": 0.9, "rollo')  # killed mid-write
    assert [r.problem_index for r in read_rollouts(path)] == [0, 1]
    sampler = CountingSampler()
    collect(path, [0, 1, 2], sampler)
    assert sampler.asked == [2]
    lines = path.read_text().splitlines()
    assert [json.loads(line)["problem_index"] for line in lines] == [0, 1, 2]


def test_a_damaged_middle_line_is_an_error_naming_it(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    collect(path, [0, 1], CountingSampler())
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0][:10] + "\n" + lines[1])
    with pytest.raises(CorruptRecordError, match=r"rollouts.jsonl:1 "):
        read_rollouts(path)


def test_resuming_at_another_temperature_is_refused(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    collect(path, [0], CountingSampler())
    with pytest.raises(ValueError, match="temperature 0.9"):
        collect_rollouts([1], CountingSampler(), even_answer, per_problem=2, temperature=0.2,
                         out_path=path, progress=False)


def test_a_sampler_returning_the_wrong_count_is_named(tmp_path):
    class ShortSampler:
        def continue_from(self, items, n, temperature, max_steps=None):
            return [[("x",)] for _ in items]

    with pytest.raises(ValueError, match="ShortSampler.continue_from"):
        collect(tmp_path / "r.jsonl", [0], ShortSampler())

    class OneRowSampler(CountingSampler):
        def continue_from(self, items, n, temperature, max_steps=None):
            return super().continue_from(items[:1], n, temperature, max_steps)

    # Two problems asked, one row back: refused, nothing stored for either.
    with pytest.raises(ValueError, match=r"returned continuation counts \[2\] for 2 items "
                                         r"with n=2; it must return n per item"):
        collect(tmp_path / "r.jsonl", [0, 1], OneRowSampler())
    assert read_rollouts(tmp_path / "r.jsonl") == []
    with pytest.raises(ValueError, match="more than once"):
        collect(tmp_path / "r.jsonl", [0, 0], CountingSampler())


@pytest.mark.parametrize("per_problem, batch_problems", [(0, 2), (2, 0)])
def test_a_count_below_one_is_refused_before_sampling(tmp_path, per_problem, batch_problems):
    sampler = CountingSampler()
    with pytest.raises(ValueError, match=f"per_problem={per_problem} and batch_problems="
                                         f"{batch_problems} must both be at least 1"):
        collect_rollouts([0], sampler, even_answer, per_problem=per_problem, temperature=0.9,
                         out_path=tmp_path / "r.jsonl", batch_problems=batch_problems,
                         progress=False)
    assert sampler.asked == [] and not (tmp_path / "r.jsonl").exists()
