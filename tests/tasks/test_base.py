"""The helpers every task shares: a completion's steps, the text of a state, split sizes."""

import pytest

from qstar_jax.tasks.base import SplitSizes, join_steps, split_steps, state_text


def test_steps_are_the_lines_that_are_not_blank():
    assert split_steps("a\n  \n\nb\n\t\n") == ["a", "b"]
    # A step keeps its own spaces: a code step's indentation is code.
    assert split_steps("def f():\n    return 1\n") == ["def f():", "    return 1"]
    assert split_steps("") == [] and split_steps("\n \n") == []
    assert join_steps(["a", "b"]) == "a\nb"


def test_a_state_is_the_prompt_then_each_step_ended_by_the_separator():
    assert state_text("Q\n", ("a", "b")) == "Q\na\nb\n"
    assert state_text("Q\n", ()) == "Q\n"
    assert state_text("", ("a",)) == "a\n"


def test_split_sizes_are_ints_of_at_least_zero_for_each_split():
    sizes = SplitSizes(train_size=7, test_size=0)
    assert [sizes.split_size(s) for s in ("train", "validation", "test")] == [7, 500, 0]
    for field, size in (("train_size", 2.5), ("validation_size", -1), ("test_size", "5"),
                        ("test_size", True)):
        with pytest.raises(ValueError, match=rf"^SplitSizes\.{field} must be an int >= 0, "
                                             rf"got {size!r}$"):
            SplitSizes(**{"train_size": 1, field: size})
    with pytest.raises(ValueError, match=r"SplitSizes has splits \('train', 'validation', "
                                         r"'test'\), not 'dev'"):
        sizes.split_size("dev")
