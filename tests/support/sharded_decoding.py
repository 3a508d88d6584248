"""The tiny random decoder on one device and on meshes of 4 devices, the same calls on
each (the meshes sampling steps and tries in chunks, the device in one call); prints one
JSON line comparing every mesh with the single device, with where each mesh put the rows
and what its compiled functions move between data shards. The meshes of several data
shards in one process also sample the first calls' trie again with chunks given almost
no spares (``starved_trie``): they stop for want of spares on their shards and still
sample the one call's trie. Run in a
child process, as a process's device count is fixed before JAX first runs:

    JAX_NUM_CPU_DEVICES=4 python -m tests.support.sharded_decoding ONE_DEVICE.npz
        meshes 4x1, 2x2 and 1x4 in one process (4x1 also over row windows); the one
        device's outputs are also written to ONE_DEVICE.npz;
    JAX_NUM_CPU_DEVICES=2 python -m tests.support.sharded_decoding PORT PROCESS_ID ONE_DEVICE.npz
        one of two processes (jax.distributed on localhost:PORT): meshes 2x2 and 1x4
        over both processes' devices; process 0 alone compares them with the one
        device's outputs the first command wrote (the same model and calls: decoding
        them again would give the same arrays) and prints the report.

Both read and write the suite's compile cache (the folder QSTAR_COMPILE_CACHE names).
"""

from __future__ import annotations

import json
import re
import sys

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from qstar_jax.decoding.engine import Decoder
from qstar_jax.decoding.kv_cache import fork_slots
from qstar_jax.decoding.paged_cache import Paging, copy_pages
from qstar_jax.decoding.sampling import SamplingParams
from qstar_jax.decoding.trie_chunks import ChunkedTrie
from qstar_jax.models.compile_cache import enable_compile_cache
from qstar_jax.models.llama import LlamaModel
from qstar_jax.models.tokenizer import BlankStepTables
from qstar_jax.parallel import (collectives, data_collectives, initialize_distributed,
                                is_writer, make_mesh)
from qstar_kernels import compiling_for
from tests.decoding.tiny_models import RANDOM_MAX_LEN, STEP_BUCKET, tiny_config
PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
# A trie after the first two prompts and after one that fills its slot 3 tokens on.
TRIE_COUNTS = [4, 3, 2]
NEAR_FULL_PROMPT = [(5 * i) % 64 for i in range(RANDOM_MAX_LEN - 3)]
# The meshes sample steps in chunks of 2 tokens (a trie in chunks of 2 rounds), the rows
# that ended dropped between chunks (one device in one call): rows of uneven caps leave
# each chunk fewer rows, and the trie's third chunk leaves out the full slot's steps.
STEP_CHUNK = 2
UNEVEN_CAPS = [6, 1, 3, 2, 5, 4]
# The paged cache's pages (of 4 tokens: forks share partly filled pages, copied on
# write): 56 per data shard on the 2x2 mesh, a size no other array here has, so a
# collective carrying pages is told by it.
PAGING = Paging(page_size=4, num_pages=112)
PAGED_MESHES = {(2, 2)}


# Steps end at multiples of 7 (no EOS), but not while the step is "blank", every token
# it holds even (blank-step tables): the meshes' chunks carry each row's blankness from
# one chunk to the next, and a step's end depends on it.
NEWLINES = np.arange(64) % 7 == 0
BLANK_STEPS = BlankStepTables(blank_line=NEWLINES, whitespace=np.arange(64) % 2 == 0)


def random_decoder(model: LlamaModel, mesh, **options) -> Decoder:
    """The decoder every run here uses (NEWLINES and BLANK_STEPS, no EOS), on ``mesh``
    (None: one device), with ``options`` of its own."""
    return Decoder(model, num_slots=32, max_len=RANDOM_MAX_LEN,
                   newline_table=NEWLINES, blank_steps=BLANK_STEPS, eos_ids=[],
                   min_batch_bucket=8, min_step_bucket=STEP_BUCKET, mesh=mesh, **options)


def prefilled_logits(model: LlamaModel, decoder: Decoder, slots) -> np.ndarray:
    """The next-token logits after what ``slots`` hold, gathered from every process (one
    device's: this process's own)."""
    last_hidden = decoder.cache.last_hidden
    if decoder.mesh is not None:
        last_hidden = multihost_utils.process_allgather(last_hidden, tiled=True)
    return np.asarray(model.logits(np.asarray(last_hidden)[slots]))


