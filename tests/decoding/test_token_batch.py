import numpy as np
import pytest

from qstar_jax.decoding.token_batch import (bucket_size, last_positions, length_groups,
                                            pad_token_batch)


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


# Below 8 the buckets stay powers of two: 3 rows go in 4, not in three quarters of 4.
@pytest.mark.parametrize("n,expected", [(1, 1), (3, 4), (4, 4), (5, 6), (6, 6), (7, 8), (40, 48),
                                        (49, 64), (97, 128), (129, 192), (200, 256)])
def test_fine_buckets_add_three_quarters_of_each_power_of_two(n, expected):
    assert bucket_size(n, fine=True) == expected


def test_rows_of_very_different_lengths_are_padded_in_calls_of_their_own():
    rows = lambda members: bucket_size(len(members), fine=True)
    bucket = lambda n: bucket_size(n, minimum=16, fine=True)
    # 40 short rows and 8 long ones: 48 x 256 in one call against 48 x 96 + 8 x 256.
    lengths = [90] * 20 + [250] * 4 + [90] * 20 + [250] * 4
    assert length_groups(lengths, bucket, rows) == [
        ([*range(20), *range(24, 44)], 96), ([*range(20, 24), *range(44, 48)], 256)]
    # Neighbouring buckets: 2 x 96 + 2 x 128 saves only an eighth of 4 x 128.
    assert length_groups([90, 100, 90, 100], bucket, rows) == [([0, 1, 2, 3], 128)]


def test_rows_split_into_calls_that_save_exactly_a_quarter():
    # One call: 2 rows x 4 = 8 padded tokens; split: 1 x 2 + 1 x 4 = 6, three quarters.
    assert length_groups([2, 4], bucket=lambda n: n, rows=len) == [([0], 2), ([1], 4)]
