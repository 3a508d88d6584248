"""A learned PRM end to end in a tiny Countdown run: train_prm labels the label stage's
completions and trains the head, and search.utility=prm scores steps with it under
every Agg."""

import json

import pytest

from qstar_jax.qvalue.dataset import step_pairs
from qstar_jax.qvalue.rollouts import read_rollouts
from qstar_jax.run import main
from qstar_jax.search.aggregate import Agg, aggregate
from tests.test_run_pipeline import TINY

STAGES = "stages=[train_policy,collect,label,train_q,train_prm,evaluate]"
PRM_SEARCH = [*[o for o in TINY if not o.startswith("search.utility")], "search.utility=prm",
              "eval.methods=[qstar]", "eval.dump_trees=true", "task.eval_problems=3"]


def _trees(out):
    """(problem file, steps) -> node, for every node Q* dumped."""
    nodes = {}
    for dump in (out / "trees" / "qstar").glob("*.json"):
        for node in json.loads(dump.read_text())["nodes"]:
            nodes[(dump.stem, tuple(node["steps"]))] = node
    return nodes


@pytest.fixture(scope="module")
def prm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("prm_run")
    assert main([*PRM_SEARCH, STAGES, "search.agg=last", "--out", str(out)]) == 0
    return out


def test_train_prm_reuses_the_label_stages_completions(prm_run):
    pairs = step_pairs(read_rollouts(prm_run / "rollouts.jsonl"))
    recorded = (prm_run / "step_outcomes.jsonl").read_text().splitlines()
    # One record per step that does not end its trace: none sampled again.
    assert len(recorded) == sum(p.terminal_reward is None for p in pairs)
    assert all(len(json.loads(line)["rewards"]) == 2 for line in recorded)  # rollouts_per_state
    assert json.loads((prm_run / "prm" / "prm.json").read_text())["labels"] == "hard"
    assert json.loads((prm_run / "prm_training.json").read_text())["examples"] == len(pairs)


@pytest.mark.parametrize("agg", [a.value for a in Agg if a != Agg.last])
def test_search_with_the_learned_prm_folds_its_scores_by_each_agg(prm_run, tmp_path, agg):
    """Under Agg=last a node's g is its step's PRM score; a run with another Agg that
    reaches the same nodes folds those scores along the path."""
    out = tmp_path / agg
    assert main([*PRM_SEARCH, f"search.agg={agg}", f"search.prm_model={prm_run / 'prm'}",
                 "--reuse", str(prm_run), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())["methods"]["qstar"]
    assert summary["prm_calls"] == summary["q_calls"] > 0
    scores = {key: node["g"] for key, node in _trees(prm_run).items()}
    nodes = _trees(out)
    checked = 0
    for (problem, steps), node in nodes.items():
        if len(steps) >= 2 and (problem, steps) in scores:
            parent = nodes[(problem, steps[:-1])]
            expected = aggregate(Agg(agg), parent["g"], scores[(problem, steps)])
            assert node["g"] == pytest.approx(expected, abs=1e-5)
            assert 0.0 < scores[(problem, steps)] < 1.0
            checked += 1
    assert checked > 0


def test_a_prm_directory_of_neither_kind_is_a_config_error(tmp_path, capsys):
    assert main([*PRM_SEARCH, f"search.prm_model={tmp_path}", "--out",
                 str(tmp_path / "out")]) == 2
    assert "neither a PRM the train_prm stage wrote" in capsys.readouterr().err
    assert main([*PRM_SEARCH, "--out", str(tmp_path / "out2")]) == 2
    assert "utility=prm needs a PRM" in capsys.readouterr().err