def decode(model: LlamaModel, mesh, step_chunk: int, starved: bool = False,
           paged: bool = False, layer_weights: str = "auto", row_windows: bool = False
           ) -> dict:
    """Prefill, fork, greedy and sampled steps (one with rows of other caps), a token
    appended (``append_token``: a cut step's line break), a trie; the same calls twice
    over, the second with other data to show it reuses the compiled functions.
    step_chunk: the decoder's (0: a step in one call); ``paged``: on ``PAGING``'s paged
    cache, whose pages all go back; ``layer_weights``, ``row_windows``: the decoder's.
    With ``starved`` the
    first calls are made a third time, the trie's chunks given only the spares that fill
    their padded blocks (``starved_trie``, after the second calls: apart from their
    variants)."""
    decoder = random_decoder(model, mesh, step_chunk=step_chunk,
                             paging=PAGING if paged else None, layer_weights=layer_weights,
                             row_windows=row_windows)
    out = {}
    # (the outputs' suffix, the calls' data): the calls, and a mesh's third ones.
    passes = [("0", 0), ("1", 1)] + ([("_starved", 0)] if starved else [])
    default_rule = ChunkedTrie.spare_floor, ChunkedTrie.spare_share
    for tag, call in passes:
        if tag == "_starved":
            ChunkedTrie.spare_floor, ChunkedTrie.spare_share = 0, 0.0
        starved = decoder.trie_work["starved"]
        slots = decoder.allocate(len(PROMPTS))
        decoder.prefill(slots, [[t + call for t in p] for p in PROMPTS])
        out[f"logits{tag}"] = prefilled_logits(model, decoder, slots)
        children = decoder.allocate(2, near=slots[:2])
        decoder.fork(slots[:2], children)
        rows = slots + children
        keys = jax.random.split(jax.random.key(call), len(rows))
        greedy = decoder.sample_steps(rows, problem_keys=keys, node_ids=range(len(rows)),
                                      params=SamplingParams.make(len(rows)), max_tokens=6)
        hot = decoder.sample_steps(rows, problem_keys=keys, node_ids=range(len(rows)),
                                   params=SamplingParams.make(len(rows), temperature=30.0),
                                   max_tokens=5)
        uneven = decoder.sample_steps(rows, problem_keys=keys, node_ids=range(10, 16),
                                      params=SamplingParams.make(len(rows), temperature=30.0),
                                      max_tokens=UNEVEN_CAPS)
        # A line break written after the rows, as after a step cut at its cap.
        appended_logprobs, appended_hidden = decoder.append_token(rows, 3 + call)
        near_full = decoder.allocate(1)
        decoder.prefill(near_full, [NEAR_FULL_PROMPT])
        groups = slots[:2] + near_full
        spares = decoder.allocate(sum(TRIE_COUNTS) - len(groups),
                                  near=np.repeat(groups, np.subtract(TRIE_COUNTS, 1)))
        trie_slots, trie = decoder.sample_trie(
            groups, TRIE_COUNTS, spares, key_table=keys, key_rows=[0, 1, 2],
            group_ids=[3, 4, 5], params=SamplingParams.make(3, temperature=30.0),
            max_tokens=5)
        out[f"greedy{tag}"] = greedy.tokens
        out[f"hot{tag}"] = hot.tokens
        out[f"hot_logprobs{tag}"] = hot.logprobs
        out[f"uneven{tag}"] = uneven.tokens
        out[f"uneven_logprobs{tag}"] = uneven.logprobs
        out[f"appended_logprobs{tag}"] = appended_logprobs
        out[f"appended_hidden{tag}"] = appended_hidden
        # Each group's steps in the order they split off; which spare slot holds a step
        # depends on where the spares lie.
        steps = np.argsort(np.where(trie.group < 0, len(trie.group), trie.group),
                           kind="stable")[:np.sum(trie.group >= 0)]
        out[f"trie{tag}"] = np.concatenate([trie.tokens, trie.group[:, None],
                                            trie.count[:, None], trie.end_reason[:, None],
                                            trie.num_tokens[:, None]], 1)[steps]
        out[f"trie_logprob{tag}"] = trie.logprob[steps]
        out[f"traces{tag}"] = np.array(sorted(decoder.trace_counts.values()))
        out[f"starved_calls{tag}"] = decoder.trie_work["starved"] - starved
        if mesh is not None and tag == "0":
            out["shards"] = shards(decoder, slots, children, trie_slots, trie.group)
        decoder.free(rows + near_full + list(spares))
    ChunkedTrie.spare_floor, ChunkedTrie.spare_share = default_rule
    if mesh is not None:
        attention = decoder._weights.model["layers"]["self_attn"]
        out["layout"] = {name: str(attention[name]["kernel"].get_value().sharding.spec)
                         for name in ("q_proj", "k_proj")}
        out["layout"]["cache"] = str(decoder.cache.k.sharding.spec)
        if decoder.layer_weights == "per-layer-transposed":
            copied = decoder._weights.layers[0]["self_attn"]
            out["layout"].update({f"{name}_rows": str(copied[name]["rows"].get_value()
                                                      .sharding.spec)
                                  for name in ("qkv_proj", "o_proj")})
        out["collectives"] = compiled_collectives(decoder, mesh)
    if paged:
        decoder.pages.check_counts()
        out["pages_back"] = decoder.pages.pages_in_use == 0
    return out


