"""Sizing a run: parameter counts, KV bytes, pages, and the refusal before a run that
cannot fit."""

import dataclasses
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import jax
import pytest
from flax import nnx

from qstar_jax import architectures, memory_plan
from qstar_jax.config import ConfigError
from qstar_jax.config_loading import load_config
from qstar_jax.models.config import ModelConfig
from qstar_jax.models.llama import LlamaModel

LLAMA2_7B = dict(model_type="llama", vocab_size=32000, hidden_size=4096,
                 intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32,
                 head_dim=128)
MISTRAL_7B_PARAMETERS = 7_241_732_096  # Math-Shepherd's PRM: Mistral-7B-v0.1, published 7.24B
ARCHITECTURES = "configs/architectures"
SMOLLM2_135M = dict(model_type="llama", vocab_size=49152, hidden_size=576,
                    intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3,
                    head_dim=64, tie_word_embeddings=True)


def test_parameter_counts_are_the_published_ones_and_the_models():
    assert memory_plan.parameter_count(ModelConfig(**LLAMA2_7B)) == 6_738_415_616
    assert memory_plan.parameter_count(ModelConfig(**SMOLLM2_135M)) == 134_515_008
    tiny = ModelConfig(model_type="qwen2", vocab_size=40, hidden_size=16, intermediate_size=24,
                       num_layers=2, num_heads=4, num_kv_heads=2, head_dim=4,
                       attention_bias=True)
    params = nnx.state(LlamaModel(tiny, rngs=nnx.Rngs(0)), nnx.Param)
    assert memory_plan.parameter_count(tiny) == sum(x.size for x in jax.tree.leaves(params))


# A bias field, and the values it adds to each layer whole and on a model axis of 2:
# o_proj's (hidden_size, 16, held whole); gate's and up's (intermediate_size, 24 each,
# split with their products) and down's (16, whole).
BIAS_PARAMETERS = [("attention_out_bias", 16, 16), ("mlp_bias", 24 + 24 + 16, 12 + 12 + 16)]


@pytest.mark.parametrize("field, per_layer, per_layer_split", BIAS_PARAMETERS)
def test_biases_are_counted(field, per_layer, per_layer_split):
    common = dict(model_type="llama", vocab_size=40, hidden_size=16, intermediate_size=24,
                  num_layers=2, num_heads=4, num_kv_heads=2, head_dim=4)
    plain, biased = ModelConfig(**common), ModelConfig(**common, **{field: True})
    params = nnx.state(LlamaModel(biased, rngs=nnx.Rngs(0)), nnx.Param)
    assert memory_plan.parameter_count(biased) == sum(x.size for x in jax.tree.leaves(params))
    assert memory_plan.parameter_count(biased) == memory_plan.parameter_count(plain) + 2 * per_layer
    assert (memory_plan.parameter_count(biased, 2) - memory_plan.parameter_count(plain, 2)
            == 2 * per_layer_split)


def test_the_issue_s_smollm2_run_is_refused_with_the_largest_slots_that_fit():
    run = load_config(None, ["policy.source=smollm2-135m-instruct", "q_train.second_opinion=null",
                             "decode.slots=256",
                             "decode.max_len=768"])
    figures = memory_plan.plan(ModelConfig(**SMOLLM2_135M), run, memory_bytes=8 * 10**9,
                               backend="cpu")
    assert figures.kv_bytes_per_token == 2 * 30 * 3 * 64 * 4
    assert figures.slot_pool_bytes == 256 * 768 * 46080
    assert not figures.fits
    # The layers twice: the decoder's copy one array per layer (30 x 3,540,096).
    left = int(0.9 * 8e9) - (134_515_008 + 106_202_880) * 4
    assert figures.largest_slots == left // (768 * 46080) == 176
    assert figures.pages == left // (16 * 46080)
    assert figures.rows_at_max_len == figures.pages * 16 // 768


