"""Training Q̂ with optax: AdamW under warmup + cosine, minibatches, a held-out split,
early stopping on held-out loss, optional orbax checkpoints that a killed run resumes from.

Works for any Q̂ module with ``raw_scores(inputs) -> [B]`` and ``head_config``: a
``QHead`` on stored features (inputs [N, E]) or a ``BackboneQ`` (inputs a ``TokenBatch``).
The model is split once into (graphdef, params, rest); the train step is a jitted pure
function of them. Everything random (held-out split, batch order) derives from the seed,
and a batch depends only on the step number, so a resumed run replays exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from qstar_jax.models.compile_options import training_compiler_options
from qstar_jax.parallel import replicate, shard_rows
from qstar_jax.qvalue.checkpoint import QCheckpointer
from qstar_jax.qvalue.head import to_value

LOSSES = ("bce", "mse")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    loss: Literal["bce", "mse"] = "bce"
    learning_rate: float = 1e-3  # peak, reached after the warmup
    min_learning_rate: float = 0.0  # where the cosine ends, at max_steps
    weight_decay: float = 0.01
    warmup_steps: int = 0
    max_steps: int = 1000
    batch_size: int = 32
    heldout_fraction: float = 0.1  # 0 disables evaluation and early stopping
    eval_every: int = 50  # steps between held-out evaluations
    patience: int = 5  # evaluations without improvement before stopping
    min_improvement: float = 0.0  # a held-out loss must beat the best by more than this
    checkpoint_every: int = 100  # steps between checkpoints, when a checkpointer is given
    seed: int = 0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}: choose one of {LOSSES}")
        if min(self.max_steps, self.batch_size, self.eval_every, self.patience,
               self.checkpoint_every) < 1:
            raise ValueError("max_steps, batch_size, eval_every, patience and checkpoint_every "
                             "must all be at least 1")
        if not 0 <= self.warmup_steps < self.max_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must lie in "
                             f"[0, max_steps={self.max_steps})")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction={self.heldout_fraction} must lie in [0, 1)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainResult:
    steps: int  # optimizer steps taken in total
    stopped_early: bool
    best_step: int | None  # step of the lowest held-out loss (None without a held-out split)
    best_heldout_loss: float | None
    heldout_losses: tuple[tuple[int, float], ...]  # (step, loss) at each evaluation
    # What the best held-out loss is read against: the loss of always predicting the mean
    # training label; and how well the final model orders held-out pairs by their labels
    # (``roc_auc``: the ROC AUC for 0/1 labels; None without a held-out split or when all
    # its labels are equal). Pooled over depths: with discounted labels a first step that
    # led to a solution (label γ²) outranks a failed last step (0), while a calibrated Q̂
    # scores first steps low, so it can read below 0.5 here;
    # experiments/label_quality.py gives the figures per step.
    constant_heldout_loss: float | None = None
    heldout_auc: float | None = None


def make_optimizer(config: TrainConfig, update_mask: Any = None) -> optax.GradientTransformation:
    """AdamW on a warmup + cosine schedule; ``update_mask`` (a pytree like the params of
    arrays broadcastable to each parameter, 1 = train, 0 = freeze) freezes parameters or
    rows of stacked parameters."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
        decay_steps=config.max_steps, end_value=config.min_learning_rate)
    adamw = optax.adamw(schedule, weight_decay=config.weight_decay)
    if update_mask is None:
        return adamw
    masks = jax.tree.map(jnp.asarray, update_mask)
    labels = jax.tree.map(lambda m: "train" if np.any(m) else "frozen", update_mask)
    return optax.chain(
        # Wholly frozen leaves get no AdamW moments at all.
        optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels),
        # AdamW's weight decay moves parameters whose gradient is zero, so frozen rows are
        # held by masking the final updates rather than the gradients.
        optax.stateless(lambda updates, params: jax.tree.map(jnp.multiply, updates, masks)))