def shards(decoder: Decoder, prompts, children, trie_slots, trie_groups) -> dict:
    """The data shard of each prompt's slot, and whether every child and trie step lies on
    its parent's shard."""
    shard_of = decoder.pool.shard_of
    steps = trie_groups >= 0
    return {"prompts": shard_of(prompts).tolist(),
            "children_beside_parents": bool(np.all(shard_of(children)
                                                   == shard_of(prompts[:2]))),
            "trie_beside_groups": bool(np.all(shard_of(trie_slots[steps])
                                              == shard_of(trie_slots[trie_groups[steps]])))}


def compiled_collectives(decoder: Decoder, mesh) -> dict:
    """Per compiled decoder function: its collectives that move arrays with the cache
    length between data shards, and (fork) all its collectives. ``gspmd_fork``: the same
    counts for the fork jitted over the whole sharded cache by global slot ids (each row
    gathered from wherever it lies), what the finder must report."""
    mesh_shape = (mesh.shape["data"], mesh.shape["model"])

    def count(text):
        return {"cache_rows": len(data_collectives(text, dim=RANDOM_MAX_LEN,
                                                   mesh_shape=mesh_shape)),
                "all": len(collectives(text, mesh.size))}

    names = ("prefill", "fork", "sample_step", "sample_trie")
    if decoder.pages is not None:
        return paged_collectives(decoder, mesh_shape, names)
    counts = {name: count(decoder.compiled_text(name)) for name in names}
    slots = np.arange(8, dtype=np.int32)
    counts["gspmd_fork"] = count(jax.jit(fork_slots).lower(decoder.cache, slots, slots[::-1])
                                 .compile().as_text())
    return counts


def compared(single: dict, sharded: dict, starved: bool) -> dict:
    """How a mesh's outputs compare with one device's."""
    calls = ((0, 0), (1, 1)) + (((0, "_starved"),) if starved else ())
    got = {
        "logits_max_diff": max(float(np.abs(single[f"logits{c}"]
                                            - sharded[f"logits{c}"]).max())
                               for c in range(2)),
        "logprob_max_diff": max(float(np.abs(single[f"{n}{c}"] - sharded[f"{n}{t}"]).max())
                                for n in ("hot_logprobs", "uneven_logprobs", "trie_logprob",
                                          "appended_logprobs", "appended_hidden")
                                for c, t in calls),
        "same_tokens": {name: all(np.array_equal(single[f"{name}{c}"], sharded[f"{name}{t}"])
                                  for c, t in ((0, 0), (1, 1)))
                        for name in ("greedy", "hot", "uneven", "trie")},
        "recompiled": not np.array_equal(sharded["traces0"], sharded["traces1"]),
        "layout": sharded["layout"], "shards": sharded["shards"],
        "collectives": sharded["collectives"]}
    if starved:  # the first trie again, its chunks short of spares: they starved
        got["starved_trie"] = {
            "same": bool(np.array_equal(single["trie0"], sharded["trie_starved"])),
            "starved_calls": int(sharded["starved_calls_starved"]),
            "before": int(sharded["starved_calls0"] + sharded["starved_calls1"])}
    if "pages_back" in sharded:
        got["pages_back"] = sharded["pages_back"]
    return got


def paged_collectives(decoder: Decoder, mesh_shape: tuple[int, int], names) -> dict:
    """``compiled_collectives`` on a paged cache: "cache_rows" counts the collectives
    between data shards that carry pages (an array ending in a page's [page_size,
    head_dim], or of a shard's page count) or rows of the cache length; the page copy of
    copy on write is counted too. ``gspmd_copy_pages``: the copy jitted over the whole
    sharded cache by global page ids (pages of shard 0 into shard 1), which the count
    must find."""
    data, model = mesh_shape
    page_slab = re.compile(rf"\[[\d,]*,{PAGING.page_size},{decoder.config.head_dim}\]")

    def count(text):
        found = collectives(text, data * model)
        moves = [c for c in found if c.crosses_data(model) and (
            page_slab.search(c.text) or {RANDOM_MAX_LEN, decoder.pages.pages_per_shard}
            & c.dims)]
        return {"cache_rows": len(moves), "all": len(found)}

    counts = {name: count(decoder.compiled_text(name)) for name in (*names, "copy_pages")}
    pages = np.arange(4, dtype=np.int32)
    counts["gspmd_copy_pages"] = count(
        jax.jit(copy_pages).lower(decoder.cache, pages, pages + decoder.pages.pages_per_shard)
        .compile().as_text())
    return counts


