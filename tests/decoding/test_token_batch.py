import numpy as np
import pytest

from qstar_jax.decoding.token_batch import bucket_size, last_positions, pad_token_batch


@pytest.mark.parametrize("n, minimum, expected", [(1, 1, 1), (3, 1, 4), (4, 1, 4), (5, 16, 16),
                                                   (17, 16, 32), (64, 16, 64)])
def test_bucket_size_is_the_next_power_of_two(n, minimum, expected):
    assert bucket_size(n, minimum=minimum) == expected


def test_padding_rounds_to_a_multiple_or_to_a_power_of_two():
    rows = [list(range(1, 34)), [5, 6]]  # the longest holds 33 tokens
    assert pad_token_batch(rows, multiple_of=16).tokens.shape == (2, 48)
    assert pad_token_batch(rows).tokens.shape == (2, 64)
    assert pad_token_batch([[1, 2, 3]], min_length=1).tokens.shape == (1, 4)
    padded = pad_token_batch(rows, pad_id=0, multiple_of=16)
    np.testing.assert_array_equal(padded.lengths, [33, 2])
    assert padded.tokens[1, 2:].tolist() == [0] * 46


def test_padding_rows_hold_only_the_pad_id_and_no_tokens():
    padded = pad_token_batch([[4, 5, 6], [7]], pad_id=9, batch=4, length=5)
    np.testing.assert_array_equal(padded.tokens, [[4, 5, 6, 9, 9], [7, 9, 9, 9, 9],
                                                  [9] * 5, [9] * 5])
    np.testing.assert_array_equal(padded.lengths, [3, 1, 0, 0])
    np.testing.assert_array_equal(last_positions(padded), [2, 0, 0, 0])


@pytest.mark.parametrize("lists, kwargs, message", [
    ([[1], []], {}, "no empty sequence"),
    ([], {}, "at least one sequence"),
    ([[1, 2, 3]], {"length": 2}, "does not fit length=2"),
    ([[1], [2], [3]], {"batch": 2}, "do not fit batch=2"),
])
def test_bad_batches_are_rejected(lists, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pad_token_batch(lists, **kwargs)
