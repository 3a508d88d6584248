"""experiments/cascade_attention.py: one layer's decode attention over a search's
expansion on pages and in the two-level (cascade) layout, on tiny settings: the two
agree, and its JSON's window, speedup and per-step figures are of the times it measured
(here stand-ins, so the figures are exact)."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.experiments import experiment_module

SCRIPT = Path(__file__).parents[1] / "experiments/cascade_attention.py"
PAGED_MS, TWO_LEVEL_MS = 4.07, 0.8


@pytest.fixture
def cascade(monkeypatch):
    """The script as a module (``python experiments/cascade_attention.py`` runs it)."""
    return experiment_module(monkeypatch, "cascade_attention")


def stand_in_times(fn, args, reps):
    """The paged function takes 5 arguments, the two-level one 6."""
    return {5: PAGED_MS, 6: TWO_LEVEL_MS}[len(args)]


@pytest.mark.parametrize("prefix, suffix, window", [(20, 5, 128), (32, 7, 128),
                                                    (100, 40, 256)])
def test_pages_and_the_two_level_layout_attend_alike(cascade, monkeypatch, prefix, suffix,
                                                     window):
    """2 groups of 3 children on 16-token pages: a prefix ending part-way through a page
    (its last page copied into each child), one of whole pages, and one whose 140
    positions need a 256-position window."""
    monkeypatch.setattr(cascade, "timed", stand_in_times)
    result = cascade.setting(groups=2, children=3, prefix=prefix, suffix=suffix,
                             page_size=16, reps=1)
    assert result["max_abs_diff"] < 1e-5
    assert result == {"groups": 2, "children": 3, "prefix": prefix, "suffix": suffix,
                      "window": window, "paged_ms": PAGED_MS, "two_level_ms": TWO_LEVEL_MS,
                      "speedup": 5.09, "max_abs_diff": result["max_abs_diff"], "layers": 30,
                      "attention_ms_per_step_paged": 122.1,
                      "attention_ms_per_step_two_level": 24.0}


def test_a_time_is_the_median_after_one_compiling_call(cascade, monkeypatch):
    """Three timed calls of 2, 9 and 4 ms after the first: 4 ms."""
    clock = iter([0.0, 0.002, 1.0, 1.009, 2.0, 2.004])
    monkeypatch.setattr(cascade, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    calls = []
    assert cascade.timed(lambda x: calls.append(x) or x, (7,), reps=3) == pytest.approx(4.0)
    assert calls == [7] * 4


def stand_in_figures(children: int, prefix: int) -> dict:
    return {"children": children, "prefix": prefix, "window": 128, "paged_ms": 1.0,
            "two_level_ms": 0.5, "speedup": 2.0, "max_abs_diff": 0.0,
            "attention_ms_per_step_paged": 30.0, "attention_ms_per_step_two_level": 15.0}


def test_the_json_has_a_setting_per_children_and_prefix(cascade, monkeypatch, capsys):
    """Each setting's dict, as setting() gives it, in order: children 2 and 5, each with
    prefixes 10 and 40."""
    settings = []

    def setting(groups, children, prefix, suffix, page_size, reps):
        settings.append((groups, children, prefix, suffix, page_size, reps))
        return stand_in_figures(children, prefix)

    monkeypatch.setattr(cascade, "setting", setting)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--groups", "3", "--children", "2", "5",
                                      "--prefix", "10", "40", "--suffix", "6",
                                      "--page-size", "8", "--reps", "2"])
    cascade.main()
    assert settings == [(3, 2, 10, 6, 8, 2), (3, 2, 40, 6, 8, 2), (3, 5, 10, 6, 8, 2),
                        (3, 5, 40, 6, 8, 2)]
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures == {"settings": [stand_in_figures(children, prefix)
                                    for children in (2, 5) for prefix in (10, 40)]}