@pytest.mark.parametrize("mesh", [["mesh.data=2"], ["mesh.data=-1"]])
def test_a_mesh_splits_the_weights_over_model_and_the_cache_over_both_axes(mesh):
    """Llama-2-7B in float32 on 4 devices of 80 GB, mesh.model=2 (mesh.data=-1 takes the
    2 devices model leaves)."""
    run = load_config(None, ["decode.layer_weights=stacked", "q_train.second_opinion=null",
                             "decode.slots=64", "decode.max_len=1024", "mesh.model=2", *mesh])
    figures = memory_plan.plan(ModelConfig(**LLAMA2_7B), run, memory_bytes=80 * 10**9,
                               backend="gpu", devices=4)
    norms = (2 * 32 + 1) * 4096  # held whole on every device
    weights = (6_738_415_616 - norms) * 4 // 2 + norms * 4
    assert figures.model_bytes == {"policy": weights} and figures.weight_bytes == weights
    per_token = 2 * 32 * 32 * 128 * 4 // 2  # the KV heads split over model
    assert figures.kv_bytes_per_token == per_token == 2**19
    assert figures.slot_pool_bytes == 64 * 1024 * per_token // 2 == 2**34
    left = 72 * 10**9 - weights  # 58,522,636,288
    assert figures.pages == 2 * (left // (16 * per_token)) == 2 * 6976  # both data shards
    # Each data shard holds its share of the slots: twice the rows one device's memory holds.
    assert figures.largest_slots == 2 * left // (1024 * per_token) == 218


def test_heads_or_a_vocabulary_the_model_axis_does_not_divide_are_counted_whole():
    """SmolLM2-135M (9 heads, 3 kv heads, a 49,152 vocabulary, MLP 1,536) in float32 on
    mesh.model=2: ShardingRules replicates q, k, v, o and so the KV cache, and splits the
    embeddings and the MLP; on mesh.model=3 everything but the norms splits."""
    cfg = ModelConfig(**SMOLLM2_135M)
    e, layers = 576, 30
    attention = layers * 576 * 64 * 24  # q and o (9 heads), k and v (3), 64 wide
    mlp, embeddings, norms = layers * 3 * e * 1536, 49152 * e, (2 * layers + 1) * e
    assert attention + mlp + embeddings + norms == 134_515_008
    run = load_config(None, ["policy.source=smollm2-135m-instruct", "q_train.second_opinion=null",
                             "decode.layer_weights=stacked", "mesh.model=2"])
    figures = memory_plan.plan(cfg, run, memory_bytes=8 * 10**9, backend="gpu", devices=2)
    assert figures.kv_bytes_per_token == 2 * layers * 3 * 64 * 4  # no halving
    assert figures.weight_bytes == (attention + (mlp + embeddings) // 2 + norms) * 4
    thirds = memory_plan.plan(cfg, dataclasses.replace(run, mesh=dataclasses.replace(
        run.mesh, model=3)), memory_bytes=8 * 10**9, backend="gpu", devices=3)
    assert thirds.kv_bytes_per_token == 2 * layers * 3 * 64 * 4 // 3
    assert thirds.weight_bytes == ((attention + mlp + embeddings) // 3 + norms) * 4


@pytest.mark.parametrize("backend, layer_weights, copied", [
    ("gpu", "auto", True), ("cpu", "auto", True), ("tpu", "auto", False),
    ("gpu", "stacked", False), ("tpu", "per-layer", True), ("gpu", "per-layer-transposed", True),
    ("gpu", "per-layer-kernels", True)])
def test_the_decoders_per_layer_copy_is_counted_where_it_is_held(backend, layer_weights, copied):
    """decode.layer_weights (auto: per layer on CPU and GPU) holds the policy's layers a
    second time, not its embeddings; Q-hat's own backbone never decodes."""
    run = load_config(None, ["policy.source=smollm2-135m-instruct", "q_train.second_opinion=null",
                             f"decode.layer_weights={layer_weights}"])
    cfg = ModelConfig(**SMOLLM2_135M)
    figures = memory_plan.plan(cfg, run, memory_bytes=8 * 10**9, backend=backend,
                               others={"q_backbone": cfg})
    assert memory_plan.layer_parameter_count(cfg) == 30 * (576 * 64 * 24 + 3 * 576 * 1536
                                                           + 2 * 576)
    layers = 106_202_880 * 4 if copied else 0
    assert figures.model_bytes == {"policy": 134_515_008 * 4 + layers,
                                   "q_backbone": 134_515_008 * 4}


@pytest.mark.parametrize("layer_weights, copy", [
    # each layer on 3 devices: q, k, v, o, the MLP split three ways, the norms whole
    ("per-layer", 331_776 // 3 + 221_184 // 3 + 331_776 // 3 + 2_654_208 // 3 + 2 * 576),
    ("auto", 331_776 // 3 + 221_184 // 3 + 331_776 // 3 + 2_654_208 // 3 + 2 * 576),  # plain
    # q, k and v fused into rows whose output axis mixes three head layouts: held whole
    ("per-layer-transposed", 331_776 + 221_184 + 331_776 // 3 + 2_654_208 // 3 + 2 * 576)])
def test_a_mesh_splitting_the_heads_splits_the_copy_as_its_layout_allows(layer_weights, copy):
    """SmolLM2 (9 heads, 3 kv heads) on mesh.model=3, on a GPU: 'auto' keeps the plain
    copy there, and a forced transposed copy holds its fused q/k/v rows whole on every
    device (parallel._WEIGHT_AXES lists no axes for them)."""
    run = load_config(None, ["policy.source=smollm2-135m-instruct", "q_train.second_opinion=null",
                             "mesh.model=3", f"decode.layer_weights={layer_weights}"])
    cfg = ModelConfig(**SMOLLM2_135M)
    figures = memory_plan.plan(cfg, run, memory_bytes=8 * 10**9, backend="gpu", devices=3)
    assert figures.model_bytes["policy"] == (memory_plan.parameter_count(cfg, 3)
                                             + 30 * copy) * 4


def test_a_layout_the_mesh_cannot_hold_is_refused_as_run_refuses_it(capsys):
    assert memory_plan.main(["--memory", "80GB", "policy.source=smollm2-135m-instruct",
                             "q_train.second_opinion=null", "mesh.model=3",
                             "decode.layer_weights=per-layer-kernels"]) == 2
    assert capsys.readouterr().err == (
        "error: decode.layer_weights='per-layer-kernels' runs each layer's products as "
        "kernels over whole weights, and this mesh splits the attention heads over devices: "
        "use 'auto' or a mesh with model=1\n")


def test_a_run_without_evaluate_may_list_no_method():
    """eval.methods=[] with evaluate left out of stages (the config checks refuse it with
    evaluate) is sized, not a 'max() arg is an empty sequence' config error."""
    run = load_config(None, ["eval.methods=[]", "stages=[train_policy,collect]"])
    figures = memory_plan.check_memory(run)
    assert (figures.slots_per_search, figures.search_pages) == (1, 1)


def test_check_memory_refuses_before_a_stage_runs(monkeypatch):
    run = load_config(None, ["decode.slots=100000", "decode.max_len=1024"])
    monkeypatch.setattr(memory_plan, "available_memory", lambda: (10**9, "cpu"))
    with pytest.raises(ConfigError, match="^decode.slots=100000 x decode.max_len=1024 does "
                                          "not fit the free host memory: memory 1.0 GB .*largest "
                                          "decode.slots that fits: \\d+"):
        memory_plan.check_memory(run)
    assert memory_plan.check_memory(load_config(None, ["decode.slots=8"])).fits


def test_weights_that_alone_do_not_fit_are_named_as_what_does_not_fit(monkeypatch, capsys):
    """gsm8k_llama2_7b's policy and PRM (27.96 GB in bfloat16) on a 16 GB device: the
    refusal blamed the cache and printed 0 pages without saying why."""
    models = [f"--model-config={ARCHITECTURES}/llama-2-7b.json",
              f"--prm-config={ARCHITECTURES}/mistral-7b-v0.1.json"]
    code = memory_plan.main(["configs/gsm8k_llama2_7b.yaml", "--memory", "16GB", *models])
    described, figures = capsys.readouterr().out.splitlines()
    advice = ("; the weights alone do not fit: split them over devices with mesh.model, or "
              "use a device with more memory")
    assert code == 1 and json.loads(figures)["pages"] == 0 and described.endswith(advice)
    run = load_config(None, ["decode.slots=8"])
    assert advice not in memory_plan.plan(architectures.policy_architecture(run), run,
                                          memory_bytes=10**9, backend="cpu").describe()
    monkeypatch.setattr(memory_plan, "available_memory", lambda: (10**6, "gpu"))
    with pytest.raises(ConfigError) as refusal:
        memory_plan.check_memory(run)
    message = str(refusal.value)
    assert message.startswith("the models' weights alone do not fit the device memory: ")
    assert message.endswith(advice)


def test_command_sizes_a_7b_config_from_its_config_json(tmp_path, capsys):
    hf = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
          "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
          "num_key_value_heads": 32}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    code = memory_plan.main(["configs/gsm8k_llama2_7b.yaml", "--memory", "80GB",
                             "--model-config", str(tmp_path / "config.json"),
                             "--prm-config", f"{ARCHITECTURES}/mistral-7b-v0.1.json"])
    figures = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert figures["model_bytes"]["policy"] == 6_738_415_616 * 2
    assert figures["kv_bytes_per_token"] == 2 * 32 * 32 * 128 * 2
    assert code == (0 if figures["fits"] else 1)
    with pytest.raises(ValueError, match="give a number"):
        memory_plan.parse_memory("80 parsecs")


def test_memory_units_are_decimal_or_binary_as_written():
    assert memory_plan.parse_memory("1GiB") == 2**30
    assert memory_plan.parse_memory("141 GiB") == 141 * 2**30
    assert memory_plan.parse_memory("1GB") == 10**9
    assert memory_plan.parse_memory("80gb") == 80 * 10**9
    assert memory_plan.parse_memory("2MiB") == 2 * 2**20
    assert memory_plan.parse_memory("2e9") == 2 * 10**9
    assert memory_plan.parse_memory("10B") == memory_plan.parse_memory(" 10 ") == 10
    assert memory_plan.parse_memory("1.5 GB") == 1_500_000_000
    assert memory_plan.parse_memory("3 kib") == 3 * 1024
    assert memory_plan.parse_memory("2TiB") == 2 * 2**40
    assert memory_plan.parse_memory("2 TB") == 2 * 10**12
    assert memory_plan.parse_memory("5MB") == 5 * 10**6
    for text in ("80 GiBs", "GB", "1 GB 2", "eGB", "1.2.3 GB"):
        with pytest.raises(ValueError, match=f"memory '{text}': give a number"):
            memory_plan.parse_memory(text)
    for text in ("0", "0GB", "0.1 B"):  # a plan of nothing would print zeros and exit 1
        with pytest.raises(ValueError, match=f"memory '{text}': must be at least one byte"):
            memory_plan.parse_memory(text)


def test_a_checkpoint_not_on_this_machine_asks_for_its_config_json(capsys):
    code = memory_plan.main(["configs/gsm8k_llama2_7b.yaml", "--memory", "80GB"])
    assert code == 2
    assert capsys.readouterr().err.endswith(
        "checkpoints/MetaMath-7B-V1.0 is not on this machine: give its HF config.json with "
        "--model-config to size the run without it; configs/architectures/ holds the paper "
        "models': codeqwen1.5-7b.json, deepseek-math-7b.json, llama-2-7b.json, "
        "mistral-7b-v0.1.json\n")


def test_a_model_config_that_cannot_be_read_is_one_line(tmp_path, capsys):
    shapeless = tmp_path / "config.json"
    shapeless.write_text('{"model_type": "llama", "vocab_size": 64, "hidden_size": 8, '
                         '"intermediate_size": 16, "num_hidden_layers": 1}')
    for model_config, message in [
            (tmp_path / "none.json", f"cannot read {tmp_path}/none.json: [Errno 2] No such "
                                     f"file or directory: '{tmp_path}/none.json'"),
            (shapeless, f"--model-config {shapeless}: lacks ['num_attention_heads'], which a "
                        "llama config.json holds; is it the checkpoint's own config.json?")]:
        code = memory_plan.main(["configs/gsm8k_llama2_7b.yaml", "--memory", "80GB",
                                 "--model-config", str(model_config)])
        assert (code, capsys.readouterr().err) == (2, f"error: {message}\n")


def test_overrides_may_follow_the_options(capsys):
    _, figures = plan_json(capsys, "decode.slots=8", "--memory", "2GB", "decode.max_len=64")
    assert figures["slot_pool_bytes"] == 8 * 64 * figures["kv_bytes_per_token"]


def plan_json(capsys, *argv) -> tuple[int, dict]:
    code = memory_plan.main(list(argv))
    return code, json.loads(capsys.readouterr().out.splitlines()[-1])


def test_the_prm_s_weights_are_counted_beside_the_policy_s(tmp_path, capsys):
    mistral = json.loads(Path(f"{ARCHITECTURES}/mistral-7b-v0.1.json").read_text())
    assert memory_plan.parameter_count(ModelConfig.from_hf(mistral)) == MISTRAL_7B_PARAMETERS
    code, figures = plan_json(capsys, "configs/gsm8k_llama2_7b.yaml", "--memory", "80GB",
                              "--model-config", f"{ARCHITECTURES}/llama-2-7b.json",
                              "--prm-config", f"{ARCHITECTURES}/mistral-7b-v0.1.json")
    assert figures["model_bytes"] == {"policy": 6_738_415_616 * 2,
                                      "prm": MISTRAL_7B_PARAMETERS * 2}
    assert figures["weight_bytes"] == (6_738_415_616 + MISTRAL_7B_PARAMETERS) * 2
    assert figures["pages"] == (int(0.9 * 80e9) - figures["weight_bytes"]) // (16 * 524288)
    # A PRM checkpoint on this machine is read from its config.json; run's check counts it.
    (tmp_path / "config.json").write_text(json.dumps(mistral))
    run = load_config("configs/gsm8k_llama2_7b.yaml", [f"search.prm_model={tmp_path}"])
    assert architectures.evaluate_models(run)["prm"] == ModelConfig.from_hf(mistral)
    # Nor where no method reads its rewards (greedy and self-consistency ignore g).
    unread = load_config("configs/gsm8k_llama2_7b.yaml", [f"search.prm_model={tmp_path}",
                                                          "eval.methods=[greedy]"])
    assert architectures.evaluate_models(unread) == {}
    # Nothing but evaluate loads it.
    no_eval = load_config("configs/gsm8k_llama2_7b.yaml", ["stages=[collect,label]"])
    assert architectures.evaluate_models(no_eval) == {}


def test_check_memory_counts_the_prm(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(
        Path(f"{ARCHITECTURES}/mistral-7b-v0.1.json").read_text())
    run = load_config(None, ["decode.slots=8", "search.utility=prm",
                             f"search.prm_model={tmp_path}"])
    monkeypatch.setattr(memory_plan, "available_memory", lambda: (10**12, "gpu"))
    assert memory_plan.check_memory(run).model_bytes["prm"] == MISTRAL_7B_PARAMETERS * 4
    monkeypatch.setattr(memory_plan, "available_memory", lambda: (2 * 10**10, "gpu"))
    with pytest.raises(ConfigError, match=r"weights alone do not fit the device memory.*"
                                          r"prm 28\.97"):
        memory_plan.check_memory(run)


def test_a_prm_or_q_model_not_on_this_machine_asks_for_its_config_json(capsys):
    llama = f"--model-config={ARCHITECTURES}/llama-2-7b.json"
    assert memory_plan.main(["configs/gsm8k_llama2_7b.yaml", "--memory", "80GB", llama]) == 2
    assert ("search.prm_model checkpoints/math-shepherd-mistral-7b-prm is not on this "
            "machine: give its HF config.json with --prm-config") in capsys.readouterr().err
    separate = ["configs/math_deepseek_math_7b.yaml", "q_train.backbone=separate",
                "q_train.separate_model=checkpoints/absent", "--memory", "80GB",
                f"--model-config={ARCHITECTURES}/deepseek-math-7b.json"]
    assert memory_plan.main(separate) == 2
    assert "q_train.separate_model checkpoints/absent is not on this machine: give its HF " \
           "config.json with --q-config" in capsys.readouterr().err
    _, figures = plan_json(capsys, *separate, f"--q-config={ARCHITECTURES}/llama-2-7b.json")
    assert figures["model_bytes"]["q_backbone"] == 6_738_415_616 * 2


SMALL_SEARCH = ["policy.source=smollm2-135m-instruct", "q_train.second_opinion=null",
                "eval.methods=[greedy,best_of_n,qstar]", "decode.max_len=256",
                "decode.step_token_cap=20", "decode.max_steps=4", "decode.page_size=16",
                "decode.pages=100", "search.k=3", "search.max_expansions=5", "eval.samples=4"]


def test_searches_in_flight_by_hand():
    def figures(*overrides):
        return memory_plan.plan(ModelConfig(**SMOLLM2_135M),
                                load_config(None, [*SMALL_SEARCH, *overrides]),
                                memory_bytes=2 * 10**9, backend="gpu", prompt_tokens=50)

    prompt = math.ceil(50 / 16)  # 4 pages, shared by the whole tree
    lent = math.ceil(20 / 16)  # 2 pages a sampler row
    # A step holds up to 21 tokens: 20 sampled and the line break after a cut one.
    qstar = prompt + math.ceil(5 * 3 * 21 / 16) + 5 * 3 + 3 * lent  # 4 + 20 + 15 + 6
    path = min(4 * 21, 256 - 50)  # a chain's tokens: 84
    best_of_n = prompt + math.ceil(4 * path / 16) + 4 + 4 * lent  # 4 + 21 + 4 + 8
    greedy = prompt + math.ceil(path / 16) + 1 + lent
    assert (qstar, best_of_n, greedy) == (45, 37, 13)
    small = figures()
    assert small.search_pages == 45  # the largest of the three
    assert small.searches_in_flight == small.pages // 45 > 0
    assert small.pool_searches == 100 // 45 == 2
    assert small.slots_per_search == 3 * 5 + 1  # A*'s frontier: K per expansion, and one
    # Eight chains outgrow the tree: 4 + 42 + 8 + 16 pages.
    assert figures("eval.samples=8").search_pages == 70


def small_search_pages(*overrides) -> int:
    return memory_plan.search_pages(load_config(None, [*SMALL_SEARCH, *overrides]),
                                    page_size=16, prompt_tokens=50)


def test_each_method_s_peak_pages_by_hand():
    """SMALL_SEARCH with a 50-token prompt: 4 prompt pages, 2 pages lent a sampler row
    (a 20-token cap), steps of up to 21 tokens (a cut one holds the line break written
    after it), an 84-token path (4 steps of 21)."""
    # greedy: 4 + ceil(84 / 16) + 1 leaf + 1 row x 2.
    assert small_search_pages("eval.methods=[greedy]") == 4 + 6 + 1 + 2
    # beam, 2 beams of 3 children: 2 x 84 path tokens and 6 x 21 child tokens, 2 + 6 leaves,
    # 6 rows: 4 + ceil(294 / 16) + 8 + 6 x 2.
    assert small_search_pages("eval.methods=[beam]", "eval.beam_width=2",
                              "eval.beam_k=3") == 4 + 19 + 8 + 12
    # qstar, 10 expansions allowed but a 21-token budget ends the search after
    # 21 // 3 + 1 = 8 of them: 8 x 3 x 21 tokens, 24 leaves, 3 rows.
    assert small_search_pages("eval.methods=[qstar]", "search.max_expansions=10",
                              "search.max_generated_tokens=21") == 4 + 32 + 24 + 6
    assert small_search_pages("eval.methods=[qstar]", "search.max_expansions=10") == \
        4 + 40 + 30 + 6  # no budget: all 10 expansions, ceil(630 / 16) pages
    # mctsr holds score_samples + 1 + text_kept_rows = 3 + 1 + 4 slots, each a full
    # 256-token row of 16 pages.
    assert small_search_pages("eval.methods=[mctsr]", "eval.mctsr.score_samples=3",
                              "eval.text_kept_rows=4") == 8 * 16


def test_the_default_prompt_leaves_a_short_row_room_for_one_step():
    plan = memory_plan.plan(ModelConfig(**SMOLLM2_135M), load_config(None, SMALL_SEARCH),
                            memory_bytes=2 * 10**9, backend="gpu")
    assert plan.prompt_tokens == 256 - 20  # max_len less a step, under the default 768
    long_rows = load_config(None, [*SMALL_SEARCH, "decode.max_len=2048", "decode.pages=128"])
    assert memory_plan.default_prompt_tokens(long_rows) == memory_plan.DEFAULT_PROMPT_TOKENS


@pytest.mark.parametrize("argv, message", [
    (["--memory", "80XB"], "argument --memory: memory '80XB': give a number with one of"),
    (["--memory", "1GB", "--page-size", "0"], "argument --page-size: must be a whole number "
                                              ">= 1, got '0'"),
    (["--memory", "1GB", "--prompt-tokens", "-5"], "argument --prompt-tokens: must be"),
    (["--memory", "1GB", "--devices", "0"], "argument --devices: must be a whole number"),
])
def test_bad_arguments_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        memory_plan.main(["decode.slots=8", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_page_size_or_devices_run_would_refuse_are_refused_as_run_refuses_them(capsys):
    # Each was planned and said to fit; run refuses the page size in its config checks and
    # the slots or pages that do not split over the data shards when it builds its mesh.
    assert memory_plan.main([*SMALL_SEARCH, "--memory", "2GB", "--page-size", "5"]) == 2
    assert capsys.readouterr().err == ("error: --page-size 5: decode.max_len=256 must be a "
                                       "multiple of it, as run requires of decode.page_size\n")
    assert memory_plan.main([*SMALL_SEARCH, "--memory", "2GB", "--devices", "3",
                             "decode.slots=8"]) == 2
    assert capsys.readouterr().err == ("error: decode.slots=8 does not split over the 3 data "
                                       "shards; make it a multiple of 3\n")
    assert memory_plan.main([*SMALL_SEARCH, "--memory", "2GB", "--devices", "3",
                             "decode.slots=9", "decode.page_size=16", "decode.pages=100"]) == 2
    assert capsys.readouterr().err == ("error: decode.pages: 100 pages do not split over the 3 "
                                       "data shards; make it a multiple of 3\n")


def test_a_prompt_longer_than_a_row_is_refused(capsys):
    code = memory_plan.main([*SMALL_SEARCH, "--memory", "2GB", "--prompt-tokens", "256"])
    assert code == 2
    assert "--prompt-tokens 256 leaves no room in a row of decode.max_len=256" \
        in capsys.readouterr().err


PAPER_7B = {  # config: (policy, PRM) architecture files
    "gsm8k_llama2_7b": ("llama-2-7b", "mistral-7b-v0.1"),
    "gsm_symbolic_llama2_7b": ("llama-2-7b", "mistral-7b-v0.1"),
    "math_deepseek_math_7b": ("deepseek-math-7b", None),
    "humaneval_codeqwen1.5_7b": ("codeqwen1.5-7b", None),
    "mbpp_codeqwen1.5_7b": ("codeqwen1.5-7b", None),
}


@pytest.mark.parametrize("name", sorted(PAPER_7B))
def test_the_paper_configs_fit_one_80_gb_and_one_141_gb_gpu(name, capsys):
    """Each 7B config as shipped fits 80 GB by the plan, with many problems in flight, and
    so do the 141 GB overrides its comment gives."""
    path = f"configs/{name}.yaml"
    policy, prm = PAPER_7B[name]
    models = [f"--model-config={ARCHITECTURES}/{policy}.json"]
    models += [f"--prm-config={ARCHITECTURES}/{prm}.json"] if prm else []
    text = Path(path).read_text()
    assert f"python -m qstar_jax.memory_plan {path} --memory 80GB" in text
    assert all(m.split("=")[1] in text for m in models)
    big = re.search(r"#\s+(decode\.pages=\d+ decode\.slots=\d+ eval\.problems_per_batch=\d+)\n",
                    text).group(1).split()
    for memory, overrides in (("80GB", []), ("141GB", big)):
        run = load_config(path, overrides)
        code, figures = plan_json(capsys, path, *overrides, "--memory", memory, *models)
        assert code == 0 and figures["fits"]
        assert run.decode.page_size == 16 and run.decode.pages <= figures["pages"]
        assert 1 < run.eval.problems_per_batch <= figures["pool_searches"]
        assert run.decode.slots >= run.eval.problems_per_batch * figures["slots_per_search"]
        assert ("prm" in figures["model_bytes"]) == bool(prm)


def test_a_paged_cache_that_does_not_fit_is_refused_by_its_pages(monkeypatch):
    """The default run (its policy and second opinion from scratch: 3 layers of 96, 1152 KV
    bytes a token, 634,080 float32 parameters each with the decoder's layer copy) on two
    devices of 30 MB: the pool of 3000 pages of 16 tokens splits over mesh.data=-1's 2.
    Greedy decodes the second policy too, in a cache of its own: a batch of 100 problems'
    2 rows each, 200 rows of 160 tokens, half on each device."""
    run = load_config(None, ["decode.page_size=16", "decode.pages=3000", "decode.slots=8"])
    monkeypatch.setattr(memory_plan, "available_memory", lambda: (3 * 10**7, "gpu"))
    monkeypatch.setattr(jax, "device_count", lambda: 2)
    second = 200 * 160 * 1152 // 2  # 18,432,000
    left = 27 * 10**6 - 2 * 634_080 * 4 - second  # 3,495,360
    assert (left // (16 * 1152), left // (16 * 1152) * 16 // 160) == (189, 18)
    # Each shard's pages and rows, times the 2 shards (settings that split over them); on
    # pages, decode.slots is no setting to lower, so no largest one is named.
    message = ("decode.pages=3000 x decode.page_size=16 does not fit the device memory: "
               "memory 0.0 GB (using 90%): weights 0.01 GB (policy 0.00, second_opinion 0.00), "
               "KV 1.2 KB per token, the config's cache 0.03 GB, the second policy's greedy "
               "cache 0.02 GB; a paged cache gets 378 pages of 16 tokens = 36 rows at full "
               "max_len; a search (prompt 120 tokens) peaks at 1394 pages and holds up to 385 "
               "slots: searches_in_flight 0; the config's pages hold 2 searches")
    with pytest.raises(ConfigError) as refusal:
        memory_plan.check_memory(run)
    assert str(refusal.value) == message
    figures = memory_plan.plan(architectures.policy_architecture(run), run,
                               memory_bytes=3 * 10**7, backend="gpu", devices=2,
                               others=architectures.evaluate_models(run))
    assert figures.slot_pool_bytes == 3000 * 16 * 1152 // 2  # the pages, not 8 slots' rows
    assert figures.second_cache_bytes == second


def test_on_a_data_mesh_the_largest_pages_and_slots_of_a_plan_are_what_run_accepts(
        monkeypatch):
    """Two devices of 30 MB, mesh.data=-1's 2 shards, greedy alone: the plan's pages and
    slots count both shards' pools, split evenly over them, so run's checks accept them
    and refuse one more of each per shard; the searches the plan says those pages hold
    are what the config's own pages then hold."""
    monkeypatch.setattr(memory_plan, "available_memory", lambda: (3 * 10**7, "gpu"))
    monkeypatch.setattr(jax, "device_count", lambda: 2)
    greedy = ["eval.methods=[greedy]", "decode.slots=8"]
    run = load_config(None, greedy)
    figures = memory_plan.plan(architectures.policy_architecture(run), run,
                               memory_bytes=3 * 10**7, backend="gpu", devices=2,
                               others=architectures.evaluate_models(run))
    pages, slots = figures.pages, figures.largest_slots
    assert pages % 2 == slots % 2 == 0 and figures.searches_in_flight > 0
    assert figures.searches_in_flight == 2 * (pages // 2 // figures.search_pages)
    for pages, fits in ((pages, True), (pages + 2, False)):
        run = load_config(None, [*greedy, "decode.page_size=16", f"decode.pages={pages}"])
        if fits:
            assert memory_plan.check_memory(run).pool_searches == figures.searches_in_flight
        else:
            with pytest.raises(ConfigError, match="does not fit"):
                memory_plan.check_memory(run)
    assert memory_plan.check_memory(load_config(None, [f"decode.slots={slots}"])).fits
    with pytest.raises(ConfigError, match="does not fit"):
        memory_plan.check_memory(load_config(None, [f"decode.slots={slots + 2}"]))


def test_the_second_opinion_is_counted_where_q_hat_or_greedy_reads_it(tmp_path):
    default = load_config()
    scratch = architectures.policy_architecture(default)  # the second policy has its shape
    assert architectures.evaluate_models(default) == {"second_opinion": scratch}
    figures = memory_plan.plan(scratch, default, memory_bytes=10**9, backend="gpu",
                               others=architectures.evaluate_models(default))
    # Both decode, so both hold their layers twice: (329,376 + 304,704) x 4 bytes.
    assert figures.model_bytes == {"policy": 2_536_320, "second_opinion": 2_536_320}
    for methods, counted in (("[greedy]", True), ("[self_consistency,tot_bfs]", True),
                             ("[self_consistency,mctsr]", False)):
        run = load_config(None, [f"eval.methods={methods}"])
        assert ("second_opinion" in architectures.evaluate_models(run)) == counted, methods
    assert architectures.evaluate_models(load_config(None, ["q_train.second_opinion=null"])) == {}
    llama = f"{ARCHITECTURES}/llama-2-7b.json"
    from_file = ModelConfig.from_hf(json.loads(Path(llama).read_text()))
    assert architectures.evaluate_models(default, q_config=llama) == {"second_opinion": from_file}
    (tmp_path / "config.json").write_text(Path(llama).read_text())
    named = load_config(None, [f"q_train.second_opinion={tmp_path}"])
    assert architectures.evaluate_models(named) == {"second_opinion": from_file}


def test_a_learned_prm_is_not_counted_unless_given_a_config(tmp_path):
    (tmp_path / "prm.json").write_text("{}")  # train_prm's marker: a head on the policy
    run = load_config(None, ["search.utility=prm", f"search.prm_model={tmp_path}",
                             "q_train.second_opinion=null"])
    assert architectures.evaluate_models(run) == {}
    mistral = f"{ARCHITECTURES}/mistral-7b-v0.1.json"
    assert architectures.evaluate_models(run, prm_config=mistral) == {
        "prm": ModelConfig.from_hf(json.loads(Path(mistral).read_text()))}


def test_the_command_passes_its_page_size_prompt_backend_and_devices_to_the_plan(
        tmp_path, capsys):
    """SMALL_SEARCH at --page-size 32 and a 50-token prompt: qstar peaks at 2 prompt pages
    + ceil(300 / 32) + 15 leaves + 3 rows x 1 = 30 pages (best_of_n 20, greedy 7); on a
    TPU the decoder keeps no per-layer copy. (SmolLM2's shape from its config.json: the
    GGUF's metadata takes seconds to read.)"""
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "tie_word_embeddings": True}))
    smollm2 = ["--model-config", str(tmp_path / "config.json")]
    code, figures = plan_json(capsys, *SMALL_SEARCH, *smollm2, "--memory", "2GB",
                              "--page-size", "32", "--prompt-tokens", "50", "--backend", "tpu")
    assert code == 0 and figures["fits"]
    assert (figures["page_size"], figures["prompt_tokens"], figures["search_pages"]) == (
        32, 50, 2 + 10 + 15 + 3)
    assert figures["model_bytes"] == {"policy": 134_515_008 * 4}
    assert figures["pages"] == (int(0.9 * 2e9) - 134_515_008 * 4) // (32 * 46080)
    _, on_gpu = plan_json(capsys, *SMALL_SEARCH, *smollm2, "--memory", "2GB")  # default: gpu
    assert on_gpu["model_bytes"] == {"policy": (134_515_008 + 106_202_880) * 4}
    assert (on_gpu["page_size"], on_gpu["prompt_tokens"]) == (16, 256 - 20)
    # The config's own 100 pages are of decode.page_size 16, where qstar peaks at 44.
    assert figures["pool_searches"] == 100 // 44 == 2
    # 500 MB hold no SmolLM2 in float32 (538 MB): the command says so and exits 1.
    code, small = plan_json(capsys, *SMALL_SEARCH, *smollm2, "--memory", "500MB",
                            "--backend", "tpu")
    assert (code, small["fits"], small["pages"], small["largest_slots"]) == (1, False, 0, 0)
    # mesh.data=-1 on --devices 4 of mesh.model=2: 2 data shards, as run's check counts.
    _, meshed = plan_json(capsys, *SMALL_SEARCH, *smollm2, "--memory", "2GB", "--backend",
                          "tpu", "--page-size", "32", "--devices", "4", "mesh.model=2")
    per_shard = (int(0.9 * 2e9) - meshed["weight_bytes"]) // (32 * 46080)  # 3 kv heads whole
    assert meshed["pages"] == 2 * per_shard
    # A mesh the devices cannot form is refused as run refuses it.
    assert memory_plan.main([*SMALL_SEARCH, *smollm2, "--memory", "2GB", "--devices", "2",
                             "mesh.data=4"]) == 2
    assert capsys.readouterr().err == ("error: mesh data=4 x model=1 needs 4 devices, but "
                                       "there are 2; set mesh.data=-1 to use every device\n")


def test_a_plan_fits_at_exactly_its_share_of_the_memory():
    figures = memory_plan.plan(ModelConfig(**SMOLLM2_135M), load_config(None, SMALL_SEARCH),
                               memory_bytes=2 * 10**9, backend="gpu")
    at_90 = dataclasses.replace(figures, memory_bytes=10**10, weight_bytes=8 * 10**9,
                                slot_pool_bytes=10**9)
    assert at_90.fits
    assert not dataclasses.replace(at_90, slot_pool_bytes=10**9 + 1).fits


def test_a_given_policy_config_json_sizes_even_a_policy_from_scratch():
    llama = f"{ARCHITECTURES}/llama-2-7b.json"
    assert architectures.policy_architecture(load_config(), llama) == ModelConfig.from_hf(
        json.loads(Path(llama).read_text()))


def test_q_hats_own_backbone_is_counted_only_where_a_method_reads_q_hat():
    separate = ["q_train.backbone=separate", "q_train.separate_model=/no/such/model",
                "q_train.second_opinion=null"]
    unread = load_config(None, [*separate, "eval.methods=[greedy,self_consistency,mctsr]"])
    assert architectures.evaluate_models(unread) == {}  # not even its config.json is asked for
    llama = f"{ARCHITECTURES}/llama-2-7b.json"
    read = load_config(None, [*separate, "eval.methods=[greedy,beam]"])
    assert architectures.evaluate_models(read, q_config=llama) == {
        "q_backbone": ModelConfig.from_hf(json.loads(Path(llama).read_text()))}


@pytest.fixture
def host_memory(tmp_path, monkeypatch):
    """/proc/meminfo and the cgroup's memory.max as files the test writes."""
    files = {"/proc/meminfo": tmp_path / "meminfo",
             "/sys/fs/cgroup/memory.max": tmp_path / "memory.max"}
    monkeypatch.setattr(memory_plan, "Path", lambda path: files[path])
    files["/proc/meminfo"].write_text("MemTotal:  9000 kB\nMemFree:  1000 kB\n"
                                      "MemAvailable:    2048 kB\n")
    return files


def test_available_memory_is_the_devices_limit_or_the_hosts_available_memory(
        host_memory, monkeypatch):
    def devices(platform, stats):
        return lambda: [SimpleNamespace(platform=platform, memory_stats=lambda: stats)]

    monkeypatch.setattr(jax, "local_devices", devices("gpu", {"bytes_limit": 8 * 10**10,
                                                              "bytes_in_use": 10**9}))
    assert memory_plan.available_memory() == (8 * 10**10, "gpu")
    monkeypatch.setattr(jax, "local_devices", devices("gpu", None))  # no stats: the host's
    assert memory_plan.available_memory() == (2048 * 1024, "cpu")
    monkeypatch.setattr(jax, "local_devices", devices("cpu", None))
    host_memory["/sys/fs/cgroup/memory.max"].write_text("max\n")  # no cgroup limit
    assert memory_plan.available_memory() == (2048 * 1024, "cpu")
    host_memory["/sys/fs/cgroup/memory.max"].write_text("1000000\n")  # the cgroup's is lower
    assert memory_plan.available_memory() == (1_000_000, "cpu")


def test_a_max_len_past_the_checkpoint_s_context_is_warned_of(tmp_path, capsys):
    hf = json.loads(Path(f"{ARCHITECTURES}/llama-2-7b.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, "max_position_embeddings": 1024}))
    run = load_config("configs/gsm8k_llama2_7b.yaml", [f"policy.source={tmp_path}"])
    assert architectures.context_warning(run, architectures.policy_architecture(run)) == (
        f"warning: decode.max_len=1536 is past the 1024 positions the policy ({tmp_path}) was "
        "trained for (max_position_embeddings, or its RoPE scaling's reach): tokens past them "
        "sit where the model was not trained; set decode.max_len to at most 1024")
    memory_plan.main(["configs/gsm8k_llama2_7b.yaml", "--memory", "80GB",
                      "--model-config", str(tmp_path / "config.json"),
                      "--prm-config", f"{ARCHITECTURES}/mistral-7b-v0.1.json"])
    assert capsys.readouterr().err.startswith("warning: decode.max_len=1536 is past")
    within = load_config("configs/gsm8k_llama2_7b.yaml", [f"policy.source={tmp_path}",
                                                            "decode.max_len=1024"])
    assert architectures.context_warning(within, architectures.policy_architecture(within)) is None
    yarn = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 1024}
    (tmp_path / "config.json").write_text(json.dumps({**hf, "max_position_embeddings": 1024,
                                                      "rope_scaling": yarn}))
    assert architectures.context_warning(run, architectures.policy_architecture(run)) is None
    scratch = load_config(None, ["decode.max_len=8192"])  # trained at decode.max_len
    scratch_policy = architectures.policy_architecture(scratch)
    assert architectures.context_warning(scratch, scratch_policy) is None