def prefill_as_on_a_gpu(model: LlamaModel, mesh) -> dict:
    """The first prompts prefilled on ``mesh`` by a decoder whose prefill is traced for a
    GPU (``compiling_for``: the per-layer copy, not the scan; nothing here picks a Pallas
    kernel on row slots): their logits, whether its program loops and what it moves
    between data shards."""
    decoder = random_decoder(model, mesh)
    slots = decoder.allocate(len(PROMPTS))
    with compiling_for("gpu"):
        decoder.prefill(slots, PROMPTS)
        program = decoder.compiled_text("prefill")
    mesh_shape = (mesh.shape["data"], mesh.shape["model"])
    return {"logits": prefilled_logits(model, decoder, slots),
            "loops": " while(" in program,
            "cache_rows": len(data_collectives(program, dim=RANDOM_MAX_LEN,
                                               mesh_shape=mesh_shape))}


def write_one_device(path: str, single: dict) -> None:
    """One device's outputs (plain and paged: ``decode``'s dicts of arrays) to ``path``."""
    np.savez(path, **{f"{int(paged)}/{name}": value for paged, outputs in single.items()
                      for name, value in outputs.items()})


def read_one_device(path: str) -> dict:
    """What ``write_one_device`` wrote."""
    single = {False: {}, True: {}}
    with np.load(path) as saved:
        for key in saved.files:
            paged, name = key.split("/")
            single[bool(int(paged))][name] = saved[key]
    return single


def main() -> None:
    meshes = ((4, 1), (2, 2), (1, 4))
    # Chunks short of spares stop per data shard: checked where there are several (in
    # one process; the two processes' shards run the same shard_map code).
    starved_on = {(4, 1), (2, 2)}
    # The per-layer copy with transposed attention projections, on the model axis.
    transposed_on = {(1, 4)}
    # Step calls over a copy of their rows' windows, each data shard its own rows' (on
    # pages, through its own pages' local ids).
    row_windows_on = {(4, 1)}
    one_device_file = sys.argv[-1]
    if len(sys.argv) == 4:
        initialize_distributed(coordinator=f"localhost:{sys.argv[1]}", num_processes=2,
                               process_id=int(sys.argv[2]))
        # Data shards across the processes (2x2), and the model axis (1x4: each
        # process holds half of every layer's query heads and vocabulary).
        meshes = ((2, 2), (1, 4))
        starved_on, transposed_on, row_windows_on = set(), set(), set()
    enable_compile_cache()  # the suite's (the folder QSTAR_COMPILE_CACHE names)
    model = LlamaModel(tiny_config(64), rngs=nnx.Rngs(0))
    model.lm_head.kernel[...] = model.lm_head.kernel[...] * 50  # greedy far from ties
    on_meshes, gpu_prefills = {}, {}  # name: (paged, the mesh's outputs, starved)
    for shape in meshes:
        mesh, name = make_mesh(*shape), "x".join(map(str, shape))
        for paged in (False, True) if shape in PAGED_MESHES else (False,):
            starved = shape in starved_on and not paged
            on_meshes[name + ("_paged" if paged else "")] = (paged, decode(
                model, mesh, step_chunk=STEP_CHUNK, starved=starved, paged=paged), starved)
        if shape in transposed_on:
            on_meshes[name + "_transposed"] = (False, decode(
                model, mesh, step_chunk=STEP_CHUNK, layer_weights="per-layer-transposed"),
                False)
        if shape in row_windows_on:  # on row slots and on pages
            for paged in (False, True):
                on_meshes[name + ("_paged" if paged else "") + "_row_windows"] = (
                    paged, decode(model, mesh, step_chunk=STEP_CHUNK, paged=paged,
                                  row_windows=True), False)
        gpu_prefills[name] = prefill_as_on_a_gpu(model, mesh)
    if not is_writer():
        return
    # One device's outputs: only the writer compares (and prints), so only it decodes or
    # reads them, after the meshes.
    if jax.process_count() > 1:
        single = read_one_device(one_device_file)
    else:
        single = {False: decode(model, None, step_chunk=0),
                  True: decode(model, None, step_chunk=0, paged=True)}
        write_one_device(one_device_file, single)
    report = {name: compared(single[paged], sharded, starved)
              for name, (paged, sharded, starved) in on_meshes.items()}
    for name, got in gpu_prefills.items():
        logits = got.pop("logits")
        report[name + "_gpu_prefill"] = {
            "logits_max_diff": float(np.abs(logits - single[False]["logits0"]).max()), **got}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
