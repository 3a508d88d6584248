"""The decoder as search and Q̂ labelling see it.

- ``runtime``: ``PolicyRuntime`` (prefilled slots in, step texts out) and ``stable_id``.
- ``expander``: ``DecoderExpander``, search's ``StepExpander``.
- ``rollouts``: ``DecoderRolloutSampler``, Q̂ labelling's ``RolloutSampler``.
"""
