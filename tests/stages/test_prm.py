"""The learned PRM: trained, saved, restored to the same scores; told apart from a
Math-Shepherd checkpoint by what its directory holds."""

import dataclasses
import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from flax import nnx

from qstar_jax.config import ConfigError
from qstar_jax.config_loading import load_config
from qstar_jax.outputs import durable
from qstar_jax.qvalue.checkpoint import BackboneIdentity, BackboneMismatchError
from qstar_jax.qvalue.dataset import labelled, save_labelled, step_pairs
from qstar_jax.qvalue.head import QHead, QHeadConfig, QHeadModel
from qstar_jax.qvalue.rollouts import ProblemRollouts, Rollout
from qstar_jax.qvalue.scorers import PolicyHiddenPRM
from qstar_jax.qvalue.train import TrainConfig
from qstar_jax.search.interface import QItem
from qstar_jax.stages import prm as prm_stage
from qstar_jax.stages import rollouts
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.prm import (LEARNED_PRM_MARKER, load_learned_prm, load_prm, prm_kind,
                                  train_prm, train_learned_prm)
from qstar_jax.stages.train_q import train_config
from tests.decoding.tiny_models import tiny_config
from tests.stages.test_rollout_stages import no_features, one_problem_run

POLICY = tiny_config(64)  # hidden size 32


def _items(hiddens):
    return [QItem(problem_index=0, prefix_steps=(), step_text=str(k), hidden=h)
            for k, h in enumerate(hiddens)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("prm")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, POLICY.hidden_size)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.float32) * 0.75  # soft labels
    head = QHead(QHeadConfig(hidden_size=POLICY.hidden_size, mlp_widths=(16,)),
                 rngs=nnx.Rngs(0))
    settings = TrainConfig(loss="bce", learning_rate=1e-2, max_steps=30, batch_size=16,
                           heldout_fraction=0.25, eval_every=5, checkpoint_every=5)
    result = train_learned_prm(head, features, labels, settings, directory,
                               BackboneIdentity.of_policy(POLICY))
    (directory / LEARNED_PRM_MARKER).write_text(json.dumps({"labels": "soft"}))
    return directory, head, result


def test_the_prm_trains_under_a_progress_bar_of_its_own_name(tmp_path, capsys):
    head = QHead(QHeadConfig(hidden_size=POLICY.hidden_size, mlp_widths=()), rngs=nnx.Rngs(0))
    settings = TrainConfig(loss="bce", max_steps=2, batch_size=4, heldout_fraction=0.0)
    train_learned_prm(head, np.zeros((8, POLICY.hidden_size), np.float32),
                      np.ones(8, np.float32), settings, tmp_path,
                      BackboneIdentity.of_policy(POLICY))
    bar = capsys.readouterr().err
    assert "PRM training" in bar and "Q̂ training" not in bar


def test_restored_prm_scores_exactly_what_the_trained_one_did(trained):
    directory, head, result = trained
    assert result.steps > 0
    hiddens = np.random.default_rng(1).normal(size=(7, POLICY.hidden_size)).astype(np.float32)
    before = PolicyHiddenPRM(QHeadModel(head)).score_steps(_items(hiddens))
    after = load_learned_prm(directory, policy_config=POLICY).score_steps(_items(hiddens))
    np.testing.assert_array_equal(after, before)
    assert np.all((after > 0) & (after < 1)) and np.ptp(after) > 0


def test_a_prm_of_another_policy_or_without_hidden_states_is_refused(trained):
    directory, head, _ = trained
    with pytest.raises(BackboneMismatchError, match="policy_features"):
        load_learned_prm(directory, policy_config=tiny_config(32))
    with pytest.raises(ValueError, match="hidden state"):
        PolicyHiddenPRM(QHeadModel(head)).score_steps(_items([None]))


