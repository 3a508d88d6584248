"""``--reuse DIR`` links a finished run's trained outputs into a new run's folder, after
checking that every setting its training stages read is the same in both runs."""

import re

import pytest

from qstar_jax.config import ConfigError
from qstar_jax.config_loading import load_config, to_yaml
from qstar_jax.stages.reuse import reuse_trained_outputs

FILES = ("rollouts.jsonl", "labels.jsonl", "labels.jsonl.features.npz", "q_training.json",
         "step_outcomes.jsonl", "prm_training.json")
FOLDERS = ("policy", "second_policy", "q_checkpoint", "prm")


def trained_run(folder, *overrides):
    """A finished run's folder: its config, every trained output, and what evaluate wrote."""
    folder.mkdir()
    (folder / "config.yaml").write_text(to_yaml(load_config(None, list(overrides))))
    for name in FILES + ("results.jsonl", "summary.json"):
        (folder / name).write_text(name)
    for name in FOLDERS:
        (folder / name).mkdir()
        (folder / name / "config.json").write_text(name)
    return folder


def test_every_trained_output_is_linked_and_nothing_evaluate_wrote(tmp_path):
    source, out = trained_run(tmp_path / "source"), tmp_path / "out"
    out.mkdir()
    linked = reuse_trained_outputs(source, out, load_config(None, ["search.k=2"]))
    assert linked == ["policy", "second_policy", "rollouts.jsonl", "labels.jsonl",
                      "labels.jsonl.features.npz", "q_checkpoint", "q_training.json",
                      "step_outcomes.jsonl", "prm", "prm_training.json"]
    for name in linked:
        assert (out / name).is_symlink() and (out / name).resolve() == source / name
    assert (out / "prm" / "config.json").read_text() == "prm"
    assert sorted(p.name for p in out.iterdir()) == sorted(linked + ["reused_from.txt"])
    assert (out / "reused_from.txt").read_text() == f"{source}\n"


def test_a_relative_source_is_linked_by_its_absolute_path(tmp_path, monkeypatch):
    trained_run(tmp_path / "source")
    (tmp_path / "runs").mkdir()
    out = tmp_path / "runs" / "out"
    out.mkdir()
    monkeypatch.chdir(tmp_path)
    reuse_trained_outputs(tmp_path.joinpath("source").relative_to(tmp_path), out,
                          load_config(None))
    assert (out / "labels.jsonl").read_text() == "labels.jsonl"  # the link is not dangling
    assert (out / "reused_from.txt").read_text() == f"{tmp_path / 'source'}\n"


def test_a_folder_holding_trained_outputs_of_its_own_is_refused_and_its_links_are_not(
        tmp_path):
    """A run killed in train_q leaves its own q_checkpoint/: linked beside it, the source's
    q_training.json marked train_q done and evaluate read the folder's half-trained Q̂.
    Links made by an earlier --reuse of the same source are this run's, and stay."""
    source, out = trained_run(tmp_path / "source"), tmp_path / "out"
    out.mkdir()
    (out / "q_checkpoint").mkdir()
    with pytest.raises(ConfigError, match=r"already holds trained outputs of its own "
                                          r"\(q_checkpoint\), which would be mixed with"):
        reuse_trained_outputs(source, out, load_config(None))
    assert sorted(p.name for p in out.iterdir()) == ["q_checkpoint"]  # nothing linked
    (out / "q_checkpoint").rmdir()
    assert len(reuse_trained_outputs(source, out, load_config(None))) == 10
    assert reuse_trained_outputs(source, out, load_config(None)) == []  # run again: all there


def test_a_run_without_a_finished_train_q_stage_is_refused(tmp_path):
    source, out = trained_run(tmp_path / "source"), tmp_path / "out"
    out.mkdir()
    (source / "q_training.json").unlink()
    with pytest.raises(ConfigError, match="not a run folder with a finished train_q stage"):
        reuse_trained_outputs(source, out, load_config(None))
    assert list(out.iterdir()) == []


