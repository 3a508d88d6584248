"""Results of the shape the log and the reports read."""

from qstar_jax.outputs.results_log import ProblemResult


def result(method, pid, correct, tokens=10, scorer_tokens=(0, 0)):
    """``scorer_tokens``: (Q̂'s, the PRM's); None for a row logged before they were counted."""
    q_scorer, prm_scorer = scorer_tokens or (None, None)
    return ProblemResult(method=method, problem_id=pid, correct=correct, answer="1",
                         completion="x", completed=True, generated_tokens=tokens,
                         prefilled_tokens=5, q_calls=2, prm_calls=0, expansions=1, wall_s=0.5,
                         q_scorer_tokens=q_scorer, prm_scorer_tokens=prm_scorer)
