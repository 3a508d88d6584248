"""experiments/compile_share.py: each method alone from an empty compile cache, its
compile seconds read from JAX's compile log."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "experiments/compile_share.py"
spec = importlib.util.spec_from_file_location("compile_share", SCRIPT)
compile_share = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compile_share)

LOG = """\
WARNING:jax._src.dispatch:Finished XLA compilation of jit(stage) in 0.011480331 sec
rollouts: 100%|##########| 8/8 [00:56<00:00,  7.03s/problem]
WARNING:jax._src.dispatch:Finished XLA compilation of jit(traced) in 7.25 sec
WARNING:jax._src.compiler:Persistent compilation cache hit for 'jit_traced'
WARNING:jax._src.dispatch:Finished XLA compilation of jit(traced) in 1.5e+00 sec
WARNING:jax._src.dispatch:Finished tracing + transforming traced for pjit in 0.3 sec
"""


def test_compile_seconds_are_read_from_jaxs_log_and_the_long_ones_counted_apart():
    seconds = compile_share.compile_seconds(LOG)
    assert seconds == [0.011480331, 7.25, 1.5]
    assert compile_share.compile_share(seconds, 93.04) == {
        "wall_s": 93.0, "compile_s": 8.8, "programs": 3, "programs_over_1s": 2,
        "compile_over_1s_s": 8.8}


def test_each_method_runs_alone_on_an_empty_cache_with_the_compile_log_on(
        monkeypatch, capsys):
    calls = []

    def run(command, *, env, stdout, stderr, text):
        calls.append((command, env["JAX_LOG_COMPILES"], env["QSTAR_COMPILE_CACHE"]))
        out = Path(command[command.index("--out") + 1])
        out.mkdir()
        method = out.name
        (out / "summary.json").write_text(json.dumps(
            {"methods": {method: {"wall_s": 10.0 if method == "greedy" else 20.0}}}))
        return subprocess.CompletedProcess(command, 0, stderr=LOG)

    monkeypatch.setattr(compile_share.subprocess, "run", run)
    shares = compile_share.main(["CONFIG", "eval.samples=2", "--reuse", "RUN",
                                 "--methods", "greedy", "mctsr"])
    assert [command[3:] for command, _, _ in calls] == [
        ["CONFIG", "--reuse", "RUN", "--out", calls[k][0][7], "stages=[evaluate]",
         f"eval.methods=[{method}]", "eval.samples=2"]
        for k, method in enumerate(["greedy", "mctsr"])]
    assert calls[0][0][:3] == [sys.executable, "-m", "qstar_jax.run"]
    assert {flag for _, flag, _ in calls} == {"1"}
    assert len({cache for _, _, cache in calls}) == 2  # a cache of its own each
    assert shares["greedy"]["wall_s"] == 10.0 and shares["mctsr"]["wall_s"] == 20.0
    assert shares["mctsr"]["compile_s"] == 8.8
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == shares


def test_a_failing_run_stops_with_its_command_and_the_end_of_its_log(monkeypatch):
    monkeypatch.setattr(compile_share.subprocess, "run", lambda command, **_: (
        subprocess.CompletedProcess(command, 2, stderr="ConfigError: no such method")))
    with pytest.raises(SystemExit, match="exit 2.*\\n.*no such method"):
        compile_share.main(["CONFIG", "--reuse", "RUN", "--methods", "nope"])