def test_a_source_config_the_checks_now_refuse_is_named_as_the_sources(tmp_path):
    """A run saved before a check was added (decode.pages without paging, then taken and
    ignored) is refused naming its folder, not as if the new run's config were wrong."""
    source, out = trained_run(tmp_path / "source"), tmp_path / "out"
    out.mkdir()
    saved = source / "config.yaml"
    saved.write_text(saved.read_text().replace("pages: 0", "pages: 4000"))
    message = (f"^--reuse {re.escape(str(source))}: its config.yaml no longer loads "
               r"\(decode.pages: sizes a paged cache, .*got pages=4000\); correct that setting "
               "there$")
    with pytest.raises(ConfigError, match=message):
        reuse_trained_outputs(source, out, load_config(None))
    assert list(out.iterdir()) == []


def test_only_the_settings_evaluation_alone_reads_may_differ(tmp_path):
    source = trained_run(tmp_path / "source", "task.train_problems=50", "decode.max_len=96")
    out = tmp_path / "out"
    out.mkdir()
    same = ["task.train_problems=50", "decode.max_len=96"]
    reuse_trained_outputs(source, out, load_config(None, [
        *same, "search.k=2", "eval.samples=3", "task.eval_split=validation",
        "task.eval_problems=7", "decode.slots=512", "decode.page_size=16",
        "decode.step_chunk=8", "decode.min_rows=1", "decode.pages=64", "stages=[evaluate]",
        "decode.row_windows=gather", "out_dir=elsewhere", "mesh.data=1", "mesh.model=2",
        "policy_training.checkpoint_every=9"]))
    refused = tmp_path / "refused"
    refused.mkdir()
    with pytest.raises(ConfigError, match=r"different settings for decode\.max_len, "
                                          r"decode\.max_steps, label\.gamma, seed, "
                                          r"task\.train_problems; only out_dir,"):
        reuse_trained_outputs(source, refused, load_config(None, [
            "search.k=2", "seed=1", "decode.max_steps=5", "label.gamma=0.5"]))
    assert list(refused.iterdir()) == []  # refused before any link or note


def test_launch_settings_of_a_multi_process_run_do_not_count(tmp_path):
    """config.yaml leaves the distributed settings out, so process 0 of a multi-process
    run that reuses a run compares its own launch settings with none."""
    source, out = trained_run(tmp_path / "source"), tmp_path / "out"
    out.mkdir()
    assert len(reuse_trained_outputs(source, out, load_config(None, [
        "distributed.coordinator=localhost:1234", "distributed.num_processes=2",
        "distributed.process_id=0", "distributed.heartbeat_timeout_s=300"]))) == 10


def test_an_output_the_source_run_never_trained_is_not_linked(tmp_path):
    """A run without a PRM or a second policy leaves no prm/, prm_training.json or
    second_policy/: the new run gets no link to them, dangling or not, so its own
    train_prm stage can still write prm/."""
    source, out = trained_run(tmp_path / "source"), tmp_path / "out"
    out.mkdir()
    for name in ("prm_training.json", "step_outcomes.jsonl"):
        (source / name).unlink()
    for name in ("prm", "second_policy"):
        (source / name / "config.json").unlink()
        (source / name).rmdir()
    linked = reuse_trained_outputs(source, out, load_config(None))
    assert linked == ["policy", "rollouts.jsonl", "labels.jsonl", "labels.jsonl.features.npz",
                      "q_checkpoint", "q_training.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted(linked + ["reused_from.txt"])


def test_a_prm_whose_training_has_not_finished_is_not_linked_nor_written_through(tmp_path):
    """A source killed in train_prm (or still in it) holds prm/ without prm_training.json.
    Linked, this run's train_prm would resume inside the source's folder, appending to its
    step_outcomes.jsonl and checkpointing into its prm/. Neither is linked: the label
    stage's completions are copied for this run's train_prm to extend in its own folder."""
    source, out = trained_run(tmp_path / "source"), tmp_path / "out"
    out.mkdir()
    (source / "prm_training.json").unlink()
    linked = reuse_trained_outputs(source, out, load_config(None))
    assert linked == ["policy", "second_policy", "rollouts.jsonl", "labels.jsonl",
                      "labels.jsonl.features.npz", "q_checkpoint", "q_training.json"]
    assert not (out / "prm").exists()
    outcomes = out / "step_outcomes.jsonl"
    assert not outcomes.is_symlink() and outcomes.read_text() == "step_outcomes.jsonl"
    with outcomes.open("a") as f:
        f.write("this run's")
    assert (source / "step_outcomes.jsonl").read_text() == "step_outcomes.jsonl"