def test_prm_kind_reads_what_the_directory_holds(trained, tmp_path):
    directory, _, _ = trained
    assert prm_kind(str(directory)) == "learned"
    hf = tmp_path / "shepherd"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert prm_kind(str(hf)) == "shepherd"
    assert prm_kind("smollm2-135m-instruct") == "shepherd"
    (tmp_path / "shepherd.gguf").write_bytes(b"GGUF")
    assert prm_kind(str(tmp_path / "shepherd.gguf")) == "shepherd"
    (tmp_path / "shepherd.bin").write_bytes(b"")
    (tmp_path / "folder.gguf").mkdir()
    for neither in ("shepherd.bin", "folder.gguf"):
        with pytest.raises(ConfigError, match="neither a PRM the train_prm stage wrote"):
            prm_kind(str(tmp_path / neither))
    with pytest.raises(ConfigError, match="neither a PRM the train_prm stage wrote"):
        prm_kind(str(tmp_path))


def test_search_loads_the_learned_prm_it_is_pointed_at_or_this_runs_own(trained, tmp_path):
    directory, head, _ = trained
    hiddens = np.random.default_rng(2).normal(size=(3, POLICY.hidden_size)).astype(np.float32)
    expected = PolicyHiddenPRM(QHeadModel(head)).score_steps(_items(hiddens))

    def loaded(out, *overrides):
        config = load_config(None, ["search.utility=prm", "stages=[train_prm,evaluate]",
                                    *overrides])
        ctx = SimpleNamespace(config=config, out=out, mesh=None,
                              policy=SimpleNamespace(config=POLICY))
        return load_prm(ctx, problems=[])

    named = loaded(tmp_path, f"search.prm_model={directory}")
    np.testing.assert_array_equal(named.score_steps(_items(hiddens)), expected)
    with pytest.raises(ConfigError, match=r"holds none; list train_prm in stages before"):
        loaded(tmp_path)  # no search.prm_model, and this run wrote no PRM
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "prm").symlink_to(directory)  # a run whose train_prm wrote prm/
    own = loaded(tmp_path / "run")
    np.testing.assert_array_equal(own.score_steps(_items(hiddens)), expected)


def _rollouts(path, *traces):
    records = [ProblemRollouts(problem_index=0, temperature=1.0, rollouts=tuple(
        Rollout(steps=steps, reward=1.0) for steps in traces))]
    path.unlink(missing_ok=True)
    with durable.open_for_append(path) as f:
        durable.append_records(f, [r.to_json() for r in records])
    return records


def test_train_prm_refuses_labels_that_are_not_the_rollouts_before_loading_a_model(tmp_path):
    ctx = RunContext(config=load_config(None), out=tmp_path)
    steps = labelled(step_pairs(_rollouts(ctx.rollouts_path, ("a", "b"))), [1.0, 0.0])
    save_labelled(ctx.labels_path, steps, features=np.zeros((2, 4), np.float32))
    _rollouts(ctx.rollouts_path, ("a", "c"))  # collected again after the labels
    with pytest.raises(ValueError, match="do not belong to the rollouts .* rerun the label"):
        train_prm(ctx)
    _rollouts(ctx.rollouts_path, ("a", "b"))
    save_labelled(ctx.labels_path, steps)  # the same steps without their features
    with pytest.raises(ValueError, match="do not belong to the rollouts"):
        train_prm(ctx)
    (tmp_path / "prm_training.json").write_text("{}")  # trained: nothing is read
    ctx.labels_path.unlink()
    train_prm(ctx)


SAMPLERS: list = []  # each ScriptedCompletions made, in order


class ScriptedCompletions:
    """A DecoderRolloutSampler stand-in: from state (a, b) the completions x then y, from
    any other y, each call recorded."""

    def __init__(self, runtime, max_steps):
        self.max_steps = max_steps
        self.calls = []
        SAMPLERS.append(self)

    def continue_from(self, items, n, temperature, max_steps=None):
        self.calls.append((list(items), n, temperature, max_steps))
        return [[("x",), ("y",)][:n] if steps == ("a", "b") else [("y",)] * n
                for _, steps in items]


