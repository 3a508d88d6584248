import math

import jax
import numpy as np
import pytest
from flax import nnx

from qstar_jax.parallel import make_mesh
from qstar_jax.qvalue import train as q_train
from qstar_jax.qvalue.head import QHead, QHeadConfig, QHeadModel
from qstar_jax.qvalue.train import (TrainConfig, _batch_indices, make_optimizer, roc_auc,
                                    split_indices, train_q_model)
from tests.qvalue.tiny import E, separable_features
from tests.support.step_traces import count_step_traces


def params_of(head):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(head, nnx.Param)))


def fresh_head(output="sigmoid"):
    return QHead(QHeadConfig(hidden_size=E, output=output), rngs=nnx.Rngs(0))


def test_head_learns_separable_features_and_ranks_positives_first():
    x, y = separable_features()
    head = fresh_head()
    config = TrainConfig(learning_rate=0.05, warmup_steps=5, max_steps=60, batch_size=16,
                         heldout_fraction=0.25, eval_every=20, patience=3, seed=0)
    result = train_q_model(head, x, y, config, progress=False)
    losses = [loss for _, loss in result.heldout_losses]
    assert [step for step, _ in result.heldout_losses] == [20, 40, 60]
    # Chance level (always 0.5) is ln 2 ≈ 0.69; with a 0.5 margin and no label noise a
    # linear head that found the separating direction is far below a third of that.
    assert result.best_heldout_loss < math.log(2) / 3
    assert losses == sorted(losses, reverse=True)
    assert result.best_step == 60 and not result.stopped_early
    scores = QHeadModel(head).score_hidden(x)
    order = np.random.default_rng(0).permutation(len(y))  # the run's held-out split
    heldout = order[:int(round(len(y) * 0.25))]
    positives, negatives = scores[heldout][y[heldout] == 1], scores[heldout][y[heldout] == 0]
    assert len(positives) and len(negatives)
    assert positives.min() > negatives.max()
    assert result.heldout_auc == 1.0  # the run's own figure says the same
    # The constant predictor's loss is the held-out labels' cross-entropy at the training
    # base rate: with balanced classes near ln 2.
    base = y[order[int(round(len(y) * 0.25)):]].mean()
    held = y[heldout]
    assert result.constant_heldout_loss == pytest.approx(
        -np.mean(held * np.log(base) + (1 - held) * np.log(1 - base)), rel=1e-6)


def test_mse_on_a_raw_head_fits_regression_targets():
    x, y = separable_features()
    targets = 0.25 + 0.5 * y  # soft labels, as discounted or bootstrapped targets are
    head = fresh_head(output="raw")
    config = TrainConfig(loss="mse", learning_rate=0.05, max_steps=60, batch_size=16,
                         heldout_fraction=0.25, eval_every=60)
    result = train_q_model(head, x, targets, config, progress=False)
    # Predicting the targets' mean scores their variance, 0.0625; below half of it the head
    # explains most of the variance (R² > 0.5), which only the separating direction gives.
    assert result.best_heldout_loss < 0.0625 / 2
    assert result.constant_heldout_loss == pytest.approx(0.0625, abs=0.01)


def test_early_stopping_triggers_on_a_plateau():
    x, y = separable_features()
    head = fresh_head()
    before = params_of(head)
    config = TrainConfig(learning_rate=0.0, max_steps=100, batch_size=16, heldout_fraction=0.25,
                         eval_every=4, patience=2)
    result = train_q_model(head, x, y, config, progress=False)
    # lr 0 keeps the held-out loss flat: best at the first evaluation, then two more
    # evaluations without improvement stop the run.
    assert result.stopped_early and result.steps == 12 and result.best_step == 4
    assert len({loss for _, loss in result.heldout_losses}) == 1
    jax.tree.map(np.testing.assert_array_equal, params_of(head), before)


