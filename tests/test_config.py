import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from qstar_jax.config import CODE_TASKS, Agg, ConfigError, RunConfig
from qstar_jax.config_loading import load_config, to_yaml
from qstar_jax.search.astar import AStarConfig


def test_planner_has_the_paper_defaults_and_the_countdown_run_stops_at_one_trajectory():
    planner = AStarConfig()
    assert (planner.k, planner.n_complete, planner.lam) == (6, 6, 1.0)
    config = load_config()
    assert isinstance(config, RunConfig)
    assert (config.search.k, config.search.n_complete, config.search.lam) == (6, 1, 1.0)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("search:\n  k: 3\n  agg: max\ntask:\n  options:\n    count: 5\n"
                    "  countdown:\n    num_count: 3\n")
    config = load_config(path, ["search.k=4", "eval.methods=[greedy,qstar]"])
    assert config.search.k == 4
    assert config.search.agg is Agg.max
    assert config.eval.methods == ("greedy", "qstar")
    assert config.task.options == {"count": 5}
    assert config.task.countdown.num_count == 3


def test_a_leading_tilde_in_a_path_setting_is_the_home_folder(tmp_path, monkeypatch):
    """A shell leaves '~' in key.with.dots=~/x and YAML always does: each setting that names
    a file or folder reads it as the home folder; 'scratch' and 'solver' stay names."""
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "c.yaml"
    path.write_text("out_dir: ~/runs/a\nlabel:\n  stronger_model: ~/strong\n")
    config = load_config(path, ["policy.source=~/m.gguf", "q_train.second_opinion=~/second",
                                "search.prm_model=~/prm", "q_train.separate_model=~/sep"])
    assert (config.out_dir, config.policy.source, config.label.stronger_model,
            config.q_train.second_opinion, config.search.prm_model,
            config.q_train.separate_model) == tuple(
        f"{tmp_path}/{name}" for name in ("runs/a", "m.gguf", "strong", "second", "prm", "sep"))
    defaults = load_config()
    assert (defaults.policy.source, defaults.label.stronger_model) == ("scratch", "solver")


