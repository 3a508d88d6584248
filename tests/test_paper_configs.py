"""The paper configs run end to end with tiny random models and fixture data swapped in by
overrides, so their wiring (task, utility, PRM, chat template, code grading) is proven
without the 7B weights."""

import json

import jax
import pytest

from qstar_jax.config_loading import load_config
from qstar_jax.run import main
from qstar_jax.stages import separate_q
from qstar_jax.tasks.registry import make_task
from tests.support.tiny_checkpoints import save_tiny_checkpoint
from tests.support.train_q_spy import meshes_passed_to_train_q_model

FIXTURES = "tests/fixtures"
DATA = {
    "configs/gsm8k_llama2_7b.yaml": f"{FIXTURES}/gsm8k/test.jsonl",
    "configs/math_deepseek_math_7b.yaml": f"{FIXTURES}/math/test.jsonl",
    "configs/mbpp_codeqwen1.5_7b.yaml": f"{FIXTURES}/mbpp/full_test.parquet",
}
# Configs whose problems ship with a package: a small split instead of fixture files.
PACKAGED = {
    "configs/humaneval_codeqwen1.5_7b.yaml": ["task.options.train_size=2", "decode.max_len=2048"],
    "configs/gsm_symbolic_llama2_7b.yaml": ["task.options.test_size=2", "task.options.train_size=2",
                                            "task.options.validation_size=0"],
}
SMALL = [
    "policy.dtype=float32", "task.options.n_shot=0",
    "task.train_problems=2", "task.eval_problems=2",
    # The configs' page pools are sized for 7B models on a GPU: a small one here.
    "decode.slots=128", "decode.pages=1024", "decode.max_len=512", "decode.step_token_cap=12",
    "decode.max_steps=3",
    "collect.rollouts_per_problem=2", "label.rollouts_per_state=1", "q_train.max_epochs=1",
    "search.k=2", "search.n_complete=1", "search.max_expansions=3", "eval.samples=2",
]


# How each paper config prompts its policy: as the model's authors evaluated it (MetaMath's
# Alpaca prompt, DeepSeek-Math's chat turn; MBPP's three tests shown, graded on test_list).
PROMPTS = {
    "configs/gsm8k_llama2_7b.yaml": ({"prompt_style": "metamath", "n_shot": 0}, False),
    "configs/gsm_symbolic_llama2_7b.yaml": ({"prompt_style": "metamath", "n_shot": 0}, False),
    "configs/math_deepseek_math_7b.yaml": ({"prompt_style": "deepseek_math", "n_shot": 0}, True),
    "configs/mbpp_codeqwen1.5_7b.yaml": ({"shown_tests": "all", "challenge_tests": False}, True),
}


@pytest.mark.parametrize("config", sorted(PROMPTS))
def test_paper_configs_prompt_their_policies_as_the_models_were_evaluated(config):
    loaded = load_config(config)
    options, chat_template = PROMPTS[config]
    assert {key: loaded.task.options.get(key) for key in options} == options
    assert loaded.policy.chat_template is chat_template
    task = make_task(loaded.task.name, **loaded.task.options)  # the task takes them
    assert all(getattr(task, key) == value for key, value in options.items())


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "llama", "llama")


def problem_overrides(config: str) -> list[str]:
    if config in PACKAGED:
        return PACKAGED[config]
    data = DATA[config]
    return [f"task.options.data_files.train={data}", f"task.options.data_files.test={data}"]


@pytest.mark.parametrize("config", sorted([*DATA, *PACKAGED]))
def test_paper_config_runs_end_to_end_with_tiny_stand_ins(config, tiny_checkpoint, tmp_path):
    overrides = [f"policy.source={tiny_checkpoint}", *SMALL, *problem_overrides(config)]
    uses_prm = "gsm" in config
    if uses_prm:  # the tiny model stands in for Math-Shepherd
        overrides += [f"search.prm_model={tiny_checkpoint}", "search.prm_step_tag= ки"]
    assert main([config, *overrides, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())["methods"]
    assert set(summary) == {"greedy", "best_of_n", "qstar"}
    assert all(entry["n"] == 2 for entry in summary.values())
    assert summary["qstar"]["q_calls"] > 0
    assert (summary["qstar"]["prm_calls"] > 0) == uses_prm
    assert summary["greedy"]["prm_calls"] == 0  # its choices never read the PRM


def test_q_on_a_separate_trainable_backbone(tiny_checkpoint, tmp_path, monkeypatch):
    meshes = meshes_passed_to_train_q_model(monkeypatch, separate_q)
    config, data = "configs/math_deepseek_math_7b.yaml", DATA["configs/math_deepseek_math_7b.yaml"]
    overrides = [f"policy.source={tiny_checkpoint}", *SMALL, "eval.methods=[qstar]",
                 f"task.options.data_files.train={data}", f"task.options.data_files.test={data}",
                 "q_train.backbone=separate", f"q_train.separate_model={tiny_checkpoint}",
                 "q_train.trainable_layers=1"]
    assert main([config, *overrides, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())["methods"]
    assert summary["qstar"]["n"] == 2 and summary["qstar"]["q_calls"] > 0
    assert json.loads((tmp_path / "q_training.json").read_text())["steps"] >= 1
    # The backbone and head trained on the run's mesh (over all the devices there are).
    assert [m.size for m in meshes] == [jax.device_count()]
