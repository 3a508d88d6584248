"""Does a run give the same results on several devices and processes as on one?

A tiny Countdown run (tiny from-scratch policy, every stage) on one CPU device, then on
4 forced CPU devices as meshes 4x1, 2x2 and 1x4, then as 2 processes x 2 devices
(jax.distributed on localhost, gloo collectives); each run's results.jsonl is compared
row by row with the one-device run (every field but wall-clock). Then the same on a
paged cache (``decode.page_size=16``): one device, 2x2, and 2 processes x 2 devices,
each compared with the one-device paged run. The 4x1 run also dumps
its compiled programs, and the step sampler's is searched for collectives whose
operands carry the cache-length dimension (rows of K/V moving between data shards
inside the token loop).

    python experiments/sharding_check.py [--problems 20] [--work DIR]

Prints a line per run and as its last line JSON: {"agreement": {"4x1": a, "2x2": b,
"1x4": c, "2proc": d, "2x2_paged": f, "2proc_paged": g}, "accuracy_delta_max": e,
"step_data_collectives": n}
(agreement: the share of identical rows; accuracy_delta_max: the largest difference in
any method's accuracy).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from qstar_jax.parallel import data_collectives, free_local_port, local_child_environment

REPO = Path(__file__).resolve().parents[1]
MAX_LEN = 96
PAGE_SIZE = 16
TINY = [
    "policy_training.steps=60", "policy_training.train_problems=200",
    "policy_training.hidden_size=32", "policy_training.intermediate_size=64",
    "policy_training.num_layers=1", "policy_training.num_heads=4",
    "policy_training.num_kv_heads=2", "policy_training.batch_size=16",
    "task.train_problems=8", "collect.rollouts_per_problem=2", "label.rollouts_per_state=2",
    "q_train.max_epochs=2", "q_train.batch_size=16", f"decode.max_len={MAX_LEN}",
    "decode.step_token_cap=32", "decode.slots=256", "decode.max_steps=4", "search.k=3",
    "search.max_expansions=4", "eval.samples=2", "eval.beam_k=2", "eval.problems_per_batch=8",
    "eval.methods=[greedy,best_of_n,beam,qstar]",
]


def run(out: Path, overrides: list[str], *, devices: int, processes: int = 1,
        dump: Path | None = None) -> None:
    """``python -m qstar_jax.run`` into ``out``, as ``processes`` processes of ``devices``
    CPU devices each."""
    env = local_child_environment(devices, REPO)
    if dump is not None:
        env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS"), f"--xla_dump_to={dump}",
                                                  "--xla_dump_hlo_as_text"]))
    command = [sys.executable, "-m", "qstar_jax.run", *TINY, *overrides]
    if processes > 1:
        command += [f"distributed.coordinator=localhost:{free_local_port()}",
                    f"distributed.num_processes={processes}"]
    children = [subprocess.Popen(command + ([f"distributed.process_id={i}"]
                                            if processes > 1 else []) + ["--out", str(out)],
                                 cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
                for i in range(processes)]
    try:
        errors = [child.communicate()[1] for child in children]
    finally:
        for child in children:
            child.kill()
    failed = [f"process {i} (exit {child.returncode}):\n{error[-3000:]}"
              for i, (child, error) in enumerate(zip(children, errors)) if child.returncode]
    if failed:
        raise RuntimeError(f"run into {out} failed:\n" + "\n".join(failed))


def rows(out: Path) -> dict[tuple[str, str], dict]:
    result = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        row.pop("wall_s")
        result[row["method"], row["problem_id"]] = row
    return result


def accuracy(table: dict) -> dict[str, float]:
    methods = {method for method, _ in table}
    return {m: sum(r["correct"] for (k, _), r in table.items() if k == m)
            / sum(1 for k, _ in table if k == m) for m in methods}


def step_data_collectives(dump: Path) -> int:
    """Collectives in the compiled step sampler of the 4x1 run (the dumped optimized
    module whose ops come from step_sampler.py) that move arrays with the cache length
    between data shards."""
    count = 0
    for module in dump.glob("*after_optimizations.txt"):
        text = module.read_text()
        if "step_sampler.py" not in text or "trie_sampler.py" in text:
            continue
        count += len(data_collectives(text, dim=MAX_LEN, mesh_shape=(4, 1)))
    return count


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temp dir)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="sharding_check_"))
    problems = [f"task.eval_problems={args.problems}"]
    run(work / "1dev", problems, devices=1)
    single = rows(work / "1dev")
    print(f"1 device: {len(single)} rows, accuracy {accuracy(single)}", flush=True)
    agreement, deltas = {}, []
    dump = work / "hlo_4x1"
    for name, data, model in (("4x1", 4, 1), ("2x2", 2, 2), ("1x4", 1, 4)):
        run(work / name, problems + [f"mesh.data={data}", f"mesh.model={model}"], devices=4,
            dump=dump if name == "4x1" else None)
    runs = ["4x1", "2x2", "1x4"]
    run(work / "2proc", problems + ["mesh.data=4"], devices=2, processes=2)
    runs.append("2proc")
    # On a paged cache, against the one-device run on pages: data shards in one process
    # and across two.
    paged = problems + [f"decode.page_size={PAGE_SIZE}"]
    run(work / "1dev_paged", paged, devices=1)
    run(work / "2x2_paged", paged + ["mesh.data=2", "mesh.model=2"], devices=4)
    run(work / "2proc_paged", paged + ["mesh.data=4"], devices=2, processes=2)
    single_paged = rows(work / "1dev_paged")
    for name in runs + ["2x2_paged", "2proc_paged"]:
        base_rows = single_paged if name.endswith("_paged") else single
        table = rows(work / name)
        agreement[name] = sum(table.get(key) == row
                              for key, row in base_rows.items()) / len(base_rows)
        accuracies, base = accuracy(table), accuracy(base_rows)
        deltas += [abs(accuracies.get(m, 0.0) - a) for m, a in base.items()]
        print(f"{name}: agreement {agreement[name]:.3f}, accuracy {accuracies}", flush=True)
    result = {"agreement": agreement, "accuracy_delta_max": max(deltas),
              "step_data_collectives": step_data_collectives(dump)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
