import os
from pathlib import Path

import pytest

from qstar_jax.outputs import durable


def test_a_missing_file_reads_as_empty(tmp_path):
    assert durable.read_jsonl(tmp_path / "absent.jsonl") == ([], 0)


def test_a_torn_tail_is_skipped_then_cut_off_before_the_next_append(tmp_path):
    path = tmp_path / "log.jsonl"
    with durable.open_for_append(path) as f:
        durable.append_records(f, [{"a": 1}, {"b": 2}])
    whole = path.stat().st_size
    with path.open("a") as f:
        f.write('{"c": ')  # killed mid-write
    assert durable.read_jsonl(path) == ([{"a": 1}, {"b": 2}], whole)
    with durable.open_for_append(path) as f:
        durable.append_record(f, {"c": 3})
    assert durable.read_jsonl(path)[0] == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_a_damaged_complete_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"b"\n{"c": 3}\n')
    with pytest.raises(durable.CorruptRecordError, match=r"log.jsonl:2 is not valid JSON"):
        durable.read_jsonl(path)
    path.write_text('{"a": 1}\n\n{"c": 3}\n')  # a blank line is no damage
    assert durable.read_jsonl(path) == ([{"a": 1}, {"c": 3}], 19)


def test_a_damaged_line_is_damaged_output_saying_what_to_delete(tmp_path):
    """Damaged output is one error type, which run reports in one line; by default the line
    (or the file) goes, as an append-only file's missing records are made again."""
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"b"\n{"c": 3}\n')
    with pytest.raises(durable.DamagedOutputError) as raised:
        durable.read_jsonl(path)
    assert str(raised.value) == (
        f"{path}:2 is not valid JSON (Expecting ':' delimiter): the file is damaged beyond a "
        "torn last line; delete that line (or the file) and run again: the run makes again "
        "the records it is missing")
    with pytest.raises(durable.DamagedOutputError, match=r"torn last line; delete it all$"):
        durable.read_jsonl(path, remedy="delete it all")


def test_an_errors_first_line_is_cut_short_for_a_one_line_report():
    assert durable.first_line(ValueError("OUT_OF_RANGE: short\n  {json: 1}")) == (
        "OUT_OF_RANGE: short")
    assert durable.first_line(ValueError("x" * 300), limit=10) == "xxxxxxx..."
    assert durable.first_line(KeyError()) == "KeyError"


def test_a_read_failure_is_found_under_the_bare_exception_orbax_raises_it_from():
    cut = ValueError("OUT_OF_RANGE: byte range [0, 3825) is not valid for value of size 10")
    try:
        raise Exception("Encountered error while reading array index") from cut
    except Exception as wrapped:  # noqa: BLE001
        assert durable.read_failure(wrapped) is cut
    assert durable.read_failure(TypeError("a bug")) is None


def test_an_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    durable.write_atomically(path, lambda f: f.write(b"old"))
    durable.write_atomically(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_a_write_killed_midway_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "summary.json"
    durable.write_atomically(path, lambda f: f.write(b"old"))

    def killed(f):
        f.write(b"half of the n")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        durable.write_atomically(path, killed)
    assert path.read_bytes() == b"old"
    durable.write_atomically(path, lambda f: f.write(b"new"))  # a stale temporary is no obstacle
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_process_other_than_the_writer_writes_nothing_and_leaves_a_torn_tail(
        tmp_path, monkeypatch):
    """Process 1 of a multi-process run computes the same records as process 0 and reads
    process 0's files, which it must not touch, even to cut a tail process 0 is writing."""
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"b": ')
    monkeypatch.setattr(durable, "is_writer", lambda: False)
    with durable.open_for_append(path) as f:
        durable.append_records(f, [{"c": 3}])
    durable.write_atomically(tmp_path / "sub" / "summary.json", lambda f: f.write(b"new"))
    # Process 1 removing the label journal before process 0 wrote the labels lost them.
    durable.remove_file(path)
    assert path.read_text() == '{"a": 1}\n{"b": '
    assert [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]
    monkeypatch.setattr(durable, "is_writer", lambda: True)
    durable.remove_file(path)
    durable.remove_file(path)  # gone already: nothing to do
    assert list(tmp_path.iterdir()) == []


def test_what_counts_is_forced_to_disk_before_it_counts(tmp_path, monkeypatch):
    """Each fsync is recorded with what its file held then (read through /proc): the records
    written and flushed before it, the new file's bytes before the rename, then the folder,
    which makes the rename itself durable."""
    synced = []

    def fsync(fd):
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        synced.append((target.name, target.read_bytes() if target.is_file() else "folder"))
    monkeypatch.setattr(durable.os, "fsync", fsync)
    path = tmp_path / "run" / "log.jsonl"  # open_for_append makes the folder
    with durable.open_for_append(path) as f:
        durable.append_records(f, [{"a": 1}, {"b": "é"}])
        assert synced == [("log.jsonl", '{"a": 1}\n{"b": "é"}\n'.encode())]
    durable.write_atomically(path.parent / "summary.json", lambda f: f.write(b"new"))
    assert synced[1:] == [("summary.json.tmp", b"new"), ("run", "folder")]
    assert (path.parent / "summary.json").read_bytes() == b"new"


def test_a_folder_copy_killed_midway_leaves_no_folder_and_the_next_copy_is_whole(
        tmp_path, monkeypatch):
    """A copy killed after its first file leaves no ``target`` (a partial one would pass
    for whole); the next copy clears what the killed one left and is forced to disk, each
    file in the temporary folder and then the folder the rename lands in."""
    source = tmp_path / "weak_policy"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "sub" / "weights").write_text("w")
    target = tmp_path / "round_0" / "policy"
    copied = []

    def killed_after_one_file(src, dst, **kwargs):
        if copied:
            raise KeyboardInterrupt
        copied.append(src)
        return copyfile(src, dst, **kwargs)
    copyfile = durable.shutil.copyfile
    monkeypatch.setattr(durable.shutil, "copyfile", killed_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        durable.copy_folder_atomically(source, target)
    assert len(copied) == 1 and not target.exists()
    monkeypatch.setattr(durable.shutil, "copyfile", copyfile)
    synced = []
    monkeypatch.setattr(durable.os, "fsync", lambda fd: synced.append(
        os.readlink(f"/proc/self/fd/{fd}").removeprefix(str(tmp_path))))
    durable.copy_folder_atomically(source, target)
    assert (target / "config.json").read_text() == "{}"
    assert (target / "sub" / "weights").read_text() == "w"
    assert [p.name for p in target.parent.iterdir()] == ["policy"]
    assert sorted(synced[:2]) == ["/round_0/policy.partial/config.json",
                                  "/round_0/policy.partial/sub/weights"]
    assert synced[2:] == ["/round_0"]
