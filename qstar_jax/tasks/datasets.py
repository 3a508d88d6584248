"""Load a task's records through Hugging Face ``datasets``: from the hub, or local files.

Local files are JSON, JSONL or Parquet with the hub's column names; the builder is picked
from the file extension. Without local files the hub is used, but only after a quick
reachability check (or when the offline flags are set), so an offline machine gets a
clear error in seconds naming the option that points the task at local files, instead
of minutes of retries.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Union

import huggingface_hub
import numpy as np

from qstar_jax.tasks.base import (SKIP_MALFORMED, MalformedRecordError, Problem,
                                  check_unique_ids)
from qstar_jax.values import is_integer

if TYPE_CHECKING:
    import datasets as hf_datasets

logger = logging.getLogger(__name__)

# Files for the requested split, or a mapping split -> files (each a path or a list).
DataFiles = Union[str, os.PathLike, Sequence[str], Mapping[str, Any]]

BUILDER_BY_EXTENSION = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
OFFLINE_ENV_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
HUB_PROBE_TIMEOUT_S = 3.0


class DatasetUnavailableError(RuntimeError):
    """Neither local files nor the hub can provide a split; the message says what to do."""


class DataFilesError(ValueError):
    """``data_files`` gives no files for a split, or files of a format not read here."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Column:
    name: str
    holds: str  # what the task expects in it, for error messages
    required: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetSource:
    """Where a task's records come from and which columns it reads.

    ``hub_configs`` are loaded and concatenated in order (MATH has one per subject);
    ``(None,)`` loads the dataset's default config. ``other_layout``: a sentence ending a
    missing-column error, naming the task that reads files of a related layout.
    """

    task_name: str
    hub_name: str
    hub_configs: tuple[str | None, ...]
    columns: tuple[Column, ...]
    other_layout: str = ""


def load_records(source: DatasetSource, split: str, *, data_files: DataFiles | None = None,
                 cache_dir: str | None = None,
                 hub_probe_timeout_s: float = HUB_PROBE_TIMEOUT_S) -> hf_datasets.Dataset:
    """All records of ``split``, from ``data_files`` when given, else from the hub."""
    if data_files is not None:
        dataset = _load_local_files(source, split, files_for_split(data_files, split),
                                    cache_dir)
    else:
        dataset = _load_from_hub(source, split, cache_dir, hub_probe_timeout_s)
    where = records_origin(source, data_files, split)
    missing = [c.name for c in source.columns
               if c.required and c.name not in dataset.column_names]
    if missing:
        raise MalformedRecordError(
            f"{source.task_name} split {split!r} from {where} lacks the column(s) {missing}; "
            f"it has {dataset.column_names}. Expected columns: {_describe_columns(source)}."
            + (f" {source.other_layout}" if source.other_layout else ""))
    return dataset


def load_problems(source: DatasetSource, split: str,
                  to_problem: Callable[[dict[str, Any], str], Problem], *,
                  data_files: DataFiles | None = None, cache_dir: str | None = None,
                  limit: int | None = None, seed: int = 0,
                  skip_malformed: bool = False) -> list[Problem]:
    """Problems of ``split``; ``limit`` keeps a seeded random subset, in dataset order.

    ``to_problem(record, default_id)`` makes a Problem, with ``default_id``
    (``task/split/index``) as its id unless the record has its own, and raises ValueError
    for a malformed record. That is an error naming the record's index, or, with
    ``skip_malformed``, the record is dropped and the count logged. Subsets are drawn from
    the well-formed records only, and a smaller ``limit`` with the same seed gives a
    subset of a larger one. Two problems of one id are an error naming the files and the
    id (``check_unique_ids``).
    """
    if limit is not None and not (is_integer(limit) and limit >= 1):
        raise ValueError(f"limit must be a positive number of problems or None, got {limit!r}")
    records = load_records(source, split, data_files=data_files, cache_dir=cache_dir)
    problems, skipped = [], []
    for index, record in enumerate(records):
        try:
            problems.append(to_problem(record, f"{source.task_name}/{split}/{index}"))
        except ValueError as err:
            if not skip_malformed:
                raise MalformedRecordError(
                    f"{source.task_name} split {split!r}, record {index}: {err}. Fix or remove "
                    f"that record, or skip such records ({SKIP_MALFORMED}). Expected "
                    f"columns: {_describe_columns(source)}.") from err
            skipped.append(f"record {index}: {err}")
    if skipped:
        logger.warning("%s split %r: skipped %d malformed record(s) of %d; first: %s",
                       source.task_name, split, len(skipped), len(records), skipped[0])
    if not problems:
        raise MalformedRecordError(
            f"{source.task_name} split {split!r} has no well-formed records "
            f"({len(records)} read, {len(skipped)} malformed).")
    check_unique_ids(problems, f"{source.task_name} split {split!r} from "
                               f"{records_origin(source, data_files, split)}")
    if limit is None or limit >= len(problems):
        return problems
    chosen = np.random.default_rng(seed).permutation(len(problems))[:limit]
    return [problems[i] for i in sorted(chosen)]


def records_origin(source: DatasetSource, data_files: DataFiles | None, split: str) -> str:
    """Where ``split``'s records come from, for messages: the local files or the hub."""
    if data_files is None:
        return f"hub dataset {source.hub_name}"
    return f"local files {files_for_split(data_files, split)}"


