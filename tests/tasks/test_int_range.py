import pytest
from omegaconf import OmegaConf

from qstar_jax.tasks.arithmetic.world import ArithmeticConfig
from qstar_jax.tasks.base import int_range
from qstar_jax.tasks.countdown.problems import CountdownConfig


def test_a_range_is_two_ordered_integers_above_the_floor():
    assert int_range("x", [1, 9]) == (1, 9)
    assert int_range("x", (-3, -3)) == (-3, -3)
    assert int_range("x", (0, 5), lowest=0) == (0, 5)


def test_a_range_from_yaml_is_taken_as_a_tuple():
    assert int_range("x", OmegaConf.create({"r": [2, 7]}).r, lowest=1) == (2, 7)
    assert int_range("x", range(3, 5)) == (3, 4)


@pytest.mark.parametrize("value, lowest", [
    ((1,), None), ((1, 2, 3), None), ((1.0, 2), None), ((True, 2), None), ("12", None),
    ((5, 4), None), ((0, 4), 1), (None, None),
])
def test_anything_else_names_where_it_came_from(value, lowest):
    with pytest.raises(ValueError, match=r"where\.range=.*give two integers"):
        int_range("where.range", value, lowest=lowest)


def test_the_message_quotes_the_value_as_given_and_the_floor():
    with pytest.raises(ValueError) as error:
        int_range("a.b", [5, 4])
    assert str(error.value) == ("a.b=[5, 4]: give two integers (low, high), both included, "
                                "with low <= high")
    with pytest.raises(ValueError) as error:
        int_range("a.b", "12", lowest=-2)
    assert str(error.value) == ("a.b='12': give two integers (low, high), both included, "
                                "with -2 <= low <= high")


def test_the_worlds_check_their_ranges_with_it():
    with pytest.raises(ValueError, match=r"CountdownConfig\.number_range=.*1 <= low"):
        CountdownConfig(number_range=(0, 9))
    with pytest.raises(ValueError, match=r"CountdownConfig\.target_range=.*low <= high"):
        CountdownConfig(target_range=(50, 10))
    with pytest.raises(ValueError, match=r"ArithmeticConfig\.add_range=.*0 <= low"):
        ArithmeticConfig(add_range=(-1, 5))
    assert CountdownConfig(number_range=[1, 9]).number_range == (1, 9)