def test_round_trip_through_yaml(tmp_path):
    config = load_config(None, ["search.k=2", "seed=7"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(config))
    assert load_config(path) == config


@pytest.mark.parametrize("override, message", [
    ("search.kk=3", r"^Key 'kk' not in 'SearchConfig'.* \(at search\.kk\)$"),
    ("search.k=abc", r"^Value 'abc' of type 'str' could not be converted to Integer "
                     r"\(at search\.k\)$"),
    ("search.agg=mean", r"^Invalid value 'mean', expected one of \[min, max, sum, last, "
                        r"product\] \(at search\.agg\)$"),
    ("search.k=0", "search.k"),
    ("search.n_complete=0", "search.n_complete"),
    ("search.expansions_per_node=0", "search.expansions_per_node"),
    ("search.max_generated_tokens=3", "cannot finish one step"),
    ("eval.methods=[greedy,magic]", "magic"),
    ("eval.methods=[]", r"^eval.methods: lists no method for the evaluate stage; choose from "
                        r"\('greedy'.*'mctsr'\), or leave evaluate out of stages$"),
    ("eval.methods=[qstar,best_of_n_matched]", "best_of_n_matched"),
    ("eval.methods=[best_of_n_matched,best_of_n,qstar]", "best_of_n_matched"),
    ("eval.methods=[best_of_n,best_of_n_matched]", "^eval.methods: best_of_n_matched reads "
                                                   "best_of_n's and qstar's tokens: list both "
                                                   "before it$"),
    ("stages=[collect,dance]", "dance"),
    ("search.utility=prm", "prm_model"),
    ("search.utility=countdown_rule", "^search.utility: countdown_rule scores Countdown "
                                      "steps; for task.name=arithmetic choose zero, prm or "
                                      "code_rule$"),
    ("search.utility=code_rule", "code_rule reads Python"),
    ("task.name=gsm8k", "live_states_only"),
    ("task.name=gsm9k", "task.name: unknown task 'gsm9k'; choose from .*'gsm8k'"),
    ("label.trace_is_a_rollout=true", "label.trace_is_a_rollout"),
    ("eval.mctsr.rollouts=0", "^eval.mctsr.rollouts must be an integer >= 1, got 0$"),
    ("eval.mctsr.score_temperature=-1", "^eval.mctsr temperatures must be >= 0"),
    ("policy_training.steps=0", "policy_training"),
    ("policy_training.learning_rate=0", "policy_training"),
    ("policy_training.max_grad_norm=0", "policy_training.max_grad_norm"),
    ("decode.step_chunk=-1", "decode.step_chunk"),
    ("decode.min_rows=0", "decode.min_rows"),
    ("decode.row_windows=off", "^decode.row_windows: must be one of "
                               "\\('auto', 'gather', 'copy'\\), got 'False'$"),  # YAML's off
    ("decode.slots=0", "decode.slots: must be >= 1, got 0"),
    ("decode.max_len=40", "decode.max_len: must exceed decode.step_token_cap=40 .* got 40"),
    ("eval.beam_k=0", "eval.beam_k: must be >= 1, got 0"),
    ("eval.tot.value_samples=0", "eval.tot.value_samples: must be >= 1, got 0"),
    ("eval.tot.value_temperature=-1", "eval.tot.value_temperature: must be >= 0, got -1.0"),
    ("eval.best_of_n_scorer=prm", "^eval.best_of_n_scorer: prm ranks chains by g, which "
                                  "search.utility=zero fixes at 0: choose f or q, or a "
                                  "search.utility$"),
    ("eval.text_kept_rows=-2", "eval.text_kept_rows: must be >= 0, got -2"),
    ("task.eval_problems=0", "task.eval_problems: must be >= 1, got 0"),
    ("policy_training.num_layers=0", "policy_training.num_layers: must be >= 1, got 0"),
    ("policy_training.value_weight=-0.5", "policy_training.value_weight: .* got -0.5"),
    ("policy_training.learning_rate=0", "policy_training.learning_rate: must be > 0, got 0"),
    ("q_train.holdout_fraction=1.0", r"q_train.holdout_fraction: must be in \[0, 1\), got 1.0"),
    ("mesh.data=0", "mesh: sizes must be >= 1"),
    ("policy.dtype=float16", "policy.dtype: must be one of .*'bfloat16'.*, got 'float16'"),
    ("search.lam=-1", "search.lam: must be >= 0, got -1.0"),
    ("eval.temperature=-0.5", "eval.temperature: must be >= 0, got -0.5"),
    ("eval.problems_per_batch=0", "eval.problems_per_batch: must be >= 1, got 0"),
    ("decode.step_token_cap=0", "decode.step_token_cap: must be >= 1, got 0"),
    ("decode.max_steps=0", "decode.max_steps: must be >= 1, got 0"),
    ("collect.rollouts_per_problem=0", "collect.rollouts_per_problem: must be >= 1, got 0"),
    ("label.gamma=1.5", r"label.gamma: must be in \(0, 1\], got 1.5"),
    ("label.rounds=0", "label.rounds: must be >= 1, got 0"),
    ("q_train.trainable_layers=-2", "q_train.trainable_layers: must be >= -1, got -2"),
    ("q_train.learning_rate=0", "q_train.learning_rate: must be > 0, got 0"),
    ("policy_training.num_heads=5", "policy_training.num_heads: must divide hidden_size .*"
                                    "hidden_size=96 num_heads=5"),
    ("policy_training.num_kv_heads=3", "policy_training.num_heads: must divide hidden_size "
                                       "and be a multiple of num_kv_heads, got hidden_size=96 "
                                       "num_heads=4 num_kv_heads=3"),
    ("label.rollouts_per_state=0", "label.rollouts_per_state: must be >= 1, got 0"),
    ("q_train.backbone=separate", "q_train.separate_model: q_train.backbone=separate needs "
                                  "a model"),
    ("label.stronger_model=null", "label.stronger_model: label.method=stronger_model needs "
                                  "a model"),
    ("label.gamma=0", r"label.gamma: must be in \(0, 1\], got 0.0"),
    ("q_train.holdout_fraction=-0.1", r"q_train.holdout_fraction: .* got -0.1"),
    ("task.train_problems=-1", "task.train_problems: must be >= 0, got -1"),
    ("mesh.data=-2", "mesh: sizes must be >= 1 .*got data=-2 model=1"),
    ("mesh.model=0", "mesh: sizes must be >= 1 .*got data=-1 model=0"),
    ("decode.page_size=-16", "decode.page_size: must be >= 0, got -16"),
    ("search.max_expansions=0", "search.max_expansions: must be >= 1, got 0"),
    ("search.temperature=-0.1", "search.temperature: must be >= 0, got -0.1"),
    ("eval.samples=0", "eval.samples: must be >= 1, got 0"),
    ("eval.beam_width=0", "eval.beam_width: must be >= 1, got 0"),
    ("eval.text_max_tokens=0", "eval.text_max_tokens: must be >= 1, got 0"),
    ("eval.tot.k=0", "eval.tot.k: must be >= 1, got 0"),
    ("eval.tot.max_expansions=0", "eval.tot.max_expansions: must be >= 1, got 0"),
    ("policy_training.batch_size=0", "policy_training.batch_size: must be >= 1, got 0"),
    ("policy_training.hidden_size=0", "policy_training.hidden_size: must be >= 1, got 0"),
    ("policy_training.intermediate_size=0", "policy_training.intermediate_size: .* got 0"),
    # NaN passes every >= check, and an infinite temperature failed inside evaluate
    ("eval.temperature=inf", "^eval.temperature: must be a finite number, got inf$"),
    ("search.lam=.inf", "^search.lam: must be a finite number, got inf$"),
    ("eval.tot.threshold=nan", "^eval.tot.threshold: must be a finite number, got nan$"),
    ("eval.mctsr.exploration=nan", "^eval.mctsr.exploration: must be a finite number, "
                                   "got nan$"),
    ("seed=-1", r"^seed: must be in \[0, 2\*\*32\), got -1$"),
    ("seed=4294967296", r"^seed: must be in \[0, 2\*\*32\), got 4294967296$"),
    ("q_train.patience=0", "^q_train.patience: must be >= 1, got 0$"),
    ("policy_training.num_heads=32", r"^policy_training.num_heads: RoPE rotates pairs of a "
                                     r"head's dimensions: hidden_size / num_heads must be "
                                     r"even, got 96 / 32 = 3$"),
    ("search.prm_bad_token=+", "^search.prm_good_token: a Math-Shepherd PRM's score compares "
                               "two tokens' probabilities: prm_bad_token must differ, both "
                               "are '[+]'$"),
    ("task.train_problems=0", "^task.train_problems: collect reads train problems: must be "
                              ">= 1 with collect in stages, got 0$"),
    ("policy.chat_template=true", r"^policy.chat_template: a policy trained from scratch "
                                  r"\(policy.source=scratch\) reads plain text through a "
                                  "character tokenizer with no chat template: set it to "
                                  "false$"),
    ("policy_training.value_batch_size=0", "policy_training.value_batch_size: .* got 0"),
    ("policy_training.train_problems=0", "policy_training.train_problems: .* got 0"),
    ("policy_training.num_heads=0", "policy_training.num_heads: must be >= 1, got 0"),
    ("policy_training.num_kv_heads=0", "policy_training.num_kv_heads: must be >= 1, got 0"),
    ("policy_training.warmup_steps=-1", "policy_training.warmup_steps: .* got -1"),
    ("collect.temperature=-1", "collect.temperature: must be >= 0, got -1.0"),
    ("q_train.hidden_layers=-1", "q_train.hidden_layers: must be >= 0, got -1"),
    ("q_train.patience=-1", "q_train.patience: must be >= 1, got -1"),
    ("q_train.batch_size=0", "q_train.batch_size: must be >= 1, got 0"),
    ("q_train.max_epochs=0", "q_train.max_epochs: must be >= 1, got 0"),
    ("distributed.heartbeat_timeout_s=0", "distributed.heartbeat_timeout_s: .* got 0"),
    ("search.max_generated_tokens=39", "^search.max_generated_tokens: 39 cannot finish one "
                                       "step of up to decode.step_token_cap=40 tokens$"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_page_pool_that_holds_no_whole_row_is_refused():
    # Met at the first prefill of collect before.
    paged = ["decode.page_size=16", "decode.max_len=160"]
    load_config(None, [*paged, "decode.pages=10"])
    with pytest.raises(ConfigError, match=r"^decode.pages: 9 pages hold no row of "
                                          r"decode.max_len=160 tokens \(10 pages of 16\), "
                                          r"which one rollout may fill: give at least 10$"):
        load_config(None, [*paged, "decode.pages=9"])
    with pytest.raises(ConfigError, match=r"^decode.pages: 18 pages over mesh.data=2 shards "
                                          r"hold no row .* give at least 20$"):
        load_config(None, [*paged, "decode.pages=18", "mesh.data=2", "decode.slots=8"])


@pytest.mark.parametrize("overrides", [
    ["label.gamma=1"], ["q_train.holdout_fraction=0"], ["q_train.trainable_layers=-1"],
    ["eval.text_kept_rows=0"], ["decode.step_chunk=0"], ["mesh.data=-1", "decode.slots=9"],
    ["policy_training.max_grad_norm=null"], ["search.lam=0"],
    ["search.temperature=0"], ["q_train.hidden_layers=0"], ["q_train.patience=1"],
    ["policy_training.warmup_steps=0"],
    ["seed=4294967295"], ["task.train_problems=0", "stages=[evaluate]"],
    ["policy_training.value_weight=0"],
    ["decode.max_len=41"], ["search.max_generated_tokens=40"],
    ["decode.page_size=32", "decode.max_len=160"],
    ["decode.page_size=16", "decode.pages=99", "mesh.data=-1"],
    ["search.utility=prm", "search.prm_model=/a/prm"],
    ["search.utility=prm", "stages=[train_policy,collect,label,train_q,train_prm,evaluate]"],
    ["eval.methods=[qstar,best_of_n,best_of_n_matched]"],
    ["label.method=best_of_rollouts", "label.trace_is_a_rollout=true"],
    ["eval.tot.evaluator=prm", "search.utility=prm", "search.prm_model=/a/prm"],
    ["eval.best_of_n_scorer=prm", "search.utility=prm", "search.prm_model=/a/prm"],
    ["policy.chat_template=true", "policy.source=/a/policy", "q_train.second_opinion=null"],
    ["eval.methods=[]", "stages=[train_policy,collect]"],
    ["task.name=humaneval", "search.utility=code_rule", "label.live_states_only=false",
     "label.method=best_of_rollouts", "policy.source=/a/policy", "q_train.second_opinion=null"],
])
def test_values_on_the_edge_of_each_range_are_taken(overrides):
    """Each bound as documented: gamma in (0, 1], holdout in [0, 1), -1 layers (all), 0
    kept rows or chunk, data -1 (whatever devices the model axis leaves, which any slots
    or pages split over), no clipping, a step cap one under max_len, a PRM named or
    trained in the run."""
    taken = OmegaConf.create(OmegaConf.to_container(
        OmegaConf.structured(load_config(None, overrides)), enum_to_str=True))
    given = OmegaConf.from_dotlist(overrides)
    for key in (override.split("=")[0] for override in overrides):  # not refused, and held
        assert plain(OmegaConf.select(taken, key)) == plain(OmegaConf.select(given, key)), key


def plain(value):
    """A setting as JSON reads it: tuples and list nodes as lists, 1 and 1.0 alike."""
    return json.loads(json.dumps(value, default=list))


@pytest.mark.parametrize("overrides, message", [
    (["decode.page_size=48", "eval.prefix_sharing=false"], "max_len=160 must be a multiple"),
    (["decode.page_size=16", "decode.pages=99", "mesh.data=2"],
     "99 pages do not split over mesh.data=2 shards; make it a multiple of 2$"),
    (["decode.slots=9", "mesh.data=2"],
     "decode.slots: 9 slots do not split over mesh.data=2 shards; make it a multiple of 2$"),
    (["decode.pages=-1"], "decode.pages: must be >= 0, got -1"),
    (["decode.pages=512"], r"^decode.pages: sizes a paged cache, which decode.page_size=0 "
                           r"\(rows\) does not build; set decode.page_size \(e.g. 16\) too, "
                           r"got pages=512$"),
    (["decode.layer_weights=per_layer"], "decode.layer_weights: must be one of .*per-layer"),
])
def test_bad_paging_settings_say_what_to_change(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_solver_labels_are_for_the_world_whose_solver_writes_the_rest_of_a_trace():
    """Countdown's solver tells whether a state is live (live_states_only) but writes no
    trace, so the default label.stronger_model=solver is refused there."""
    with pytest.raises(ConfigError, match=r"^label.stronger_model: 'solver' completes traces "
                                          r"with a task's exact solver; the tasks that have "
                                          r"one are \('arithmetic',\): give a model "
                                          r"directory$"):
        load_config(None, ["task.name=countdown"])
    config = load_config(None, ["task.name=countdown", "label.method=best_of_rollouts"])
    assert (config.label.live_states_only, config.label.stronger_model) == (True, "solver")


def test_the_saved_config_leaves_out_the_launch_settings():
    """Every process of a run writes and compares the same config.yaml."""
    launch = ["distributed.coordinator=host:1234", "distributed.num_processes=2",
              "distributed.process_id=1", "distributed.heartbeat_timeout_s=45"]
    saved = to_yaml(load_config(None, [*launch, "seed=3"]))
    assert saved == to_yaml(load_config(None, ["seed=3"]))
    assert "host:1234" not in saved and "seed: 3\n" in saved


def test_a_second_opinion_goes_with_the_head_on_the_policys_hidden_states():
    with pytest.raises(ConfigError, match="q_train.second_opinion"):
        load_config(None, ["q_train.second_opinion=runs/x/policy", "q_train.backbone=separate",
                           "q_train.separate_model=runs/x/policy"])
    assert load_config(None, ["q_train.second_opinion=runs/x/policy"]).q_train.second_opinion


def test_a_second_policy_from_scratch_goes_with_a_policy_from_scratch():
    with pytest.raises(ConfigError, match="policy.source=scratch"):
        load_config(None, ["q_train.second_opinion=scratch", "policy.source=runs/x/policy"])
    assert load_config(None, ["q_train.second_opinion=scratch"]).q_train.second_opinion


def test_paging_defaults_to_the_pages_the_rows_would_hold():
    d = load_config(None, ["decode.page_size=16", "eval.prefix_sharing=false",
                           "decode.slots=8"]).decode
    assert (d.num_pages, load_config(None, []).decode.num_pages) == (8 * 160 // 16, 0)
    assert load_config(None, ["decode.page_size=16", "eval.prefix_sharing=false",
                              "decode.pages=20"]).decode.num_pages == 20
    assert load_config(None, ["decode.page_size=16"]).eval.prefix_sharing  # tries on pages


def test_scratch_policy_is_for_the_synthetic_worlds_only():
    real_task = ["task.name=gsm8k", "label.live_states_only=false",
                 "q_train.second_opinion=null"]
    with pytest.raises(ConfigError, match="scratch"):
        load_config(None, [*real_task, "label.method=best_of_rollouts"])
    with pytest.raises(ConfigError, match="'solver' completes traces"):
        load_config(None, [*real_task, "policy.source=x"])
    assert load_config("configs/countdown_verifier.yaml").task.name == "countdown"


def test_the_default_experiment_has_no_verifier_inside_the_search():
    config = load_config()
    assert config.task.name == "arithmetic" and config.search.utility.value == "zero"
    assert "qstar_no_q" in config.eval.methods and config.label.stronger_model == "solver"


def test_the_defaults_are_the_documented_default_experiment():
    """docs/default_experiment.md's run; decode.step_chunk (16) from docs/decoder_speed.md,
    eval.text_kept_rows (4) from docs/paged_cache.md."""
    c = load_config()
    t = c.policy_training
    assert (t.num_layers, t.hidden_size, t.train_problems) == (3, 96, 5000)
    assert (t.steps, t.batch_size, t.learning_rate, t.max_grad_norm) == (1000, 32, 2e-3, 1.0)
    assert (c.collect.rollouts_per_problem, c.task.train_problems, c.task.eval_problems) == (
        4, 700, 500)
    assert (c.label.method.value, c.label.stronger_model, c.label.gamma,
            c.label.live_states_only) == ("stronger_model", "solver", 0.8, True)
    assert (c.q_train.step_logprob, c.q_train.second_opinion) == (True, "scratch")
    assert (c.eval.samples, c.eval.best_of_n_scorer.value, c.eval.beam_width,
            c.eval.beam_k, c.eval.prefix_sharing) == (6, "f", 2, 3, True)
    assert (c.decode.step_chunk, c.eval.text_kept_rows) == (16, 4)


@pytest.mark.parametrize("override, key", [("eval.methods.0=beam", "eval.methods"),
                                           ("task.countdown.number_range.1=5",
                                            "task.countdown.number_range")])
def test_an_override_of_one_element_of_a_list_says_to_give_the_whole_list(override, key):
    with pytest.raises(ConfigError, match=f"^override {override!r}: {key} is a list; give it "
                                          r"whole, e\.g\. " f"{key}=\\[a,b\\]$"):
        load_config(None, ["search.k=3", override])


def test_a_list_written_as_a_mapping_in_a_file_is_a_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("eval:\n  methods: {0: beam}\n")
    with pytest.raises(ConfigError, match="^a setting that is a list is given as a mapping, "
                                          r"or the reverse: write a list as \[a, b\] and a "
                                          r"mapping as \{key: value\}$"):
        load_config(path)


def test_missing_file_and_malformed_override(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["search.k"])
    bad_yaml = "task.options={config:{rules: 1}}"  # YAML wants a space after each colon
    with pytest.raises(ConfigError, match=r"'task.options=\{config:.*not valid YAML \(found "
                                          "unexpected ':'; a flow mapping needs a space"):
        load_config(None, ["search.k=3", bad_yaml])
    broken = tmp_path / "broken.yaml"
    broken.write_text("search:\n  k: [3\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML: did not find "
                                          r"expected ',' or '\]'$"):
        load_config(broken)
    with pytest.raises(ConfigError, match=f"^config file {tmp_path} is a folder$"):
        load_config(tmp_path)
    for text in ("- search.k: 3\n", "42\n"):
        broken.write_text(text)
        with pytest.raises(ConfigError, match=f"^config file {broken} holds no settings: give "
                                              "key: value lines, as the files in configs/ do$"):
            load_config(broken)


def test_reasoner_methods_are_listed_only_on_request_and_their_settings_checked():
    assert "mctsr" not in load_config().eval.methods
    config = load_config(overrides=["eval.methods=[tot_bfs,tot_dfs,mctsr]",
                                    "eval.mctsr.rollouts=4", "eval.tot.evaluator=value_prompt"])
    assert config.eval.mctsr.rollouts == 4 and config.eval.tot.evaluator.value == "value_prompt"
    with pytest.raises(ConfigError, match="eval.tot.evaluator: prm ranks states by g"):
        load_config(overrides=["eval.tot.evaluator=prm", "search.utility=zero"])
    with pytest.raises(ConfigError, match="eval.tot.keep: must be >= 1, got 0"):
        load_config(overrides=["eval.tot.keep=0"])


@pytest.mark.parametrize("task", CODE_TASKS)
def test_mctsr_on_a_code_task_is_refused_and_the_step_methods_and_tot_are_not(task):
    code = [f"task.name={task}", "label.method=best_of_rollouts", "label.live_states_only=false",
            "policy.source=smollm2-135m-instruct", "q_train.second_opinion=null"]
    with pytest.raises(ConfigError, match=(
            "^eval.methods: mctsr's prompts ask for an answer ending in the line 'The answer "
            f"is: ...', which task.name={task} ignores: it grades the answer's code; drop "
            "mctsr, or run it on a math task$")):
        load_config(overrides=[*code, "eval.methods=[greedy,mctsr]"])
    assert load_config(overrides=[*code, "eval.methods=[greedy,qstar,tot_bfs]"]).task.name == task


@pytest.mark.parametrize("path", sorted(str(p) for p in Path("configs").glob("*.yaml")))
def test_every_shipped_config_loads_and_names_its_out_dir(path):
    config = load_config(path)
    assert config.out_dir == f"runs/{Path(path).stem}"
    # No shipped config puts a verifier inside the search but the one named for it.
    assert (config.search.utility.value == "countdown_rule") == path.endswith("verifier.yaml")