def test_train_prm_samples_the_missing_completions_and_trains_on_their_share_right(
        tmp_path, monkeypatch):
    ctx = RunContext(config=load_config(None, [
        "label.rollouts_per_state=2", "collect.temperature=0.7", "decode.max_steps=6",
        "decode.slots=3", "prm_training.labels=soft", "q_train.hidden_layers=2",
        "q_train.loss=mse", "seed=5", "label.live_states_only=false"]), out=tmp_path)
    ctx.__dict__["policy"] = SimpleNamespace(config=POLICY)  # not loaded
    ctx.__dict__["runtime"] = lambda problems, **kwargs: None  # the sampler needs none
    pairs = step_pairs(_rollouts(ctx.rollouts_path, ("a", "b", "d"), ("e", "f")))
    features = np.arange(5 * POLICY.hidden_size, dtype=np.float32).reshape(5, -1)
    save_labelled(ctx.labels_path, labelled(pairs, [0.0] * 5), features=features)
    # The label stage recorded the first step's completions before it was killed.
    with durable.open_for_append(ctx.step_outcomes_path) as f:
        durable.append_records(f, [{"problem_index": 0, "prefix_steps": [], "step_text": "a",
                                    "rewards": [1.0, 0.0]}])
    SAMPLERS.clear()
    monkeypatch.setattr(prm_stage, "DecoderRolloutSampler", ScriptedCompletions)
    monkeypatch.setattr(prm_stage, "reward_fn", lambda ctx, problems:
                        lambda i, steps: float(steps[-1] == "x"))
    trained = {}

    def train(head, features, labels, settings, directory, identity, *, mesh=None):
        trained.update(head=head.head_config, params=nnx.state(head, nnx.Param),
                       features=features, labels=labels,
                       settings=settings, directory=directory, identity=identity)
        directory.mkdir()  # as the checkpointer makes it
        return SimpleNamespace(steps=3, stopped_early=False, best_heldout_loss=0.5,
                               constant_heldout_loss=0.6, heldout_auc=None)

    monkeypatch.setattr(prm_stage, "train_learned_prm", train)
    train_prm(ctx)
    # The two open steps nothing recorded, a pair a call (3 slots hold 2 rollouts and
    # the state), 2 completions each at collect.temperature and decode.max_steps.
    [sampler] = SAMPLERS
    assert sampler.max_steps == 6
    assert sampler.calls == [([(0, ("a", "b"))], 2, 0.7, 6), ([(0, ("e",))], 2, 0.7, 6)]
    assert [(r["prefix_steps"], r["step_text"], r["rewards"]) for r in
            durable.read_jsonl(ctx.step_outcomes_path)[0]] == [
        ([], "a", [1.0, 0.0]), (["a"], "b", [1.0, 0.0]), ([], "e", [0.0, 0.0])]
    # Soft labels, the share of completions right; a trace's last step its reward, 1.
    np.testing.assert_array_equal(trained["labels"], [0.5, 0.5, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(trained["features"], features)
    assert trained["head"] == QHeadConfig(hidden_size=32, mlp_widths=(32, 32), output="sigmoid")
    # The head is drawn from the run's seed, 5.
    jax.tree.map(np.testing.assert_array_equal, trained["params"],
                 nnx.state(QHead(trained["head"], rngs=nnx.Rngs(5)), nnx.Param))
    # q_train's optimiser settings, with BCE whatever q_train.loss says.
    assert trained["settings"] == dataclasses.replace(train_config(ctx, 5), loss="bce")
    assert trained["directory"] == tmp_path / "prm"
    assert trained["identity"] == BackboneIdentity.of_policy(POLICY)
    assert json.loads((tmp_path / "prm" / LEARNED_PRM_MARKER).read_text()) == {
        "kind": "head on the policy's hidden states", "labels": "soft",
        "completions_per_step": 2}
    summary = json.loads((tmp_path / "prm_training.json").read_text())
    assert (summary["examples"], summary["positive_fraction"]) == (5, 0.4)


def test_train_prm_trains_on_the_pairs_the_label_stage_kept(tmp_path, monkeypatch):
    """With label.live_states_only (the default) the label stage drops the steps taken
    after a state that can no longer succeed; train_prm reads those labels and their
    features, so it takes the same pairs rather than refusing them as not the rollouts'
    (which rerunning the label stage could not mend)."""
    no_features(monkeypatch)
    monkeypatch.setattr(rollouts, "fitted_q_labels", lambda ctx, pairs, features:
                        labelled(pairs, [0.5] * len(pairs)))
    ctx, right, wrong = one_problem_run(tmp_path, "label.method=fitted_q_iteration",
                                        "label.rollouts_per_state=3")
    rollouts.label(ctx)
    ctx.__dict__["policy"] = SimpleNamespace(config=POLICY)
    ctx.__dict__["runtime"] = lambda problems, **kwargs: None  # the sampler needs none
    monkeypatch.setattr(prm_stage, "DecoderRolloutSampler", ScriptedCompletions)
    monkeypatch.setattr(prm_stage, "reward_fn", lambda ctx, problems:
                        lambda i, steps: float(steps[-1] == "x"))
    trained = {}

    def train(head, features, labels, settings, directory, identity, *, mesh=None):
        trained.update(features=features, labels=labels)
        directory.mkdir()
        return SimpleNamespace(steps=1, stopped_early=False, best_heldout_loss=None,
                               constant_heldout_loss=None, heldout_auc=None)

    monkeypatch.setattr(prm_stage, "train_learned_prm", train)
    SAMPLERS.clear()
    train_prm(ctx)
    # The two open steps of the live states are completed, label.rollouts_per_state
    # times each (y: wrong); right[1] after right[0] ends its trace, reward 0; the step
    # after the wrong one is not labelled.
    [sampler] = SAMPLERS
    assert [(items, n) for items, n, *_ in sampler.calls] == [
        ([(0, (right[0],)), (0, (wrong,))], 3)]
    np.testing.assert_array_equal(trained["labels"], [0.0, 0.0, 0.0])
    assert trained["features"].shape == (3, 4)


def test_a_shepherd_prm_reads_the_configured_tag_and_label_tokens_of_its_own_checkpoint(
        tmp_path, monkeypatch):
    model = object()

    def encode(text):
        return [ord(c) % 64 for c in text]

    def encode_input(text):
        return [1, *encode(text)]  # with the BOS this tokenizer starts its inputs with

    built = []
    monkeypatch.setattr(prm_stage, "ShepherdPRM", lambda model, **kwargs: built.append(
        dict(model=model, **kwargs)) or "the PRM")

    def prm(*overrides):
        ctx = RunContext(config=load_config(None, [
            "search.utility=prm", "search.prm_model=smollm2-135m-instruct", *overrides]),
            out=tmp_path)
        asked = []
        ctx.__dict__["load"] = lambda source: asked.append(source) or SimpleNamespace(
            model=model, tokenizer=SimpleNamespace(encode=encode, encode_input=encode_input))
        problems = [SimpleNamespace(question="Q0?"), SimpleNamespace(question="Reach 9.")]
        loaded = load_prm(ctx, problems)
        assert asked == ["smollm2-135m-instruct"]  # the PRM's checkpoint, not the policy
        return loaded

    assert prm("search.prm_step_tag=TAG", "search.prm_good_token=G",
               "search.prm_bad_token=B") == "the PRM"
    [kwargs] = built
    # The PRM's inputs start with BOS; its label tokens are read without it.
    assert kwargs.pop("model") is model and kwargs.pop("encode") is encode_input
    question = kwargs.pop("question")
    assert [question(i) for i in (1, 0)] == ["Reach 9.", "Q0?"]
    # 'G' and 'B' are token ids 71 % 64 = 7 and 66 % 64 = 2 of the encoding.
    assert kwargs == dict(step_tag="TAG", good_token_id=7, bad_token_id=2)
    # A ConfigError: the run reports it in one line (run.INPUT_ERRORS), the stages before kept.
    with pytest.raises(ConfigError) as raised:
        prm("search.prm_bad_token=BB")
    assert str(raised.value) == ("search.prm_bad_token='BB' is 2 tokens for the tokenizer of "
                                 "search.prm_model=smollm2-135m-instruct; give a single-token "
                                 "label")
    with pytest.raises(ConfigError, match=r"^search\.prm_good_token='' is 0 tokens for "):
        prm("search.prm_good_token=''")