def test_improvements_within_min_improvement_do_not_count():
    """The held-out loss falls at every evaluation (as in the first test), but never by
    more than 1.0: the first evaluation stays the best and two more stop the run."""
    x, y = separable_features()
    config = TrainConfig(learning_rate=0.05, max_steps=60, batch_size=16,
                         heldout_fraction=0.25, eval_every=5, patience=2, min_improvement=1.0)
    result = train_q_model(fresh_head(), x, y, config, progress=False)
    losses = [loss for _, loss in result.heldout_losses]
    assert losses == sorted(losses, reverse=True) and losses[0] > losses[-1]
    assert result.stopped_early and result.steps == 15 and result.best_step == 5
    assert result.best_heldout_loss == losses[0]


def test_training_is_deterministic_by_seed():
    x, y = separable_features()
    runs = []
    for seed in (3, 3, 4):
        head = fresh_head()
        train_q_model(head, x, y, TrainConfig(learning_rate=0.05, max_steps=8, batch_size=16,
                                              heldout_fraction=0.25, eval_every=8, seed=seed),
                      progress=False)
        runs.append(params_of(head))
    jax.tree.map(np.testing.assert_array_equal, runs[0], runs[1])
    assert not np.array_equal(runs[0]["out"]["kernel"], runs[2]["out"]["kernel"])


def test_bad_inputs_get_clear_errors():
    x, y = separable_features()
    config = TrainConfig(max_steps=2, batch_size=16)
    with pytest.raises(ValueError, match="output='sigmoid'"):
        train_q_model(fresh_head(output="raw"), x, y, config, progress=False)
    with pytest.raises(ValueError, match=r"labels in \[0, 1\]"):
        train_q_model(fresh_head(), x, y * 2, config, progress=False)
    with pytest.raises(ValueError, match="one label"):
        train_q_model(fresh_head(), x[:-1], y, config, progress=False)
    with pytest.raises(ValueError, match="batch_size=512"):
        train_q_model(fresh_head(), x, y, TrainConfig(max_steps=2, batch_size=512),
                      progress=False)
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(max_steps=5, warmup_steps=5)


def test_the_learning_rate_warms_up_linearly_then_falls_on_a_cosine_to_its_floor():
    """Adam's step under a constant gradient is the learning rate itself (m̂/√v̂ = 1), so
    the updates read the schedule: 0 → 0.1 over 4 warmup steps, then a cosine from 0.1 to
    0.02 that reaches it at max_steps = 12."""
    config = TrainConfig(learning_rate=0.1, min_learning_rate=0.02, warmup_steps=4,
                         max_steps=12, weight_decay=0.0)
    optimizer = make_optimizer(config)
    params = {"w": np.zeros(1, np.float32)}
    state = optimizer.init(params)
    rates, update = [], jax.jit(optimizer.update)  # one compile, not 13 eager passes
    for _ in range(13):
        updates, state = update({"w": np.ones(1, np.float32)}, state, params)
        rates.append(-float(updates["w"][0]))
    expected = [0.1 * t / 4 for t in range(4)] + [
        0.02 + 0.08 * 0.5 * (1 + math.cos(math.pi * (t - 4) / 8)) for t in range(4, 13)]
    assert rates == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert rates[4] == pytest.approx(0.1, rel=1e-4) and rates[12] == pytest.approx(0.02, rel=1e-4)


def test_weight_decay_pulls_a_parameter_with_no_gradient_towards_zero():
    """With a zero gradient Adam's own step is 0, so AdamW's update is the decay alone:
    -learning rate x weight_decay x the parameter, at 0.01 unless set."""
    params = {"w": np.array([2.0, -4.0], np.float32)}
    zero = {"w": np.zeros(2, np.float32)}
    for config, expected in [(TrainConfig(learning_rate=0.1, weight_decay=0.5), [-0.1, 0.2]),
                             (TrainConfig(learning_rate=0.1), [-0.002, 0.004])]:
        optimizer = make_optimizer(config)
        updates, _ = jax.jit(optimizer.update)(zero, optimizer.init(params), params)
        np.testing.assert_allclose(updates["w"], expected, rtol=1e-6)


