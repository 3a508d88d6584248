"""Loading records from local files, seeded subsets, malformed records, the offline error."""

import dataclasses
import http.server
import json
import logging
import socket
import threading
import time
from pathlib import Path

import datasets
import pytest

from qstar_jax.tasks import datasets as task_datasets
from qstar_jax.tasks.base import MalformedRecordError, Problem
from qstar_jax.tasks.datasets import (Column, DataFilesError, DatasetSource,
                                      DatasetUnavailableError, hub_unreachable_reason,
                                      load_problems, load_records)

FIXTURES = Path(__file__).parents[1] / "fixtures"
GSM8K_TEST = FIXTURES / "gsm8k" / "test.jsonl"  # 6 records
GSM8K_MALFORMED = FIXTURES / "gsm8k" / "malformed.jsonl"  # record 2 has no '####'

SOURCE = DatasetSource(task_name="toy", hub_name="example/toy", hub_configs=("main",),
                       columns=(Column(name="question", holds="str: the question"),
                                Column(name="answer", holds="str: ends with '#### N'")))


def question_and_number(record, default_id):
    if "####" not in record["answer"]:
        raise ValueError("its 'answer' has no '####' line")
    return Problem(id=default_id, question=record["question"],
                   reference=record["answer"].split("####")[-1].strip())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf_cache"))


def load(cache_dir, **kwargs):
    kwargs.setdefault("data_files", {"test": str(GSM8K_TEST)})
    return load_problems(SOURCE, "test", question_and_number, cache_dir=cache_dir, **kwargs)


def test_jsonl_records_load_in_file_order(cache_dir):
    records = load_records(SOURCE, "test", data_files=str(GSM8K_TEST), cache_dir=cache_dir)
    assert records.column_names == ["question", "answer"]
    assert len(records) == 6
    assert records[0]["answer"].endswith("#### 38")


def test_local_files_are_prepared_under_the_given_cache_dir(tmp_path):
    load_records(SOURCE, "test", data_files=str(GSM8K_TEST), cache_dir=str(tmp_path))
    assert (tmp_path / "json").is_dir()  # the json builder's prepared copy, not ~/.cache's


def test_parquet_records_keep_hub_types(cache_dir):
    source = DatasetSource(task_name="toy", hub_name="example/toy", hub_configs=(None,),
                           columns=(Column(name="test_list", holds="list[str]"),))
    records = load_records(source, "test", cache_dir=cache_dir,
                           data_files={"test": [str(FIXTURES / "mbpp" / "full_test.parquet")]})
    assert records.features["task_id"].dtype == "int32"
    assert records[0]["task_id"] == 901
    assert records[0]["test_list"][0] == "assert max_of_three(1, 5, 3) == 5"


def test_problem_ids_name_task_split_and_index(cache_dir):
    problems = load(cache_dir)
    assert [p.id for p in problems] == [f"toy/test/{i}" for i in range(6)]
    assert [p.reference for p in problems] == ["38", "26", "450", "8", "-6", "195"]


def test_seeded_subset_is_reproducible_ordered_and_nested(cache_dir):
    three = [p.id for p in load(cache_dir, limit=3, seed=7)]
    assert three == ["toy/test/0", "toy/test/2", "toy/test/5"]
    assert three == [p.id for p in load(cache_dir, limit=3, seed=7)]
    # Seed 0 when none is given.
    assert [p.id for p in load(cache_dir, limit=3)] == ["toy/test/2", "toy/test/3", "toy/test/5"]
    assert len(set(three)) == 3 and three == sorted(three)
    assert set(three) <= {p.id for p in load(cache_dir, limit=5, seed=7)}
    subsets = {tuple(p.id for p in load(cache_dir, limit=3, seed=seed)) for seed in range(6)}
    assert len(subsets) > 1


def test_limit_at_or_above_size_keeps_everything(cache_dir):
    assert len(load(cache_dir, limit=6)) == 6
    assert len(load(cache_dir, limit=100)) == 6


@pytest.mark.parametrize("limit", [0, True, 2.5])  # True was one problem, 2.5 a TypeError
def test_a_limit_that_is_no_positive_integer_is_rejected(cache_dir, limit):
    with pytest.raises(ValueError, match=f"limit must be a positive number of problems or "
                                         f"None, got {limit!r}"):
        load(cache_dir, limit=limit)


def test_malformed_record_error_names_its_index(cache_dir):
    with pytest.raises(MalformedRecordError, match=r"record 2: its 'answer' has no '####'.*"
                                                   r"skip_malformed=True"):
        load(cache_dir, data_files={"test": str(GSM8K_MALFORMED)})