def _raw_scores(graphdef, params, rest, inputs):
    return nnx.merge(graphdef, params, rest).raw_scores(inputs)


def _per_example_loss(graphdef, loss: str, output: str, params, rest, inputs, labels):
    raw = _raw_scores(graphdef, params, rest, inputs)
    if loss == "bce":
        return optax.sigmoid_binary_cross_entropy(raw, labels)
    return jnp.square(to_value(raw, output) - labels)


def split_indices(n: int, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of ``n`` examples: a permutation seeded by config."""
    order = np.random.default_rng(config.seed).permutation(n)
    n_heldout = int(round(n * config.heldout_fraction))
    if config.heldout_fraction > 0 and n_heldout == 0:
        raise ValueError(f"heldout_fraction={config.heldout_fraction} of {n} examples leaves no "
                         "held-out example; add data or set heldout_fraction=0")
    train, heldout = order[n_heldout:], order[:n_heldout]
    if len(train) < config.batch_size:
        raise ValueError(f"{len(train)} training examples cannot fill batch_size="
                         f"{config.batch_size}; lower batch_size or add data")
    return train, heldout


def _batch_indices(train: np.ndarray, step: int, config: TrainConfig) -> np.ndarray:
    """The minibatch of ``step``: epoch-wise shuffles seeded by (seed, epoch)."""
    per_epoch = len(train) // config.batch_size
    epoch, offset = divmod(step, per_epoch)
    order = np.random.default_rng([config.seed, epoch]).permutation(train)
    return order[offset * config.batch_size:(offset + 1) * config.batch_size]


def _validate(inputs, labels: np.ndarray, loss: str, output: str) -> None:
    if labels.ndim != 1:
        raise ValueError(f"labels must be [N], got shape {labels.shape}")
    if not len(labels):
        raise ValueError("labels are empty: training needs at least one labelled example")
    bad = np.count_nonzero(~np.isfinite(labels))
    if bad:
        raise ValueError(f"labels hold {bad} NaN or infinite values; every label must be a "
                         "finite number")
    sizes = {leaf.shape[0] for leaf in jax.tree.leaves(inputs)}
    if sizes != {len(labels)}:
        raise ValueError(f"inputs have leading sizes {sorted(sizes)} but there are "
                         f"{len(labels)} labels; every input needs one label")
    _check_finite_features(inputs)
    if loss == "bce":
        if output != "sigmoid":
            raise ValueError("loss='bce' needs a head with output='sigmoid' (the raw output is "
                             "its logit); use loss='mse' for a raw head")
        if labels.min() < 0 or labels.max() > 1:
            raise ValueError(f"loss='bce' needs labels in [0, 1], got [{labels.min()}, "
                             f"{labels.max()}]; rescale them or use loss='mse'")


def _check_finite_features(inputs) -> None:
    """Raise ValueError if a floating-point input (stored features) holds NaN or infinity;
    integer inputs (token ids) are left to the model."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(inputs):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            continue
        bad = np.count_nonzero(~np.isfinite(np.asarray(leaf)))
        if bad:
            raise ValueError(f"inputs{jax.tree_util.keystr(path)} hold {bad} NaN or infinite "
                             "values; every feature must be a finite number")


def train_q_model(model: nnx.Module, inputs: Any, labels: np.ndarray, config: TrainConfig, *,
                  update_mask: Any = None, checkpointer: QCheckpointer | None = None,
                  on_step: Callable[[int, float], None] | None = None,
                  progress: bool = True, mesh: jax.sharding.Mesh | None = None,
                  progress_label: str = "Q̂ training") -> TrainResult:
    """Fit ``model`` (in place) to ``labels`` [N] on ``inputs`` (a pytree of [N, ...]).

    With a held-out split the model ends with the params of its best held-out loss, else
    with its last params. With a ``checkpointer`` the run resumes from its latest
    checkpoint. ``on_step(step, train_loss)`` is called after every step (for logging).
    With a ``mesh`` (``qstar_jax.parallel``) the parameters and data are replicated and
    each minibatch is split over its ``data`` axis (``parallel.shard_rows``).
    ``progress_label`` names its progress bar.
    """
    labels = np.asarray(labels, np.float32)
    output = model.head_config.output
    _validate(inputs, labels, config.loss, output)
    train, heldout = split_indices(len(labels), config)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # The step donates its params; a copy keeps the model's own arrays (maybe shared) alive.
    params = jax.tree.map(jnp.copy, nnx.to_pure_dict(params))
    rest = nnx.to_pure_dict(rest)
    if mesh is not None:
        params, rest = replicate(params, mesh), replicate(rest, mesh)
    optimizer = make_optimizer(config, update_mask)
    loss_fn = functools.partial(_per_example_loss, graphdef, config.loss, output)

    def train_step(params, opt_state, rest, inputs, labels, batch):
        def mean_loss(p):
            rows = shard_rows(jax.tree.map(lambda x: x[batch], inputs), mesh)
            return loss_fn(p, rest, rows, labels[batch]).mean()

        loss, grads = jax.value_and_grad(mean_loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def heldout_loss_sum(params, rest, inputs, labels, batch, weights):
        chunk = jax.tree.map(lambda x: x[batch], inputs)
        return jnp.sum(loss_fn(params, rest, chunk, labels[batch]) * weights)

    train_step = jax.jit(train_step, donate_argnums=(0, 1),
                         compiler_options=training_compiler_options())
    heldout_loss_sum = jax.jit(heldout_loss_sum)
    inputs, device_labels = jax.tree.map(jnp.asarray, inputs), jnp.asarray(labels)
    if mesh is not None:
        inputs, device_labels = replicate((inputs, device_labels), mesh)

    @jax.jit
    def raw_scores(params, rest, inputs, batch):
        return _raw_scores(graphdef, params, rest, jax.tree.map(lambda x: x[batch], inputs))

    def heldout_chunks():
        """Held-out indices in batch_size chunks padded to a static shape, with weights."""
        for start in range(0, len(heldout), config.batch_size):
            chunk = heldout[start:start + config.batch_size]
            pad = config.batch_size - len(chunk)
            weights = np.concatenate([np.ones(len(chunk)), np.zeros(pad)]).astype(np.float32)
            yield np.concatenate([chunk, np.zeros(pad, chunk.dtype)]), weights

    def heldout_loss(params) -> float:
        total = sum(float(heldout_loss_sum(params, rest, inputs, device_labels, chunk, weights))
                    for chunk, weights in heldout_chunks())
        return total / len(heldout)

    def heldout_auc(params) -> float | None:
        scores = np.concatenate([np.asarray(raw_scores(params, rest, inputs, chunk))[w > 0]
                                 for chunk, w in heldout_chunks()])
        return roc_auc(scores, labels[heldout])

    has_heldout = len(heldout) > 0
    opt_state = optimizer.init(params)
    if mesh is not None:  # its step counts too, as the step returns them
        opt_state = replicate(opt_state, mesh)
    best_params = jax.tree.map(jnp.copy, params) if has_heldout else None
    run = {"config": dataclasses.asdict(config), "examples": len(labels)}
    state = {"run": run, "step": 0, "best_step": None, "best_loss": None, "evals_since_best": 0,
             "heldout_losses": [], "stopped_early": False, "finished": False}
    if checkpointer is not None and checkpointer.latest_step() is not None:
        params, opt_state, restored_best, state = checkpointer.restore(
            params=params, opt_state=opt_state, best_params=params)
        best_params = restored_best if has_heldout else None
        if state["run"] != run:
            raise ValueError(
                f"{checkpointer.directory} holds a run with {state['run']}, not {run}; a "
                "resumed run must use the same config and data (or a new directory)")

    with tqdm(total=config.max_steps, initial=state["step"], desc=progress_label, unit="step",
              disable=not progress) as bar:
        while not state["finished"]:
            batch = _batch_indices(train, state["step"], config)
            params, opt_state, loss = train_step(params, opt_state, rest, inputs,
                                                 device_labels, batch)
            state["step"] += 1
            step = state["step"]
            bar.update(1)
            if on_step is not None:
                on_step(step, float(loss))
            if has_heldout and (step % config.eval_every == 0 or step == config.max_steps):
                _record_evaluation(state, heldout_loss(params), config)
                if state["best_step"] == step:
                    best_params = jax.tree.map(jnp.copy, params)
                bar.set_postfix(heldout_loss=state["heldout_losses"][-1][1])
            state["finished"] = state["stopped_early"] or step == config.max_steps
            if checkpointer is not None and (step % config.checkpoint_every == 0
                                             or state["finished"]):
                checkpointer.save(step, params=params, opt_state=opt_state,
                                  best_params=best_params if has_heldout else params,
                                  progress=state)
    final_params = best_params if has_heldout else params
    nnx.update(model, final_params)
    return TrainResult(
        steps=state["step"], stopped_early=state["stopped_early"],
        best_step=state["best_step"], best_heldout_loss=state["best_loss"],
        heldout_losses=tuple((s, l) for s, l in state["heldout_losses"]),
        constant_heldout_loss=(constant_loss(labels[train], labels[heldout], config.loss)
                               if has_heldout else None),
        heldout_auc=heldout_auc(final_params) if has_heldout else None)


def constant_loss(train_labels: np.ndarray, heldout_labels: np.ndarray, loss: str) -> float:
    """The held-out loss of predicting the mean training label everywhere."""
    mean = float(train_labels.mean())
    if loss == "bce":
        mean = min(max(mean, 1e-6), 1 - 1e-6)
        return float(-np.mean(heldout_labels * np.log(mean)
                              + (1 - heldout_labels) * np.log(1 - mean)))
    return float(np.mean(np.square(heldout_labels - mean)))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Of two items with different labels, P(the higher-labelled one scores higher), ties
    in score counting half: the ROC AUC for 0/1 (or boolean) labels, Harrell's
    concordance for graded ones such as discounted returns; None when every label is the
    same. Items go in by rising label into a Fenwick tree over score ranks, each counting
    the lower-labelled items it outscores: O(n log n)."""
    labels = np.asarray(labels, np.float64)
    # Dense ranks from 1: equal scores share a rank.
    ranks = np.unique(np.asarray(scores, np.float64), return_inverse=True)[1].reshape(-1) + 1
    tree = np.zeros(int(ranks.max(initial=0)) + 1, np.int64)

    def count_at_or_below(rank: int) -> int:
        total = 0
        while rank > 0:
            total, rank = total + int(tree[rank]), rank - (rank & -rank)
        return total

    won = pairs = seen = 0.0
    for level in np.unique(labels):
        group = ranks[labels == level]
        for rank in group:
            below = count_at_or_below(rank - 1)
            won += below + 0.5 * (count_at_or_below(rank) - below)
        pairs += len(group) * seen
        for rank in group:
            while rank < len(tree):
                tree[rank] += 1
                rank += rank & -rank
        seen += len(group)
    return won / pairs if pairs else None


def _record_evaluation(state: dict, loss: float, config: TrainConfig) -> None:
    """Update the early-stopping bookkeeping in ``state`` with a new held-out loss."""
    state["heldout_losses"].append([state["step"], loss])
    if state["best_loss"] is None or loss < state["best_loss"] - config.min_improvement:
        state.update(best_loss=loss, best_step=state["step"], evals_since_best=0)
    else:
        state["evals_since_best"] += 1
        state["stopped_early"] = state["evals_since_best"] >= config.patience
