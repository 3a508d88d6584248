"""What ``run`` says of the searches' sizes before any stage runs: each evaluate method's
search must fit one data shard's share of decode.slots at its first expansion (its root
and its first children), where evaluate would otherwise stop on it after the training
stages; and an A* budget that cannot reach decode.max_steps is warned of."""

import pytest

from qstar_jax.config import ConfigError
from qstar_jax.config_loading import load_config
from qstar_jax.preflight import (check_searches_fit_a_shard, first_expansion_slots,
                                 shallow_search_warning)


def config(*overrides):
    return load_config(None, ["search.k=4", "eval.samples=6", "eval.beam_k=3",
                              "eval.tot.k=5", *overrides])


@pytest.mark.parametrize("method, slots", [
    ("qstar", 5), ("qstar_no_q", 5), ("best_of_n", 7), ("self_consistency", 7), ("beam", 4),
    ("tot_bfs", 6), ("tot_dfs", 6), ("greedy", 2), ("best_of_n_matched", 2), ("mctsr", 2)])
def test_a_search_holds_its_root_and_first_children(method, slots):
    assert first_expansion_slots(config(), method) == slots


def test_a_shard_too_small_for_a_search_is_refused_naming_the_method_and_the_slots():
    small = config("eval.methods=[greedy,qstar]", "decode.slots=16")
    check_searches_fit_a_shard(small, 1)
    check_searches_fit_a_shard(small, 2)  # 8 slots a shard, 5 needed
    with pytest.raises(ConfigError, match=r"decode.slots=16 gives each of the 4 data shards "
                                          r"4, .* a qstar search holds 5 slots .* above 19"):
        check_searches_fit_a_shard(small, 4)
    with pytest.raises(ConfigError, match=r"decode.slots=4: a qstar search holds 5 slots"):
        check_searches_fit_a_shard(config("eval.methods=[qstar]", "decode.slots=4"), 1)


def test_a_run_that_does_not_evaluate_is_not_held_to_evaluates_searches():
    check_searches_fit_a_shard(config("eval.methods=[qstar]", "decode.slots=4",
                                      "stages=[train_policy,collect]"), 1)


def test_a_star_budget_too_small_to_reach_max_steps_is_warned_of():
    """Each expansion takes A*'s tree one step deeper at most: with 12 expansions a 13-step
    trace cannot finish, where greedy and best-of-N finish up to decode.max_steps."""
    warned = shallow_search_warning(config("search.max_expansions=12", "decode.max_steps=24",
                                           "eval.methods=[greedy,qstar]"))
    assert warned == (
        "warning: search.max_expansions=12 is below decode.max_steps=24: A* (qstar) takes its "
        "tree one step deeper an expansion at most, so it cannot finish a trace longer than 12 "
        "steps, which the other methods finish up to 24; raise search.max_expansions to "
        "decode.max_steps or more")
    assert shallow_search_warning(config("search.max_expansions=24", "decode.max_steps=24",
                                         "eval.methods=[qstar]")) is None
    assert shallow_search_warning(config("search.max_expansions=12", "decode.max_steps=24",
                                         "eval.methods=[greedy,beam]")) is None
    assert shallow_search_warning(config("search.max_expansions=12", "decode.max_steps=24",
                                         "eval.methods=[qstar]", "stages=[collect]")) is None
