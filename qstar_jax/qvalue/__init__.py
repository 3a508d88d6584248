"""Q̂(s, a): the Q-value model that guides A* over reasoning steps.

- ``head`` / ``backbone``: the scalar head on the policy's own hidden states, or on a
  separate trainable Llama-family backbone.
- ``rollouts``: the policy's rollouts, stored durably; ``dataset``: (s, a) pairs and the
  labelled dataset.
- ``labels_best_of`` (with ``uct``), ``labels_fqi``, ``labels_completion``: the paper's
  three label estimators.
- ``train`` and ``checkpoint``: optax training and orbax checkpoints.
- ``features``: the policy's hidden state at a step's last token, Q̂'s training input.
- ``scorers``: search's ``QValueFunction`` over a trained Q̂ (policy hidden or separate
  backbone), and its ``ProcessRewardModel`` over a learned PRM head; ``prm``: the
  Math-Shepherd process reward model; ``labels_shepherd``: Math-Shepherd's per-step
  labels (hard or soft) that the learned PRM trains on.
"""
