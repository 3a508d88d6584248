"""search's ``QValueFunction`` over a trained Q̂: on the policy's hidden states, or on a
separate backbone reading the text of (question ⊕ steps ⊕ candidate step); and its
``ProcessRewardModel`` over a learned PRM head on the policy's hidden states."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from qstar_jax.models.loading import LoadedModel
from qstar_jax.qvalue.backbone import BackboneQModel
from qstar_jax.qvalue.features import StepFeatures, step_texts
from qstar_jax.qvalue.checkpoint import load_backbone_q
from qstar_jax.qvalue.dataset import LabelledStep
from qstar_jax.qvalue.head import QHeadModel, head_inputs
from qstar_jax.search.interface import QItem
from qstar_jax.tasks.base import state_text

if TYPE_CHECKING:
    from qstar_jax.stages.context import RunContext


class PolicyHiddenQ:
    """search's ``QValueFunction`` over a head reading the policy's hidden states (and,
    with ``second_opinion``, each step's log-probability under a second policy:
    ``second_opinion(items)`` -> [N])."""

    def __init__(self, model: QHeadModel,
                 second_opinion: Callable[[Sequence[QItem]], np.ndarray] | None = None):
        self.model = model
        self._second_opinion = second_opinion

    def score(self, items: Sequence[QItem]) -> np.ndarray:
        if not items:
            return np.zeros(0, np.float32)
        logprobs = (None if any(item.logprob is None for item in items)
                    else np.array([item.logprob for item in items], np.float32))
        second = None if self._second_opinion is None else self._second_opinion(items)
        return self.model.score_hidden(head_inputs(
            np.stack([item.hidden for item in items]), logprobs, self.model.head_config,
            second))


class SecondOpinion:
    """Each step's log-probability under a second policy, given its state: the label
    stage's ``last_step_features`` over (prompt ⊕ steps so far, the step ⊕ separator),
    with one jitted pass for all calls."""

    def __init__(self, loaded: LoadedModel, prompts: Sequence[str]):
        self._features, self._prompts = StepFeatures(loaded.model, loaded.tokenizer), prompts

    def __call__(self, steps: Sequence[QItem | LabelledStep]) -> np.ndarray:
        """[N] for steps that name their problem, the steps before and the step itself
        (search's QItems, the labels' LabelledSteps)."""
        _, logprobs = self._features(*step_texts(self._prompts, steps))
        return logprobs


class PolicyHiddenPRM:
    """search's ``ProcessRewardModel`` over a head reading the policy's hidden states (the
    learned PRM): a step's P(good) from the hidden state the decoder computed at its last
    token, so scoring costs no forward pass of the policy."""

    def __init__(self, model: QHeadModel):
        self._head = PolicyHiddenQ(model)

    def score_steps(self, items: Sequence[QItem]) -> np.ndarray:
        if any(item.hidden is None for item in items):
            raise ValueError("the learned PRM reads the policy's hidden state of each step, "
                             "but an item has none; use an expander that returns them")
        return self._head.score(items)


class SeparateBackboneQ:
    """search's ``QValueFunction`` over a separate backbone scoring texts."""

    def __init__(self, ctx: RunContext, problems):
        tokenizer = ctx.load(ctx.config.q_train.separate_model).tokenizer
        self._encode = tokenizer.encode_input
        self._prompts = ctx.prompts(problems)
        self._model = BackboneQModel(load_backbone_q(ctx.q_dir, mesh=ctx.mesh),
                                     pad_id=tokenizer.pad_id)

    def score(self, items: Sequence[QItem]) -> np.ndarray:
        if not items:
            return np.zeros(0, np.float32)
        return self._model.score_texts([
            self._encode(state_text(self._prompts[i.problem_index], (*i.prefix_steps, i.step_text)))
            for i in items], keep_last=True)
