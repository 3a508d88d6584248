"""Where an evaluate stage's trie time goes: every trie chunk (``decoding/trie_calls.py``)
of one method's run, with its rows, attention window, wall-clock, and whether it met a
shape the decoder had not compiled before (a new variant: traced, lowered and compiled or
read back from the persistent cache).

    python experiments/trie_chunk_times.py CONFIG --reuse FINISHED_RUN --out DIR
        [--method greedy] [--min-rows 1] [key=value ...]

``--reuse`` takes the trained outputs of a finished run of CONFIG (as ``python -m
qstar_jax.run --reuse``); the method is evaluated alone (``stages=[evaluate]``).
``--min-rows N`` is ``decode.min_rows=N`` (fewer row counts, so fewer variants, at the
cost of padding rows; default: the config's). Prints one line per chunk and, last,
JSON: {"method", "min_rows", "wall_s", "chunks", "chunk_s", "new_variant_chunks",
"new_variant_s"}.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--reuse", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--method", default="greedy")
    parser.add_argument("--min-rows", type=int)
    args, overrides = parser.parse_known_args()
    if args.min_rows is not None:
        overrides.append(f"decode.min_rows={args.min_rows}")

    from qstar_jax.config_loading import load_config
    from qstar_jax.decoding import trie_calls
    from qstar_jax.run import main as run

    min_rows = load_config(args.config, overrides).decode.min_rows
    chunks = []  # (rows, window, seconds, new variant)
    one_chunk = trie_calls._chunk

    def timed_chunk(decoder, trie, row_slots, **kwargs):
        rows, variants = len(trie.rows), decoder.trace_counts["sample_trie"]
        start = time.perf_counter()
        one_chunk(decoder, trie, row_slots, **kwargs)
        chunks.append((rows, kwargs["window"], round(time.perf_counter() - start, 3),
                       decoder.trace_counts["sample_trie"] > variants))
        print(f"chunk {len(chunks)}: {rows} rows, window {kwargs['window']}, "
              f"{chunks[-1][2]:.2f} s{', new variant' if chunks[-1][3] else ''}", flush=True)

    trie_calls._chunk = timed_chunk
    start = time.perf_counter()
    status = run([args.config, "--out", args.out, "--reuse", args.reuse, "stages=[evaluate]",
                  f"eval.methods=[{args.method}]", *overrides])
    if status:
        raise SystemExit(status)
    new = [c for c in chunks if c[3]]
    print(json.dumps(dict(method=args.method, min_rows=min_rows,
                          wall_s=round(time.perf_counter() - start, 1), chunks=len(chunks),
                          chunk_s=round(sum(c[2] for c in chunks), 1),
                          new_variant_chunks=len(new),
                          new_variant_s=round(sum(c[2] for c in new), 1))))


if __name__ == "__main__":
    main()
