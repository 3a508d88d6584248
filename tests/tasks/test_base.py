"""The step helpers every task shares: a completion's steps and the text of a state."""

from qstar_jax.tasks.base import join_steps, split_steps, state_text


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
