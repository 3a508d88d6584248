"""Where a tree search's choices go wrong, read against the exact value (synthetic worlds).

Reads the trees a run dumped (``eval.dump_trees=true``) and, with the task's exact solver
(``can_still_succeed``), sorts every expansion: of a dead node (a state that can no longer
reach the answer: search budget spent where nothing can be won), or of a live node whose
new children are all live, all dead, or mixed. At a mixed expansion the search's h (Q̂)
had a choice to make: the share where its best-scored child is live is how often Q̂ chose
right when it mattered. A Q̂ that only echoes the policy's confidence chooses about as the
policy's own mode would; an independent judge of the step would choose live nearly always.

    python -m qstar_jax.run eval.dump_trees=true task.eval_split=validation --out RUN ...
    python experiments/search_choices.py RUN [--method qstar]

Prints a line per method and, as its last line, JSON: {"qstar": {"expansions": ...,
"dead_expansions": ..., "live_all_live": ..., "live_mixed": ..., "live_all_dead": ...,
"mixed_best_child_live": ...}, ...}.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from qstar_jax.config import EXACT_VALUE_TASKS
from qstar_jax.stages.context import RunContext


def expansion_children(tree: dict) -> list[list[dict]]:
    """The new children of each expansion of ``tree["expansion_order"]``. Node ids follow
    creation and each expansion's children are made before the next one's, so a node
    expanded more than once (A*'s expansions_per_node) has each child counted at the
    expansion that made it, not at every one."""
    positions = collections.defaultdict(list)  # node id -> where it is in the order
    for position, node_id in enumerate(tree["expansion_order"]):
        positions[node_id].append(position)
    made: list[list[dict]] = [[] for _ in tree["expansion_order"]]
    position = 0
    for node in sorted(tree["nodes"], key=lambda node: node["id"]):
        if node["parent"] is not None:
            position = next(p for p in positions[node["parent"]] if p >= position)
            made[position].append(node)
    return made


def expansion_kinds(tree: dict, is_live) -> collections.Counter:
    """Counts for one dumped tree; ``is_live(steps)`` is the exact value of a state."""
    nodes = {node["id"]: node for node in tree["nodes"]}
    counts = collections.Counter()
    for node_id, new in zip(tree["expansion_order"], expansion_children(tree)):
        if not new:
            continue
        counts["expansions"] += 1
        if not is_live(nodes[node_id]["steps"]):
            counts["dead_expansions"] += 1
            continue
        live = [is_live(child["steps"]) for child in new]
        if all(live):
            counts["live_all_live"] += 1
        elif not any(live):
            counts["live_all_dead"] += 1
        else:
            counts["live_mixed"] += 1
            scored = [i for i in range(len(new)) if new[i]["h"] is not None]
            if len(scored) < len(new):  # a chain's step whose Q̂ it never read: no choice
                counts["mixed_unscored"] += 1
                continue
            best = max(scored, key=lambda i: (new[i]["h"], -new[i]["id"]))
            counts["mixed_best_child_live"] += live[best]
    return counts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder with trees/ (eval.dump_trees)")
    parser.add_argument("--method", action="append", help="methods to read (default: all "
                        "with dumped trees)")
    args = parser.parse_args(argv)
    ctx = RunContext.of_run(args.run)
    if ctx.config.task.name not in EXACT_VALUE_TASKS:
        raise SystemExit(f"the exact value exists for {EXACT_VALUE_TASKS} only")
    trees = args.run / "trees"
    # A method's folder (best_of_n_matched's: one for each N it searched, n4/).
    dumped = sorted({path.parent.relative_to(trees).as_posix()
                     for path in trees.rglob("*.json")}) if trees.is_dir() else []
    methods = args.method or dumped
    if not methods:
        raise SystemExit(f"{args.run} has no trees/: run it with eval.dump_trees=true")
    unknown = sorted(set(methods) - set(dumped))
    if unknown:
        raise SystemExit(f"{args.run}/trees has no trees of {unknown}; it has {dumped}")
    problems = ctx.problems(ctx.config.task.eval_split, ctx.config.task.eval_problems)
    report = {}
    for method in methods:
        counts = collections.Counter()
        for path in sorted((trees / method).glob("*.json")):
            tree = json.loads(path.read_text())
            problem = problems[tree["problem_index"]]
            counts += expansion_kinds(
                tree, lambda steps, p=problem: ctx.task.can_still_succeed(p, steps))
        mixed = counts["live_mixed"] - counts["mixed_unscored"]
        report[method] = dict(counts, mixed_best_child_live_share=(
            round(counts["mixed_best_child_live"] / mixed, 3) if mixed else None))
        print(f"{method}: {counts['expansions']} expansions, {counts['dead_expansions']} of "
              f"dead nodes; of live nodes: {counts['live_all_live']} all children live, "
              f"{mixed} mixed, {counts['live_all_dead']} all dead; at mixed ones the best-h "
              f"child was live {report[method]['mixed_best_child_live_share']}")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
