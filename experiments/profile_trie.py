"""``python experiments/profile_decode.py --trie CONFIG``: where the trie sampler's time
goes, as a search expands nodes with ``eval.prefix_sharing`` (profile_decode's
docstring says what it times and prints)."""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import statistics
import time


def profile_trie(args: argparse.Namespace) -> None:
    """Tries of the config's eval prompts per spare rule and ``--chunks`` value; prints a
    line per pass and JSON last."""
    import tempfile
    from pathlib import Path

    import jax
    import numpy as np

    from qstar_jax.config_loading import load_config
    from qstar_jax.decoding.data_shards import RowLayout
    from qstar_jax.decoding.engine import Decoder
    from qstar_jax.decoding.paged_cache import Paging
    from qstar_jax.decoding.sampling import SamplingParams
    from qstar_jax.decoding.step_sampler import EndReason
    from qstar_jax.decoding.trie_chunks import ChunkedTrie
    from qstar_jax.decoding.trie_steps import sample_trie_steps
    from qstar_jax.models.compile_cache import enable_compile_cache
    from qstar_jax.stages.context import RunContext

    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    enable_compile_cache()
    config = load_config(args.trie)
    chunks = args.chunks or [config.decode.step_chunk]
    ctx = RunContext(config=config, out=Path(tempfile.mkdtemp()))
    problems = ctx.problems(config.task.eval_split, args.problems)
    policy, tokenizer = ctx.policy, ctx.policy.tokenizer
    prompts = [tokenizer.encode(p) for p in ctx.prompts(problems)]
    groups, cap, max_len = len(prompts), args.step_tokens, config.decode.max_len
    page_size = config.decode.page_size or 16
    # Each group's own pages up to its cap, and the pages its splits may borrow.
    num_pages = sum(-(-(len(p) + args.steps * cap) // page_size)
                    for p in prompts) + groups * (args.samples - 1) * (-(-cap // page_size) + 1)
    keys = jax.random.split(jax.random.key(config.seed), groups)
    newline_table = tokenizer.newline_table(policy.config.vocab_size)
    if args.whole_steps:
        newline_table = np.zeros_like(newline_table)
    default_rule = ChunkedTrie.spare_floor, ChunkedTrie.spare_share
    rules = {"new": default_rule, "old": (1 << 30, 0.0)}  # old: every split
    chunk_log = []  # each chunk's (padded rows, rounds run, starved)
    add = ChunkedTrie.add

    def logged_add(trie, out, stop, rounds):
        add(trie, out, stop, rounds)
        rows = RowLayout.block_size(len(out.group), shards=1)
        chunk_log.append((rows, int(stop.rounds.max()), bool(trie.starved.any())))

    ChunkedTrie.add = logged_add
    settings = list(itertools.product(args.spare_rules, chunks))
    decoders = [Decoder(policy.model, num_slots=groups * args.samples, max_len=max_len,
                        newline_table=newline_table, eos_ids=tokenizer.eos_ids,
                        step_chunk=chunk,
                        paging=Paging(page_size=page_size, num_pages=num_pages))
                for _, chunk in settings]
    passes = [[] for _ in settings]
    for rep, (setting, (rule, chunk)) in itertools.product(range(1 + args.reps),
                                                           enumerate(settings)):
        floor, share = rules[rule] if rule in rules else map(float, rule.split(":"))
        ChunkedTrie.spare_floor, ChunkedTrie.spare_share = int(floor), share
        decoder = decoders[setting]
        slots, chains = decoder.allocate(groups), list(range(groups))
        decoder.prefill(slots, prompts)
        work, traces = dict(decoder.trie_work), decoder.trace_counts["sample_trie"]
        jax.block_until_ready(decoder.cache)
        chunk_log.clear()
        wall, steps, fed = 0.0, [], 0
        for step in range(args.steps):
            start = time.perf_counter()
            tries, trie_fed = sample_trie_steps(
                decoder, slots, [args.samples] * len(slots), key_table=keys,
                key_rows=chains, group_ids=[step * groups + g for g in chains],
                params=SamplingParams.make(len(slots), temperature=args.temperature),
                max_tokens=cap)
            wall += time.perf_counter() - start
            fed += sum(trie_fed)
            steps += [[(s.tokens, s.count, int(s.end_reason)) for s in group]
                      for group in tries]
            if rep == 0 and setting == 0 and step < 2:
                for group in tries[:2]:  # what the steps look like
                    print([(tokenizer.decode(list(s.tokens)), s.count) for s in group])
            # Each chain goes on from its most drawn step; the others are freed.
            best = [max(group, key=lambda s: s.count) for group in tries]
            done = [s.slot for group, b in zip(tries, best) for s in group
                    if s is not b or s.end_reason == EndReason.EOS]
            if done:
                decoder.free(done)
            going = [i for i, b in enumerate(best) if b.end_reason != EndReason.EOS]
            slots = [best[i].slot for i in going]
            chains = [chains[i] for i in going]
            if not slots:
                break
        if slots:
            decoder.free(slots)
        work = {k: decoder.trie_work[k] - work.get(k, 0) for k in decoder.trie_work}
        one = dict(rule=rule, chunk=chunk, compiles=rep == 0, trie_s=round(wall, 2),
                   calls=work.get("calls", 0), rows=work.get("rows", 0),
                   row_rounds=work.get("row_rounds", 0), starved=work.get("starved", 0),
                   new_variants=decoder.trace_counts["sample_trie"] - traces,
                   distinct_steps=sum(map(len, steps)), fed=fed, chunks=list(chunk_log),
                   trie_hash=hashlib.sha256(json.dumps(steps).encode()).hexdigest()[:12])
        print(f"rule={rule} chunk={chunk:3d} {'first' if rep == 0 else 'timed'}: trie "
              f"{wall:6.1f} s, {one['row_rounds']} row-rounds in {one['calls']} calls "
              f"({one['starved']} starved, {one['rows']} rows), {one['new_variants']} new "
              f"variants, {one['distinct_steps']} distinct steps, {one['fed']} tokens fed, "
              f"trie {one['trie_hash']}; chunks (rows, rounds, starved) {chunk_log}",
              flush=True)
        passes[setting].append(one)
    settings = [dict(rule=rule, chunk=chunk, passes=runs, timed_s=statistics.median(
        p["trie_s"] for p in runs[1:]) if args.reps else None)
        for (rule, chunk), runs in zip(settings, passes)]
    ChunkedTrie.spare_floor, ChunkedTrie.spare_share = default_rule
    ChunkedTrie.add = add
    print(json.dumps(dict(settings=settings, config=args.trie, problems=groups,
                          samples=args.samples, step_tokens=cap, temperature=args.temperature,
                          steps=args.steps, whole_steps=args.whole_steps,
                          default_rule=default_rule,
                          prompt_tokens=[min(map(len, prompts)), max(map(len, prompts))],
                          threads=args.threads, device=jax.devices()[0].device_kind)))