def test_roc_auc_counts_ordered_pairs_with_ties_as_half():
    positive = np.array([True, False, True, False, False])
    # Positive scores 3 and 1 against negatives 2, 1, 0: pairs won 3>2, 3>1, 3>0, 1>0
    # and the tie 1=1 counts half: 4.5 of 6.
    assert roc_auc(np.array([3.0, 2.0, 1.0, 1.0, 0.0]), positive) == pytest.approx(4.5 / 6)
    assert roc_auc(np.array([0.0, 1.0, 0.5, 2.0, 3.0]), positive) == 0.0
    assert roc_auc(np.ones(3), np.array([True, True, True])) is None


def test_roc_auc_of_graded_labels_is_the_share_of_label_ordered_pairs_scored_in_order():
    labels = np.array([0.0, 0.0625, 0.25, 1.0, 0.25])  # discounted returns
    scores = np.array([0.1, 0.3, 0.2, 0.9, 0.2])
    # Pairs with different labels: 9. Out of order: (0.0625 scores 0.3) above both 0.25s.
    assert roc_auc(scores, labels) == pytest.approx(7 / 9)
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=300), rng.integers(0, 4, 300) / 4
    brute = [(s_i > s_j) + 0.5 * (s_i == s_j) for s_i, l_i in zip(scores, labels)
             for s_j, l_j in zip(scores, labels) if l_i > l_j]
    assert roc_auc(scores, labels) == pytest.approx(np.mean(brute))


SIGMOID_QUARTER = 1 / (1 + math.exp(-0.25))


@pytest.mark.parametrize(("loss", "output", "train_loss", "heldout_loss", "constant"), [
    # bias .25 on zero features: the logit or the value .25 for every row. BCE of logit
    # .25 is softplus(.25) against 0, softplus(-.25) against 1; the constant predictor's
    # mean training label 0 is clipped to 1e-6, so its held-out BCE is -ln(1e-6).
    ("bce", "sigmoid", math.log1p(math.exp(0.25)), math.log1p(math.exp(-0.25)),
     -math.log(1e-6)),
    ("mse", "raw", 0.25 ** 2, 0.75 ** 2, 1.0),
    # MSE on a sigmoid head reads its value sigmoid(.25), not the logit.
    ("mse", "sigmoid", SIGMOID_QUARTER ** 2, (1 - SIGMOID_QUARTER) ** 2, 1.0),
], ids=["bce", "mse", "mse_sigmoid"])
def test_training_reads_only_training_rows_and_evaluates_only_held_out_ones(
        loss, output, train_loss, heldout_loss, constant):
    """Labels 0 on the 30 training rows and 1 on the 10 held-out ones, at learning rate 0
    so the head stays at its bias: every step's loss is a training row's, every
    evaluation's a held-out row's. The held-out rows are evaluated in chunks of 8 and 2,
    the second padded with row 0, a training row; the last step (10) is evaluated though
    eval_every is 4."""
    config = TrainConfig(loss=loss, learning_rate=0.0, max_steps=10, batch_size=8,
                         heldout_fraction=0.25, eval_every=4, patience=5, seed=2)
    train, heldout = split_indices(40, config)
    assert len(heldout) == 10 and 0 in train
    labels = np.zeros(40, np.float32)
    labels[heldout] = 1.0
    head = fresh_head(output)
    head.out.bias[...] = np.full((1,), 0.25, np.float32)
    step_losses = []
    result = train_q_model(head, np.zeros((40, E), np.float32), labels, config,
                           on_step=lambda step, value: step_losses.append(value),
                           progress=False)
    assert step_losses == pytest.approx([train_loss] * 10, rel=1e-6)
    assert [step for step, _ in result.heldout_losses] == [4, 8, 10]
    assert [value for _, value in result.heldout_losses] == pytest.approx(
        [heldout_loss] * 3, rel=1e-6)
    assert (result.steps, result.best_step, result.stopped_early) == (10, 4, False)
    assert result.constant_heldout_loss == pytest.approx(constant, rel=1e-6)
    assert result.heldout_auc is None  # every held-out label is 1


