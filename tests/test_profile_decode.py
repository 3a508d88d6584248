"""experiments/profile_decode.py's arguments: the paged cache's flags, row windows
(which the trie sampler has not) and a run's mesh (collect's) refuse, with a message
naming them, the settings in which they would be ignored or meaningless."""

import sys

import pytest

from tests.support.experiments import experiment_module


@pytest.mark.parametrize("argv, message", [
    (["--pages", "64"], "--pages sizes a paged cache: give --page-size too"),
    (["--page-size", "-16"], "--page-size and --pages must be >= 0"),
    (["--page-size", "16", "--pages", "-1"], "--page-size and --pages must be >= 0"),
    (["--page-size", "16", "--trie", "c.yaml"], "--trie pages its cache as its config says"),
    (["--row-windows", "copy", "--trie", "c.yaml"], "the trie sampler, which has none"),
    (["--run-mesh"], "--run-mesh times --collect on a run's mesh: give --collect"),
    (["--run-mesh", "--trie", "c.yaml"], "--run-mesh times --collect on a run's mesh"),
])
def test_paging_flags_refuse_what_they_cannot_do(monkeypatch, capsys, argv, message):
    profile_decode = experiment_module(monkeypatch, "profile_decode")
    monkeypatch.setattr(sys, "argv", ["profile_decode.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        profile_decode.parse_args()
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_paging_flags_pass_through_where_they_apply(monkeypatch):
    profile_decode = experiment_module(monkeypatch, "profile_decode")
    monkeypatch.setattr(sys, "argv", ["profile_decode.py", "--page-size", "16", "--pages", "64"])
    args = profile_decode.parse_args()
    assert (args.page_size, args.pages, args.trie, args.collect) == (16, 64, None, None)
    assert args.row_windows == "auto"  # the decoder's default
    monkeypatch.setattr(sys, "argv", ["profile_decode.py", "--collect", "c.yaml",
                                      "--page-size", "16", "--row-windows", "copy"])
    args = profile_decode.parse_args()
    assert (args.collect, args.page_size, args.row_windows) == ("c.yaml", 16, "copy")
