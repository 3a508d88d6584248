"""What self-consistency votes on in evaluate: the answer's value where the task reads one
(GSM8K's '$18', '18 dollars' and '18' are one answer), else the answer as written."""

from pathlib import Path

from qstar_jax.config_loading import load_config
from qstar_jax.search.driver import run_search
from qstar_jax.search.process_utility import ZeroUtility
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.evaluate import planner_factory
from tests.search.fakes import FakeExpander, HiddenQ, child, tree

# Five one-step chains: 18 three times, each spelt differently, and 20 twice, once with a
# full stop that the answer line drops.
ANSWERS = ("The answer is: $18", "The answer is: 20", "So the answer is 18 dollars.",
           "The answer is: 20.", "#### 18")


def test_self_consistency_counts_each_spelling_of_a_number_as_one_answer():
    config = load_config("configs/gsm8k_llama2_7b.yaml",
                         ["search.utility=zero", "eval.samples=5"])
    make = planner_factory(RunContext(config=config, out=Path("unused")), "self_consistency")
    chains = tree({"": [child(text, q=0.0, end=True) for text in ANSWERS]})
    [result] = run_search(1, make, FakeExpander({0: chains}), HiddenQ(), ZeroUtility(),
                          progress=False)
    assert [t.score for t in result.trajectories] == [3.0, 2.0, 3.0, 2.0, 3.0]
    assert result.steps == ("The answer is: $18",)
