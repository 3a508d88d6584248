"""python -m qstar_jax.run [CONFIG.yaml] [key=value ...] [--out DIR] [--reuse DIR]

Runs the configured stages in order (by default train_policy, collect, label, train_q,
evaluate; train_prm before evaluate when ``stages`` lists it); each is skipped when its
outputs already exist in the output folder, so rerunning a killed run resumes it. With no
arguments: the default experiment (arithmetic chains, Q* planning with its learned Q̂).
``--check`` makes every check made before the config's stages and runs none of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import hashlib
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import NoReturn

import jax
import numpy as np
from jax.experimental import multihost_utils

from qstar_jax.architectures import context_warning, policy_architecture
from qstar_jax.config import STAGES, ConfigError
from qstar_jax.config_loading import load_config, to_yaml
from qstar_jax.decoding.kv_cache import SlotPoolExhausted
from qstar_jax.decoding.page_table import PagePoolExhausted
from qstar_jax.interrupts import interrupts_until_handled
from qstar_jax.memory_plan import check_memory
from qstar_jax.models.compile_cache import enable_compile_cache
from qstar_jax.models.config import UnsupportedConfigError
from qstar_jax.models.weights import CheckpointError
from qstar_jax.outputs.durable import DamagedOutputError, write_text_atomically
from qstar_jax.outputs.folder_lock import FolderInUseError, lock_folder
from qstar_jax.parallel import (DATA, barrier, check_cache_split, initialize_distributed,
                                is_writer, leave_at_once, make_mesh)
from qstar_jax.policy.runtime import PromptTooLong
from qstar_jax.preflight import (check_layer_weights, check_searches_fit_a_shard,
                                 identical_samples_warning, preflight,
                                 shallow_search_warning, shared_split_warning, warmup_warning)
from qstar_jax.run_messages import (cache_full_message, different_config_advice,
                                    lost_process_message, prompt_too_long_message)
from qstar_jax.stages.reuse import (CACHE_LAYOUT, NO_RESULT, differing_settings,
                                    reuse_trained_outputs, setting_values)
from qstar_jax.stages.context import RunContext
from qstar_jax.stages.evaluate import RESULTS_LOG, evaluate
from qstar_jax.stages.prm import train_prm
from qstar_jax.stages.rollouts import collect, label
from qstar_jax.stages.stage_inputs import check_stage_inputs
from qstar_jax.stages.train_policy import train_policy
from qstar_jax.stages.train_q import train_q
from qstar_jax.tasks.base import MalformedRecordError
from qstar_jax.tasks.datasets import DataFilesError, DatasetUnavailableError

STAGE_FUNCTIONS = {"train_policy": train_policy, "collect": collect, "label": label,
                   "train_q": train_q, "train_prm": train_prm, "evaluate": evaluate}
# What a stage raises on input it cannot use (a checkpoint without weights, a dataset the
# hub cannot give, a malformed record, a damaged file of the run folder): the user's to
# fix, said in one line; a rerun resumes from what the earlier stages wrote.
INPUT_ERRORS = (ConfigError, CheckpointError, UnsupportedConfigError,
                DatasetUnavailableError, DataFilesError, MalformedRecordError,
                DamagedOutputError)
# A disk that fills (or a quota met, or a folder gone read-only) mid-run: what was written
# before is whole (appends and atomic writes), so making room and rerunning resumes.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
# The exit status of a process of a multi-process run whose collective with the others
# failed: another process most likely died.
LOST_OTHERS = 3


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m qstar_jax.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="YAML config (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    parser.add_argument("--out", help="output folder (default: the config's out_dir)")
    parser.add_argument("--reuse", metavar="DIR",
                        help="evaluate on the policy, labels and Q̂ an earlier run trained in "
                             "DIR (its training settings must match; search and eval may differ)")
    parser.add_argument("--check", action="store_true",
                        help="make every check run makes before its stages (settings, files, "
                             "memory on this machine) and exit without running one")
    # Overrides may come before or after --out/--reuse, as users write them.
    args = parser.parse_intermixed_args(argv)
    if args.config and "=" in args.config:  # no YAML file, only overrides
        args.overrides.insert(0, args.config)
        args.config = None
    return args


def changed_settings(saved: Path, config) -> list[str] | None:
    """The settings ``config`` changes from the run whose config.yaml is ``saved``, other
    than which stages this invocation runs: [] for the same run, None where ``saved`` was
    written by another version and its text differs (it cannot be compared key by key)."""
    if saved.read_text() == to_yaml(config):
        return []
    try:
        earlier = load_config(saved)
    except (ValueError, OSError):
        return None
    return differing_settings(config, dataclasses.replace(earlier, stages=config.stages))


def join_processes(config) -> None:
    """In a run of several processes: a stop signal stops this one (JAX's preemption
    notifier, installed with the distributed service, caught SIGTERM and ran on), and
    every process holds process 0's config, launch settings aside (processes started with
    different problems ran to exit 0 and logged empty answers); a ConfigError otherwise."""
    if jax.process_count() == 1:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    digest = np.frombuffer(hashlib.sha256(to_yaml(config).encode()).digest(), np.uint32)
    try:
        multihost_utils.assert_equal(digest, "configs differ")
    except AssertionError:
        raise ConfigError(f"the {jax.process_count()} processes were started with different "
                          "configs (a file or an override differs between them): start "
                          "every process with the same command, distributed.* aside") from None


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    enable_compile_cache()  # before anything compiles
    try:
        config = load_config(args.config, args.overrides)
        preflight(config)
        # Before anything touches a device; the mesh is checked before weights load.
        initialize_distributed(**dataclasses.asdict(config.distributed))
        join_processes(config)
        mesh = make_mesh(config.mesh.data, config.mesh.model)
        check_cache_split(mesh.shape[DATA], slots=config.decode.slots,
                          pages=config.decode.num_pages)
        check_searches_fit_a_shard(config, mesh.shape[DATA])
        check_layer_weights(config, mesh)
        check_memory(config)  # the weights and the cache fit, or say what does
        warnings = [context_warning(config, policy_architecture(config)),
                    shared_split_warning(config), identical_samples_warning(config),
                    shallow_search_warning(config), warmup_warning(config)]
    except ValueError as error:  # ConfigError, MeshError, bad distributed settings
        print(f"config error: {error}", file=sys.stderr)
        return 2
    for warning in filter(None, warnings):
        print(warning, file=sys.stderr, flush=True)
    if args.check or not config.stages:  # nothing to run: nothing to write
        stages = ", ".join(config.stages)
        print(f"the config passed every check made before its stages ({stages}); no stage "
              "ran and nothing was written" if args.check else
              f"stages=[]: no stage to run and nothing was written (stages: "
              f"{', '.join(STAGES)}; --check checks a config before a run)", flush=True)
        return 0
    out = Path(args.out or config.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = lock_folder(out)
    except OSError as error:  # a file of that name, no permission, a read-only disk
        print(f"config error: cannot use {out} as the output folder: {error.strerror}",
              file=sys.stderr)
        return 2
    except FolderInUseError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    try:
        return run_in_folder(out, config, mesh, args.reuse)
    finally:
        if lock is not None:
            lock.close()


def run_in_folder(out: Path, config, mesh, reuse: str | None) -> int:
    """The run in its locked output folder ``out`` (reusing the trained outputs of the
    folder ``reuse``): checked against the run ``out`` holds, then its stages; the exit
    status."""
    resolved = out / "config.yaml"
    changed = changed_settings(resolved, config) if resolved.exists() else []
    # The run goes on under changed settings only where they save its progress otherwise
    # (reuse.NO_RESULT) or are the cache's layout (reuse.CACHE_LAYOUT, which never changes
    # what is computed), and the layout only before evaluate has logged a result, as it
    # moves its wall-clock figures.
    computed = None if changed is None else [key for key in changed if key not in NO_RESULT]
    layout_only = computed is not None and all(key in CACHE_LAYOUT for key in computed)
    if computed is None or (computed and (not layout_only or (out / RESULTS_LOG).exists())):
        saved = setting_values(load_config(resolved), computed) if layout_only else None
        print(f"config error: {out} holds a run with a different config ({resolved}"
              f"{': differs in ' + ', '.join(changed) if changed else ''}); "
              f"{different_config_advice(changed, out, layout_only, saved)}", file=sys.stderr)
        return 2
    if changed:
        print(f"[qstar] resuming {out} under new settings: {', '.join(changed)}",
              flush=True)
    if reuse and is_writer():
        try:
            linked = reuse_trained_outputs(Path(reuse), out, config)
        except ConfigError as error:
            print(f"config error: {error}", file=sys.stderr)
            return 2
        print(f"[qstar] reusing {', '.join(linked) or 'nothing new'} from {reuse}",
              flush=True)
    # Every process of a multi-process run computes everything, in step; process 0 alone
    # writes the output folder, which the others read (it must be shared storage).
    # Whole or not at all: a half-written config.yaml would refuse this run's own folder.
    write_text_atomically(resolved, to_yaml(config))
    ctx = RunContext(config=config, out=out, mesh=mesh)
    barrier("outputs linked")  # what --reuse linked is there for every process to see
    try:
        check_stage_inputs(ctx)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    try:
        with interrupts_until_handled():
            run_stages(ctx)
    except INPUT_ERRORS as error:
        print(f"run error: {error}", file=sys.stderr, flush=True)
        return 2
    except CacheOutgrown as error:
        print(f"run error: {cache_full_message(error.stage, error.full, out)}",
              file=sys.stderr, flush=True)
        return 2
    except OSError as error:
        if error.errno not in DISK_ERRORS:
            raise
        print(f"run error: cannot write {error.filename or out}: {error.strerror}; once it "
              f"can be written, run the same command again to resume from what {out} holds",
              file=sys.stderr, flush=True)
        return 2
    except PromptTooLong as error:
        print(f"run error: {prompt_too_long_message(error, out)}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what the stages wrote is kept, line by line
        print(f"interrupted: run the same command again to resume from what {out} holds",
              file=sys.stderr, flush=True)
        return 130
    except jax.errors.JaxRuntimeError as error:
        if jax.process_count() == 1:
            raise
        print(f"run error: {lost_process_message(error, config.distributed)}",
              file=sys.stderr, flush=True)
        return LOST_OTHERS
    if "evaluate" in config.stages and is_writer():
        print((out / "summary.md").read_text())
    return 0


def run_stages(ctx: RunContext) -> None:
    """The configured stages in order, every process in step with the others."""
    for stage in ctx.config.stages:
        # What process 0 wrote before is on disk for all, so each process decides alike
        # whether the stage is done.
        barrier(f"before {stage}")
        start = time.perf_counter()
        print(f"[qstar] stage {stage} ...", flush=True)
        try:
            STAGE_FUNCTIONS[stage](ctx)
        except (SlotPoolExhausted, PagePoolExhausted) as error:
            raise CacheOutgrown(stage, error) from error
        print(f"[qstar] stage {stage} done in {time.perf_counter() - start:.1f}s", flush=True)
    barrier("end")


class CacheOutgrown(Exception):
    """A stage's search outgrew the KV cache (``full``: the decoder's error)."""

    def __init__(self, stage: str, full: SlotPoolExhausted | PagePoolExhausted):
        super().__init__(f"{stage}: {full}")
        self.stage, self.full = stage, full


def command(argv=None) -> NoReturn:
    """``main`` as the command. A process of a multi-process run that fails on its own
    (any status but 0 and LOST_OTHERS; an error nothing caught included, its traceback
    printed first) leaves without waiting for the others, which wait on it
    (``leave_at_once``). One that lost the others exits the usual way: JAX's coordination
    service then names the process that died, once it has been silent for the heartbeat
    timeout, and ends this one."""
    try:
        code = main(argv)
    except BaseException as error:
        if not jax.distributed.is_initialized():
            raise
        traceback.print_exc()
        code = 130 if isinstance(error, KeyboardInterrupt) else 1
    if code in (0, LOST_OTHERS):
        sys.exit(code)
    leave_at_once(code)


if __name__ == "__main__":
    command()
