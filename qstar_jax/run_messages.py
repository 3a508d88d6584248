"""What ``run`` says when it refuses a folder or a stage stops it: one line each, naming
the settings that decide it and what to do, built from the errors the run met."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from qstar_jax.config import DistributedConfig
from qstar_jax.decoding.kv_cache import SlotPoolExhausted
from qstar_jax.decoding.page_table import PagePoolExhausted
from qstar_jax.policy.runtime import PromptTooLong
from qstar_jax.stages.reuse import evaluation_only, training_finished


def different_config_advice(changed: list[str] | None, out: Path, layout_only: bool,
                            saved: dict[str, Any] | None = None) -> str:
    """What to do about a folder that holds another run's config: where every changed
    setting is one --reuse may change, --reuse, which keeps that run's training.
    ``layout_only``: every changed setting is the cache's layout, refused only because
    the run's evaluate stage has begun; ``saved``: then, the folder's values of those
    settings, which go on with it."""
    if not changed or not all(map(evaluation_only, changed)):
        return "choose another --out or delete the folder"
    if not training_finished(out):
        return ("its training stages have not finished, and --reuse takes a run whose "
                "train_q has: finish them under its own settings first (its own command), "
                f"then evaluate these with --out NEW --reuse {out}")
    began = ("its evaluate stage has begun, whose wall-clock these settings move: "
             if layout_only else "")
    advice = f"{began}to evaluate these settings on what it trained, use --out NEW --reuse {out}"
    if saved:
        advice += ("; to go on in it as it ran, give "
                   + " ".join(f"{key}={value}" for key, value in saved.items()))
    return advice


def cache_full_message(stage: str, full: SlotPoolExhausted | PagePoolExhausted,
                       out: Path) -> str:
    """What a run says when a search in ``stage`` outgrew the KV cache (``full``: the
    decoder's error): the decoder's figures, and the settings that size the cache rather
    than the decoder's own advice. Before evaluate the run goes on in its own folder under
    a larger cache; evaluate's batches are also bounded by eval.problems_per_batch, and
    its wall-clock figures keep their settings."""
    key = "decode.pages" if isinstance(full, PagePoolExhausted) else "decode.slots"
    figures = str(full).split(";")[0]
    # A search's rows all sit on one data shard: lowering the batch cannot make a shard's
    # share hold a search it is too small for.
    share = (f" ({key} is split evenly over the mesh's data shards, and each shard's share "
             f"must hold a whole search)" if "data shard" in figures else "")
    message = (f"the KV cache is full in stage {stage}: {figures}; raise {key}{share} "
               f"(python -m qstar_jax.memory_plan sizes it for your device)")
    if stage != "evaluate":
        return (f"{message} and run again with it, in the same folder: the run goes on from "
                f"what {out} keeps")
    return (f"{message} or lower eval.problems_per_batch. {out} keeps what was done, under "
            f"its own settings: to go on under new ones, run with --out NEW --reuse {out}")


def prompt_too_long_message(error: PromptTooLong, out: Path) -> str:
    """What a run says when a prompt outgrew a cache row: MCTSr's refinement prompt quotes
    an answer and its critique, ToT's value prompt the steps so far."""
    return (f"{error}: raise decode.max_len or, for MCTSr's prompts and ToT's value prompt "
            "(which quote the policy's own answers, critiques or steps), lower "
            f"eval.text_max_tokens or decode.max_steps. {out} keeps what was done: a new "
            f"eval.text_max_tokens goes on with --out NEW --reuse {out}; the other two need "
            "a new run (the training stages read them)")


def lost_process_message(error: Exception, distributed: DistributedConfig) -> str:
    """What a process says when a collective with the others failed: in a multi-process
    run that means another process died (JAX's coordination service then names it, once
    it has been silent for the heartbeat timeout, and stops every process)."""
    return (f"process {jax.process_index()} of {jax.process_count()} lost the others "
            f"({str(error).splitlines()[0]}); another process most likely died: JAX names "
            f"it below once it has been silent for distributed.heartbeat_timeout_s="
            f"{distributed.heartbeat_timeout_s}. Start every process again with the same "
            "command: the run resumes from what process 0 wrote.")