def test_skip_malformed_drops_and_logs_the_count(cache_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="qstar_jax.tasks.datasets"):
        problems = load(cache_dir, data_files={"test": str(GSM8K_MALFORMED)},
                        skip_malformed=True)
    assert [p.id for p in problems] == ["toy/test/0", "toy/test/1", "toy/test/3"]
    assert "skipped 1 malformed record(s) of 4" in caplog.text
    assert "record 2" in caplog.text


def test_subset_is_drawn_from_well_formed_records_only(cache_dir):
    problems = load(cache_dir, data_files={"test": str(GSM8K_MALFORMED)},
                    skip_malformed=True, limit=3, seed=1)
    assert [p.id for p in problems] == ["toy/test/0", "toy/test/1", "toy/test/3"]


def test_a_split_of_malformed_records_only_is_an_error_even_when_skipping(cache_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"question": f"Q{i}", "answer": "no total"}) + "\n"
                           for i in range(2)))
    with pytest.raises(MalformedRecordError, match=r"toy split 'test' has no well-formed "
                                                   r"records \(2 read, 2 malformed\)"):
        load(cache_dir, data_files={"test": str(bad)}, skip_malformed=True)


def test_two_records_of_one_id_are_refused_naming_the_files_and_the_id(cache_dir, tmp_path):
    """Results and resume are keyed by problem id: the second record of an id would pass
    for done once the first is. Refused even when skipping malformed records."""
    data = tmp_path / "ids.jsonl"
    data.write_text("".join(json.dumps({"question": f"Q{i}", "answer": "#### 1", "id": id_})
                            + "\n" for i, id_ in enumerate(["a", "b", "a"])))

    def with_its_own_id(record, default_id):
        return dataclasses.replace(question_and_number(record, default_id), id=record["id"])

    for skip_malformed in (False, True):
        with pytest.raises(MalformedRecordError) as raised:
            load_problems(SOURCE, "test", with_its_own_id, data_files=str(data),
                          cache_dir=cache_dir, skip_malformed=skip_malformed)
        assert str(raised.value) == (
            f"toy split 'test' from local files ['{data}']: two records have the id 'a'; a "
            "run keys its results and resumes by problem id: give each record an id of its own")


def test_an_empty_or_unparsable_file_is_one_malformed_error_naming_it(cache_dir, tmp_path):
    empty, broken = tmp_path / "empty.jsonl", tmp_path / "broken.jsonl"
    empty.write_text("")
    broken.write_text('{"question": "Q", "answer": "#### 1"}\n{"question": "R", "answer": \n')
    with pytest.raises(MalformedRecordError) as raised:
        load_records(SOURCE, "test", data_files=str(empty), cache_dir=cache_dir)
    assert str(raised.value).startswith(
        f"toy split 'test': cannot read JSON records from local files ['{empty}'] (no records); "
        "each file needs one record per line (JSONL), a list of records (JSON) or a table "
        "(Parquet) with the columns: question (str: the question); answer")
    with pytest.raises(MalformedRecordError, match=r"^toy split 'test': cannot read JSON "
                       r"records from local files \[.*broken\.jsonl'\] \(JSON parse error: "
                       r"Invalid value\. in row 1\)"):
        load_records(SOURCE, "test", data_files=str(broken), cache_dir=cache_dir)


