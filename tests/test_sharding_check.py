"""experiments/sharding_check.py's figures (docs/multi_device.md) from stand-in runs: the
runs it makes, each run's agreement with its own one-device run, the largest accuracy
difference, and the collectives counted in the step sampler's dumped programs.
(tests/test_two_process_run.py runs its ``run`` for real, over two processes.)"""

import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "experiments/sharding_check.py"

# Two methods on two problems: (method, problem id, correct).
ONE_DEVICE = [("greedy", "p0", True), ("greedy", "p1", False), ("qstar", "p0", True),
              ("qstar", "p1", True)]
# On pages the one-device run solves greedy's p1 too (so it is no copy of ONE_DEVICE).
ONE_DEVICE_PAGED = [("greedy", "p0", True), ("greedy", "p1", True), ("qstar", "p0", True),
                    ("qstar", "p1", True)]
RESULTS = {
    "1dev": ONE_DEVICE, "4x1": ONE_DEVICE, "1x4": ONE_DEVICE, "2proc": ONE_DEVICE,
    # qstar's p1 missed: 3 of 4 rows agree, qstar's accuracy 0.5 lower.
    "2x2": ONE_DEVICE[:3] + [("qstar", "p1", False)],
    "1dev_paged": ONE_DEVICE_PAGED, "2x2_paged": ONE_DEVICE_PAGED,
    # greedy's p1 row absent: 3 of 4 agree, greedy's accuracy 1.0 as on one device.
    "2proc_paged": [row for row in ONE_DEVICE_PAGED if row[:2] != ("greedy", "p1")],
}


def write_results(out: Path, rows, wall_s: float) -> None:
    out.mkdir(parents=True)
    (out / "results.jsonl").write_text("".join(
        json.dumps({"method": method, "problem_id": problem, "correct": correct,
                    "wall_s": wall_s}) + "\n" for method, problem, correct in rows))


@pytest.fixture
def check():
    return runpy.run_path(str(SCRIPT))


def test_agreement_and_accuracy_are_against_each_runs_own_one_device_run(check, tmp_path,
                                                                         capsys):
    runs = {}

    def run(out, overrides, *, devices, processes=1, dump=None):
        runs[out.name] = (devices, processes, dump is not None,
                          [o for o in overrides if not o.startswith("task.eval_problems")])
        write_results(out, RESULTS[out.name], wall_s=len(runs))  # wall-clock differs

    check["main"].__globals__["run"] = run
    result = check["main"](["--problems", "2", "--work", str(tmp_path)])
    mesh_4x1, paged = ["mesh.data=4", "mesh.model=1"], ["decode.page_size=16"]
    assert runs == {
        "1dev": (1, 1, False, []), "4x1": (4, 1, True, mesh_4x1),
        "2x2": (4, 1, False, ["mesh.data=2", "mesh.model=2"]),
        "1x4": (4, 1, False, ["mesh.data=1", "mesh.model=4"]),
        "2proc": (2, 2, False, ["mesh.data=4"]), "1dev_paged": (1, 1, False, paged),
        "2x2_paged": (4, 1, False, [*paged, "mesh.data=2", "mesh.model=2"]),
        "2proc_paged": (2, 2, False, [*paged, "mesh.data=4"])}
    assert result == {"agreement": {"4x1": 1.0, "2x2": 0.75, "1x4": 1.0, "2proc": 1.0,
                                    "2x2_paged": 1.0, "2proc_paged": 0.75},
                      "accuracy_delta_max": 0.5, "step_data_collectives": 0}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result


def test_rows_leave_out_the_wall_clock_and_accuracy_is_per_method(check, tmp_path):
    write_results(tmp_path / "run", RESULTS["2x2"], wall_s=3.5)
    table = check["rows"](tmp_path / "run")
    assert table[("qstar", "p1")] == {"method": "qstar", "problem_id": "p1", "correct": False}
    assert list(table) == [("greedy", "p0"), ("greedy", "p1"), ("qstar", "p0"),
                           ("qstar", "p1")]
    assert check["accuracy"](table) == {"greedy": 0.5, "qstar": 0.5}


def collective(name: str, shape: str) -> str:
    """An all-gather over all 4 devices (so across data shards on a 4x1 mesh)."""
    return (f"  %{name} = f32[{shape}]{{1,0}} all-gather(%x), channel_id=1, "
            "replica_groups={{0,1,2,3}}, dimensions={0}")


def test_collectives_are_counted_in_the_step_samplers_optimized_programs_only(check,
                                                                               tmp_path):
    """The step sampler's program moves two arrays of 96 cache positions (and one of 32,
    not counted); the trie sampler's, its program before optimization, and another
    program are not read."""
    moving = "\n".join([collective("all-gather.1", "8,96"), collective("all-gather.2", "2,96"),
                        collective("all-gather.3", "8,32")])
    programs = {
        "module_1.jit_step.after_optimizations.txt": "step_sampler.py\n" + moving,
        "module_1.jit_step.before_optimizations.txt": "step_sampler.py\n" + moving,
        "module_2.jit_trie.after_optimizations.txt":
            "step_sampler.py\ntrie_sampler.py\n" + moving,
        "module_3.jit_prefill.after_optimizations.txt": "prefill.py\n" + moving,
    }
    for name, text in programs.items():
        (tmp_path / name).write_text(text)
    assert check["step_data_collectives"](tmp_path) == 2
    (tmp_path / "module_4.jit_step.after_optimizations.txt").write_text(
        "step_sampler.py\n" + collective("all-gather.9", "4,96"))
    assert check["step_data_collectives"](tmp_path) == 3
