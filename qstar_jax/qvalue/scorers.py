"""search's ``QValueFunction`` over a trained Q̂: on the policy's hidden states, or on a
separate backbone reading the text of (question ⊕ steps ⊕ candidate step); and its
``ProcessRewardModel`` over a learned PRM head on the policy's hidden states.

A scorer that runs a model of its own over each item's text (the second policy, the
separate backbone, ``prm.ShepherdPRM``) counts the tokens it reads per problem in its
``forward_tokens``; one reading the policy's hidden states runs none and has none."""

from __future__ import annotations

import collections
import dataclasses
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

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


class ForwardTokens:
    """The tokens a scorer's own forward passes read for each problem (by index), padding
    aside, counted from the problem's last ``begin`` (or from the scorer's start)."""

    def __init__(self):
        self._read: collections.Counter[int] = collections.Counter()

    def add(self, problem_indices: Sequence[int], rows: Sequence[Sequence[int]]) -> None:
        """Rows of token ids read, each for the problem at the same place."""
        for index, row in zip(problem_indices, rows, strict=True):
            self._read[index] += len(row)

    def begin(self, problem_index: int) -> None:
        """Count the problem's tokens from now (its search begins, or begins again)."""
        self._read.pop(problem_index, None)

    def __getitem__(self, problem_index: int) -> int:
        return self._read[problem_index]


T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ScorerTokens:
    """The ``ForwardTokens`` of a search's Q̂ (its second policy or separate backbone) and
    of its process utility's PRM (a Math-Shepherd model); None for one that runs no
    forward pass of its own, or is not there."""

    q: ForwardTokens | None
    prm: ForwardTokens | None

    @classmethod
    def of(cls, q_fn, utility) -> "ScorerTokens":
        return cls(getattr(q_fn, "forward_tokens", None),
                   getattr(getattr(utility, "prm", None), "forward_tokens", None))

    def begin(self, problem_index: int) -> None:
        """Count from now: the problem's search begins (again)."""
        for counted in (self.q, self.prm):
            if counted is not None:
                counted.begin(problem_index)

    def counting(self, make: Callable[[int], T]) -> Callable[[int], T]:
        """``make`` (a problem's planner from its index), counting the problem's tokens
        from each call: a search the cache makes begin again (search/room.py) is counted
        for the attempt that finishes, as its generated tokens are."""
        def made(problem_index: int) -> T:
            self.begin(problem_index)
            return make(problem_index)
        return made

    def read(self, problem_index: int) -> tuple[int, int]:
        """(Q̂'s tokens, the PRM's) since the problem's search began."""
        return tuple(0 if counted is None else counted[problem_index]
                     for counted in (self.q, self.prm))


class PolicyHiddenQ:
    """search's ``QValueFunction`` over a head reading the policy's hidden states (and,
    with ``second_opinion``, each step's log-probability under a second policy:
    ``second_opinion(items)`` -> [N])."""

    def __init__(self, model: QHeadModel,
                 second_opinion: Callable[[Sequence[QItem]], np.ndarray] | None = None):
        self.model = model
        self._second_opinion = second_opinion

    @property
    def forward_tokens(self) -> ForwardTokens | None:
        """The second policy's tokens (``SecondOpinion``); None without one: the head
        reads what the decoder computed, at no forward pass of its own."""
        return getattr(self._second_opinion, "forward_tokens", None)

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
    with one jitted pass for all calls. ``forward_tokens`` counts the rows it passes: a
    text whose tokens begin another's is read in that one's row (``shared_carriers``)."""

    def __init__(self, loaded: LoadedModel, prompts: Sequence[str]):
        self._features, self._prompts = StepFeatures(loaded.model, loaded.tokenizer), prompts
        self.forward_tokens = ForwardTokens()

    def __call__(self, steps: Sequence[QItem | LabelledStep]) -> np.ndarray:
        """[N] for steps that name their problem, the steps before and the step itself
        (search's QItems, the labels' LabelledSteps)."""
        read: dict[int, list[int]] = {}
        _, logprobs = self._features(*step_texts(self._prompts, steps), rows_read=read.update)
        self.forward_tokens.add([steps[c].problem_index for c in read], list(read.values()))
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
    """search's ``QValueFunction`` over a separate backbone scoring texts; its
    ``forward_tokens`` counts what the backbone reads (a text's last
    max_position_embeddings tokens, where it is longer)."""

    def __init__(self, ctx: RunContext, problems):
        tokenizer = ctx.load(ctx.config.q_train.separate_model).tokenizer
        self._encode = tokenizer.encode_input
        self._prompts = ctx.prompts(problems)
        self._model = BackboneQModel(load_backbone_q(ctx.q_dir, mesh=ctx.mesh),
                                     pad_id=tokenizer.pad_id)
        self.forward_tokens = ForwardTokens()

    def score(self, items: Sequence[QItem]) -> np.ndarray:
        if not items:
            return np.zeros(0, np.float32)
        rows = [self._encode(state_text(self._prompts[i.problem_index],
                                        (*i.prefix_steps, i.step_text))) for i in items]
        limit = self._model.model_config.max_position_embeddings
        self.forward_tokens.add([i.problem_index for i in items], [row[-limit:] for row in rows])
        return self._model.score_texts(rows, keep_last=True)
