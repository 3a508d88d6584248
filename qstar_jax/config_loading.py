"""Reading a run's settings: the defaults, a YAML file and ``key=value`` overrides merged
by OmegaConf over the dataclasses of ``config``, every failure a ``ConfigError`` that says
where; and the settings written back as YAML, as each run folder keeps them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, TupleConfig, read_write
from omegaconf.errors import OmegaConfBaseException

from qstar_jax.config import ConfigError, DistributedConfig, RunConfig
from qstar_jax.config_checks import check_config
from qstar_jax.search.mctsr import MCTSrConfig


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """The defaults, then the YAML file at ``path``, then dotted ``key=value`` overrides."""
    layers = [OmegaConf.structured(RunConfig)]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} "
                              + ("is a folder" if path.is_dir() else "does not exist"))
        not_settings = ConfigError(f"config file {path} holds no settings: give key: value "
                                   "lines, as the files in configs/ do")
        try:
            layer = OmegaConf.load(path)
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: "
                              f"{_yaml_problem(error)}") from None
        except OSError as error:  # unreadable, or (OmegaConf's word) YAML of a bare value
            if "Invalid loaded object type" in str(error):
                raise not_settings from None
            raise ConfigError(f"config file {path} cannot be read: {error}") from None
        if not isinstance(layer, DictConfig):  # a list
            raise not_settings
        layers.append(layer)
    layers.append(_overrides_layer(overrides, layers[0]))
    try:
        merged = OmegaConf.merge(*layers)
        _expand_home(merged)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(str(error).splitlines()[0] + _where(error)) from None
    except TypeError:  # OmegaConf's word for a list given as a mapping, or the reverse
        raise ConfigError("a setting that is a list is given as a mapping, or the reverse: "
                          "write a list as [a, b] and a mapping as {key: value}") from None
    except ValueError as error:  # MCTSrConfig's own checks, named as the user wrote them
        raise ConfigError(str(error).replace(MCTSrConfig.__name__, "eval.mctsr")) from None
    check_config(config)
    return config


# The settings that name a file or folder (the task's data_files are expanded where they
# are read, tasks/datasets.py).
PATH_SETTINGS = ("out_dir", "policy.source", "label.stronger_model", "q_train.separate_model",
                 "q_train.second_opinion", "search.prm_model")


def _expand_home(merged: DictConfig) -> None:
    """A leading ``~`` of each path setting made the home folder, in ``merged``: a shell
    expands it only at a word's start or after a plain ``name=``, so ``policy.source=~/m``
    and YAML files would otherwise keep it, a folder named '~'."""
    for key in PATH_SETTINGS:
        parent, _, name = key.rpartition(".")
        holder = OmegaConf.select(merged, parent) if parent else merged
        if isinstance(holder[name], str) and holder[name].startswith("~"):
            with read_write(holder):  # each frozen settings dataclass merges read-only
                holder[name] = str(Path(holder[name]).expanduser())


def _overrides_layer(overrides: Sequence[str], schema: DictConfig):
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    layer = OmegaConf.create()
    for override in overrides:  # one at a time, to name the one YAML cannot read
        listed = _list_holding(override.split("=")[0], schema)
        if listed:  # a dotted index would become a mapping key that cannot merge with it
            raise ConfigError(f"override {override!r}: {listed} is a list; give it whole, "
                              f"e.g. {listed}=[a,b]")
        try:
            layer.merge_with_dotlist([override])
        except yaml.YAMLError as error:
            raise ConfigError(f"override {override!r}: its value is not valid YAML "
                              f"({_yaml_problem(error)}; a flow mapping needs a space after "
                              "each colon: {key: value})") from None
    return layer


def _list_holding(key: str, schema: DictConfig) -> str | None:
    """The list setting of which ``key`` names an element (eval.methods for
    eval.methods.0), if any."""
    parts = key.replace("[", ".").replace("]", "").split(".")
    for end in range(1, len(parts)):
        prefix = ".".join(parts[:end])
        if isinstance(OmegaConf.select(schema, prefix, default=None),
                      (ListConfig, TupleConfig)):
            return prefix
    return None


def _yaml_problem(error: yaml.YAMLError) -> str:
    return getattr(error, "problem", None) or str(error).splitlines()[0]


def _where(error: OmegaConfBaseException) -> str:
    key = getattr(error, "full_key", None)
    return f" (at {key})" if key else ""


def to_yaml(config: RunConfig) -> str:
    """The experiment's settings; the per-process launch settings are left out, so every
    process of a run writes and compares the same text."""
    config = dataclasses.replace(config, distributed=DistributedConfig())
    return OmegaConf.to_yaml(OmegaConf.structured(config))