def _load_local_files(source: DatasetSource, split: str, files: list[str],
                      cache_dir: str | None) -> hf_datasets.Dataset:
    import datasets as hf_datasets  # here, not at the top: it takes a second to import
    import pyarrow
    builder = builder_for(files)
    try:
        return hf_datasets.load_dataset(builder, data_files={split: files}, split=split,
                                        cache_dir=cache_dir)
    # What datasets raises for a file it cannot parse (the cause says where); from its
    # json builder, for files that hold no record at all; and from its parquet builder,
    # pyarrow's own error for a file that is not Parquet or is cut short.
    except (hf_datasets.exceptions.DatasetGenerationError, StopIteration,
            pyarrow.ArrowException) as err:
        cause = (err if isinstance(err, pyarrow.ArrowException)
                 else err.__cause__ if isinstance(err.__cause__, Exception) else "no records")
        raise MalformedRecordError(
            f"{source.task_name} split {split!r}: cannot read {builder.upper()} records from "
            f"local files {files} ({cause}); each file needs one record per line (JSONL), "
            f"a list of records (JSON) or a table (Parquet) with the columns: "
            f"{_describe_columns(source)}.") from err


def hub_unreachable_reason(endpoint: str | None = None,
                           timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be used now (an offline flag, or no answer within
    ``timeout_s``), or None when it answers."""
    for var in OFFLINE_ENV_VARS:
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var} is set"
    endpoint = endpoint or huggingface_hub.constants.ENDPOINT
    finished = threading.Event()
    errors: list[Exception] = []

    def probe() -> None:
        try:
            huggingface_hub.get_session().head(endpoint, timeout=timeout_s)
        except Exception as err:  # whatever stops the request makes the hub unusable
            errors.append(err)
        finally:
            finished.set()

    # A thread bounds the wait: an HTTP timeout does not cover a hanging DNS lookup.
    threading.Thread(target=probe, daemon=True).start()
    if not finished.wait(timeout_s + 0.5):
        return f"{endpoint} did not answer within {timeout_s:g} s"
    if errors:
        return f"{endpoint} could not be reached ({type(errors[0]).__name__}: {errors[0]})"
    return None


def _load_from_hub(source: DatasetSource, split: str, cache_dir: str | None,
                   probe_timeout_s: float) -> hf_datasets.Dataset:
    import datasets as hf_datasets  # as in _load_local_files
    # In datasets' own offline mode it reads its cache without network retries, so the
    # probe is only needed when that mode is off.
    if not hf_datasets.config.HF_HUB_OFFLINE:
        reason = hub_unreachable_reason(timeout_s=probe_timeout_s)
        if reason is not None:
            raise DatasetUnavailableError(_how_to_use_local_files(source, split, reason))
    try:
        parts = [hf_datasets.load_dataset(source.hub_name, config, split=split,
                                          cache_dir=cache_dir)
                 for config in source.hub_configs]
    except ConnectionError as err:  # offline mode and not in the cache
        raise DatasetUnavailableError(
            _how_to_use_local_files(source, split, f"not cached ({err})")) from err
    return parts[0] if len(parts) == 1 else hf_datasets.concatenate_datasets(parts)


def _how_to_use_local_files(source: DatasetSource, split: str, reason: str) -> str:
    configs = ", ".join(str(c) for c in source.hub_configs)
    return (
        f"{source.task_name} split {split!r} needs the Hugging Face hub dataset "
        f"{source.hub_name} (config(s): {configs}), which cannot be used: {reason}. "
        f"Point the task at local files instead: in a run config set "
        f"task.options.data_files.{split}=/path/to/{split}.jsonl, or in Python "
        f"make_task({source.task_name!r}, data_files={{{split!r}: '/path/to/{split}.jsonl'}}). "
        f"Files may be .json, .jsonl or .parquet (a path, a glob, or a list of them); "
        f"each record needs the columns: {_describe_columns(source)}.")


def _describe_columns(source: DatasetSource) -> str:
    return "; ".join(f"{c.name} ({c.holds}{'' if c.required else ', optional'})"
                     for c in source.columns)


def files_for_split(data_files: DataFiles, split: str) -> list[str]:
    """The paths or globs ``data_files`` gives ``split`` (a bare path or list: every split)."""
    if isinstance(data_files, Mapping):
        if split not in data_files:
            raise DataFilesError(
                f"data_files has no entry for split {split!r} (it has {sorted(data_files)}); "
                f"add one, e.g. data_files.{split}=/path/to/{split}.jsonl")
        data_files = data_files[split]
    return expanded_paths(data_files)


def expanded_paths(files: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """A path or glob, or a list of them, as a list with a leading ``~`` made the home
    folder, as a shell would."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    if not (isinstance(files, Sequence)
            and all(isinstance(f, (str, os.PathLike)) for f in files)):
        raise DataFilesError(f"data files must be a path or glob, or a list of them, got "
                             f"{files!r:.80}")
    return [os.path.expanduser(f) for f in files]


def builder_for(files: list[str]) -> str:
    """The ``datasets`` builder that reads ``files`` (one split's), by their extension."""
    if not files:
        raise DataFilesError("data_files lists no files")
    builders = set()
    for path in files:
        if os.path.isdir(path):
            raise DataFilesError(f"{path!r} is a folder; give the files in it, e.g. "
                                 f"'{os.path.join(path, '*.jsonl')}'")
        extension = os.path.splitext(path)[1].lower()
        if extension not in BUILDER_BY_EXTENSION:
            raise DataFilesError(f"cannot load {path!r}: data files must end in one of "
                                 f"{sorted(BUILDER_BY_EXTENSION)}")
        builders.add(BUILDER_BY_EXTENSION[extension])
    if len(builders) > 1:
        raise DataFilesError(f"data files of one split must share a format, got {files}")
    return builders.pop()