def test_each_epoch_takes_every_training_row_at_most_once_in_an_order_of_its_own():
    """7 training rows in batches of 2: an epoch is 3 batches of 6 distinct rows (one left
    over), each epoch shuffled anew, and a step's batch is the same whenever it is asked
    (a resumed run replays it)."""
    train = np.arange(11, 18)
    config = TrainConfig(batch_size=2, seed=0)
    batches = [_batch_indices(train, step, config) for step in range(9)]
    epochs = [np.concatenate(batches[3 * e:3 * e + 3]) for e in range(3)]
    for rows in epochs:
        assert len(rows) == len(set(rows)) == 6 and set(rows) <= set(train)
    assert len({tuple(rows) for rows in epochs}) == 3
    np.testing.assert_array_equal(_batch_indices(train, 4, config), epochs[1][2:4])


@pytest.mark.parametrize(("settings", "message"), [
    ({"loss": "hinge"}, r"loss='hinge': choose one of \('bce', 'mse'\)"),
    ({"heldout_fraction": 1.0}, r"heldout_fraction=1.0 must lie in \[0, 1\)"),
    ({"heldout_fraction": -0.1}, r"heldout_fraction=-0.1 must lie in \[0, 1\)"),
    *[({name: 0}, "max_steps, batch_size, eval_every, patience and checkpoint_every must all "
                  "be at least 1")
      for name in ("max_steps", "batch_size", "eval_every", "patience", "checkpoint_every")],
], ids=["loss", "heldout_1", "heldout_negative", "max_steps", "batch_size", "eval_every",
        "patience", "checkpoint_every"])
def test_train_settings_out_of_range_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_a_held_out_share_that_rounds_to_no_row_is_refused():
    """.1 of 4 rows rounds to none held out, which would train without the early stopping
    asked for; .1 of 15 rounds to 2."""
    with pytest.raises(ValueError, match=r"heldout_fraction=0.1 of 4 examples leaves no "
                                         "held-out example"):
        split_indices(4, TrainConfig(heldout_fraction=0.1, batch_size=1))
    train, heldout = split_indices(15, TrainConfig(heldout_fraction=0.1, batch_size=1))
    assert (len(train), len(heldout)) == (13, 2)
    assert sorted([*train, *heldout]) == list(range(15))


def test_training_on_a_mesh_traces_its_step_once(monkeypatch):
    """On a mesh the step's inputs start with the shardings it returns (the optimizer's
    step counts replicated, as the parameters are), so the later steps reuse the first
    one's program rather than tracing and compiling the step again."""
    traced = count_step_traces(monkeypatch, q_train)
    x, y = separable_features()
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    train_q_model(fresh_head(), x, y, TrainConfig(max_steps=3, batch_size=16),
                  progress=False, mesh=mesh)
    assert traced == [mesh]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("loss, output", [("bce", "sigmoid"), ("mse", "raw")])
def test_non_finite_labels_or_features_are_refused(bad, loss, output):
    """NaN passed the bce range check (every comparison with it is False): the run
    trained on it and reported NaN losses and an AUC of 0.5."""
    x, y = separable_features()
    config = TrainConfig(loss=loss, max_steps=2, batch_size=16)
    labels = y.copy()
    labels[3] = bad
    with pytest.raises(ValueError, match="^labels hold 1 NaN or infinite values; every label "
                                         "must be a finite number$"):
        train_q_model(fresh_head(output), x, labels, config, progress=False)
    features = x.copy()
    features[5, 1] = bad
    with pytest.raises(ValueError, match="^inputs hold 1 NaN or infinite values; every "
                                         "feature must be a finite number$"):
        train_q_model(fresh_head(output), features, y, config, progress=False)


@pytest.mark.parametrize("loss, output", [("bce", "sigmoid"), ("mse", "raw")])
def test_empty_inputs_are_refused(loss, output):
    with pytest.raises(ValueError, match="^labels are empty: training needs at least one "
                                         "labelled example$"):
        train_q_model(fresh_head(output), np.zeros((0, E), np.float32),
                      np.zeros(0, np.float32), TrainConfig(loss=loss, max_steps=2),
                      progress=False)
