"""The command line of ``python -m qstar_jax.run``: a config, overrides and folders."""

from qstar_jax.run import parse_args


def test_overrides_may_follow_the_output_folder():
    args = parse_args(["c.yaml", "--out", "runs/x", "seed=3", "decode.slots=8"])
    assert (args.config, args.overrides, args.out) == ("c.yaml", ["seed=3", "decode.slots=8"],
                                                       "runs/x")


def test_overrides_around_reuse_keep_their_order():
    args = parse_args(["c.yaml", "seed=3", "--reuse", "runs/a", "decode.slots=8"])
    assert (args.config, args.overrides, args.reuse) == ("c.yaml", ["seed=3", "decode.slots=8"],
                                                         "runs/a")


def test_with_no_config_the_first_override_is_not_taken_for_one():
    args = parse_args(["--out", "runs/x", "seed=3", "decode.slots=8"])
    assert (args.config, args.overrides) == (None, ["seed=3", "decode.slots=8"])