def test_a_file_that_is_not_parquet_or_is_cut_short_is_a_malformed_error_naming_it(
        cache_dir, tmp_path):
    # pyarrow's own error came through as it was, naming no file.
    not_parquet, cut = tmp_path / "not.parquet", tmp_path / "cut.parquet"
    not_parquet.write_text("question,answer\nQ,#### 1\n")
    whole = (FIXTURES / "mbpp" / "full_malformed.parquet").read_bytes()
    cut.write_bytes(whole[:len(whole) // 2])
    for path in (not_parquet, cut):
        with pytest.raises(MalformedRecordError, match=(
                rf"^toy split 'test': cannot read PARQUET records from local files "
                rf"\['{path}'\] \(Parquet magic bytes not found in footer")):
            load_records(SOURCE, "test", data_files=str(path), cache_dir=cache_dir)


@pytest.mark.parametrize("data_files", [5, {"test": None}, {"test": [str(GSM8K_TEST), 3]}])
def test_data_files_that_are_not_paths_are_refused(cache_dir, data_files):
    with pytest.raises(DataFilesError, match="^data files must be a path or glob, or a list "
                                             "of them, got "):
        load_records(SOURCE, "test", data_files=data_files, cache_dir=cache_dir)


def test_missing_column_is_named(cache_dir):
    source = DatasetSource(task_name="toy", hub_name="example/toy", hub_configs=("main",),
                           columns=(Column(name="problem", holds="str: the problem"),))
    with pytest.raises(MalformedRecordError, match=r"lacks the column\(s\) \['problem'\]"):
        load_records(source, "test", data_files=str(GSM8K_TEST), cache_dir=cache_dir)


def test_a_missing_optional_column_is_no_error(cache_dir):
    source = DatasetSource(task_name="toy", hub_name="example/toy", hub_configs=("main",),
                           columns=(*SOURCE.columns,
                                    Column(name="level", holds="str", required=False)))
    records = load_records(source, "test", data_files=str(GSM8K_TEST), cache_dir=cache_dir)
    assert records.column_names == ["question", "answer"] and len(records) == 6


def test_data_files_without_the_split_says_how_to_add_it(cache_dir):
    with pytest.raises(ValueError, match=r"no entry for split 'train'.*data_files\.train="):
        load_records(SOURCE, "train", data_files={"test": str(GSM8K_TEST)},
                     cache_dir=cache_dir)


def test_data_files_may_be_a_path_or_a_list_of_paths_per_split(cache_dir):
    assert len(load_records(SOURCE, "test", data_files=GSM8K_TEST, cache_dir=cache_dir)) == 6
    both = load_records(SOURCE, "test", data_files={"test": [GSM8K_TEST, GSM8K_MALFORMED]},
                        cache_dir=cache_dir)
    assert [answer.split()[-1] for answer in both["answer"]] == [  # the files in order
        "38", "26", "450", "8", "-6", "195", "38", "26", "21.", "8"]
    with pytest.raises(ValueError, match="data_files lists no files"):
        load_records(SOURCE, "test", data_files={"test": []}, cache_dir=cache_dir)


def test_a_leading_tilde_in_data_files_is_the_home_folder(cache_dir, monkeypatch):
    """As a shell would read it: YAML and key.with.dots=~/x overrides keep the '~'."""
    monkeypatch.setenv("HOME", str(FIXTURES))
    records = load_records(SOURCE, "test", data_files={"test": "~/gsm8k/test.jsonl"},
                           cache_dir=cache_dir)
    assert len(records) == 6 and records["answer"][0].endswith("#### 38")


def test_unknown_or_mixed_extensions_are_rejected(cache_dir):
    with pytest.raises(ValueError, match=r"must end in one of \['\.json', '\.jsonl', "
                                         r"'\.parquet'\]"):
        load_records(SOURCE, "test", data_files="problems.csv", cache_dir=cache_dir)
    with pytest.raises(ValueError, match="must share a format"):
        load_records(SOURCE, "test", data_files=["a.jsonl", "b.parquet"], cache_dir=cache_dir)


def test_a_folder_given_as_data_files_asks_for_the_files_in_it(cache_dir, tmp_path):
    with pytest.raises(task_datasets.DataFilesError) as raised:
        load_records(SOURCE, "test", data_files=str(tmp_path), cache_dir=cache_dir)
    assert str(raised.value) == (f"'{tmp_path}' is a folder; give the files in it, e.g. "
                                 f"'{tmp_path}/*.jsonl'")


def test_no_hub_and_no_files_says_how_to_point_at_local_files(cache_dir, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    with pytest.raises(DatasetUnavailableError) as raised:
        load_records(SOURCE, "test", cache_dir=cache_dir)
    message = str(raised.value)
    assert ("toy split 'test' needs the Hugging Face hub dataset example/toy (config(s): "
            "main), which cannot be used: HF_DATASETS_OFFLINE is set. ") in message
    assert "task.options.data_files.test=/path/to/test.jsonl" in message
    assert "make_task('toy', data_files={'test': '/path/to/test.jsonl'})" in message
    assert "question (str: the question); answer (str: ends with '#### N')" in message


class StubSession:
    """Stands in for huggingface_hub's session: HEAD answers after ``delay_s``."""

    def __init__(self, delay_s=0.0):
        self.delay_s, self.timeouts = delay_s, []

    def head(self, endpoint, timeout):
        self.timeouts.append(timeout)
        time.sleep(self.delay_s)


@pytest.mark.parametrize("var", ["HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"])
@pytest.mark.parametrize("value", ["1", "ON", "yes", " True "])
def test_offline_flag_is_the_reason(monkeypatch, var, value):
    for unset in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(unset, raising=False)
    monkeypatch.setenv(var, value)
    assert hub_unreachable_reason() == f"{var} is set"


@pytest.mark.parametrize("value", ["0", "off", "false", ""])
def test_an_offline_flag_set_to_no_leaves_the_hub_to_the_probe(monkeypatch, value):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    session = StubSession()
    monkeypatch.setattr(task_datasets.huggingface_hub, "get_session", lambda: session)
    assert hub_unreachable_reason("http://hub.test", timeout_s=2.0) is None
    assert session.timeouts == [2.0]


def test_a_probe_that_hangs_is_given_up_half_a_second_past_its_timeout(monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    # The request ignores its own timeout (as a hanging DNS lookup does).
    session = StubSession(delay_s=1.5)
    monkeypatch.setattr(task_datasets.huggingface_hub, "get_session", lambda: session)
    assert hub_unreachable_reason("http://hub.test", timeout_s=0.1) == (
        "http://hub.test did not answer within 0.1 s")


def test_the_hub_is_probed_only_outside_offline_mode(cache_dir, monkeypatch):
    """Outside datasets' offline mode a failed probe (given hub_probe_timeout_s) stops the
    load before datasets is asked; in offline mode datasets reads its cache unprobed, and a
    dataset missing there is the same clear error."""
    probes, loads = [], []

    def probe(**kwargs):
        probes.append(kwargs)
        return "the probe failed"

    def load_dataset(name, config, *, split, cache_dir):
        loads.append((name, config, split))
        raise ConnectionError("not in the cache")

    monkeypatch.setattr(task_datasets, "hub_unreachable_reason", probe)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    with pytest.raises(DatasetUnavailableError, match="cannot be used: the probe failed. "):
        load_records(SOURCE, "test", cache_dir=cache_dir, hub_probe_timeout_s=0.25)
    assert (probes, loads) == ([{"timeout_s": 0.25}], [])
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetUnavailableError,
                       match=r"cannot be used: not cached \(not in the cache\)\. Point"):
        load_records(SOURCE, "test", cache_dir=cache_dir, hub_probe_timeout_s=0.25)
    assert (len(probes), loads) == (1, [("example/toy", "main", "test")])


def test_probe_reports_an_endpoint_that_refuses(monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as sock:  # a port that was free a moment ago refuses connections
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    assert hub_unreachable_reason(endpoint, timeout_s=1.0).startswith(
        f"{endpoint} could not be reached (")


def test_probe_accepts_an_endpoint_that_answers(monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert hub_unreachable_reason(f"http://127.0.0.1:{server.server_port}",
                                      timeout_s=5.0) is None
    finally:
        server.shutdown()
        server.server_close()


# Each task on the hub: (task, hub name, configs loaded in order, a fixture in that
# dataset's format that stands in for one config's split).
HUB_TASKS = [
    ("gsm8k", "openai/gsm8k", ["main"], FIXTURES / "gsm8k" / "test.jsonl"),
    ("math", "EleutherAI/hendrycks_math",
     ["algebra", "counting_and_probability", "geometry", "intermediate_algebra",
      "number_theory", "prealgebra", "precalculus"], FIXTURES / "math" / "test.jsonl"),
    ("math500", "HuggingFaceH4/MATH-500", [None], FIXTURES / "math500" / "test.jsonl"),
    ("mbpp", "google-research-datasets/mbpp", ["full"], FIXTURES / "mbpp" / "full_test.parquet"),
    ("mbpp_sanitized", "google-research-datasets/mbpp", ["sanitized"],
     FIXTURES / "mbpp" / "sanitized_test.jsonl"),
]


@pytest.mark.parametrize(("task_name", "hub_name", "configs", "fixture"), HUB_TASKS,
                         ids=[t[0] for t in HUB_TASKS])
def test_without_local_files_each_task_loads_its_hub_dataset(
        task_name, hub_name, configs, fixture, cache_dir, monkeypatch):
    """Where the hub answers, ``datasets.load_dataset`` gets the task's hub name and every
    config in order (MATH: all seven subjects), and their records are concatenated."""
    from qstar_jax.tasks.registry import make_task

    builder = "parquet" if fixture.suffix == ".parquet" else "json"
    one_config = datasets.load_dataset(builder, data_files={"test": str(fixture)}, split="test",
                                       cache_dir=cache_dir)
    from_file = make_task(task_name, data_files={"test": str(fixture)},
                          cache_dir=cache_dir).load("test")
    assert len(from_file) == len(one_config)
    calls = []

    def hub(name, config, *, split, cache_dir):
        calls.append((name, config, split))
        return one_config

    monkeypatch.setattr(task_datasets, "hub_unreachable_reason", lambda **_: None)
    monkeypatch.setattr(datasets, "load_dataset", hub)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    from_hub = make_task(task_name, cache_dir=cache_dir).load("test")
    assert calls == [(hub_name, config, "test") for config in configs]
    assert ([(p.question, p.reference) for p in from_hub]
            == [(p.question, p.reference) for p in from_file] * len(configs))


def test_a_json_array_file_loads_like_jsonl(cache_dir, tmp_path):
    records = load_records(SOURCE, "test", data_files=str(GSM8K_TEST), cache_dir=cache_dir)
    array_file = tmp_path / "test.JSON"  # the extension's case does not matter
    array_file.write_text(json.dumps(records.to_list()))
    from_array = load_records(SOURCE, "test", data_files=str(array_file), cache_dir=cache_dir)
    assert from_array.to_list() == records.to_list()
