"""A model's shape and tokenizer with random weights, as an HF checkpoint directory.

For benchmarks on a machine that cannot hold the real weights: the device machine takes
64 MiB a call and reaches no network, and SmolLM2-135M's GGUF is 98 MB. Its shape (config.json)
and tokenizer files are a few MB; the weights are drawn there.

    here:   python experiments/random_checkpoint.py --like smollm2-135m-instruct \
                --out .device_model/smollm2 --shape-only
    there:  python experiments/random_checkpoint.py --like .device_model/smollm2 \
                --out /tmp/smollm2-random

``--like``: any ``load_model`` source (an alias, a .gguf, an HF directory), or a directory
this script wrote with ``--shape-only`` (config.json and tokenizer files, no weights). The
output loads through ``load_model`` and through ``transformers`` alike (``hf_export``), so
a benchmark's two sides run the same weights. Weights are ``LlamaModel``'s initializers
under ``nnx.Rngs(--seed)``: a random model samples near-uniform tokens, so its steps run
to their token cap, where a step without a newline ends its trace, and a search's trees
are shallower than the real model's (in ``bench_search``, 15 expansions over 8 problems
against 32); use it for speed and memory, never for accuracy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--like", required=True,
                        help="the model whose shape and tokenizer to take (see above)")
    parser.add_argument("--out", type=Path, required=True, help="the directory to write")
    parser.add_argument("--shape-only", action="store_true",
                        help="write config.json and the tokenizer, no weights")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def shape_and_tokenizer(like: str):
    """(ModelConfig, Tokenizer) of ``like``: a shape-only directory is read as it is, any
    other source through ``load_model``."""
    from qstar_jax.models.hf_checkpoint import read_hf_config
    from qstar_jax.models.loading import directory_tokenizer, load_model

    path = Path(like)
    if path.is_dir() and not any(path.glob("*.safetensors")):
        cfg = read_hf_config(path)
        tokenizer = directory_tokenizer(path, cfg)
    else:
        loaded = load_model(like)
        cfg, tokenizer = loaded.config, loaded.tokenizer
    if tokenizer is None:
        raise SystemExit(f"{like} ships no tokenizer; a benchmark needs one")
    return cfg, tokenizer


def main() -> None:
    args = parse_args()
    from flax import nnx

    from qstar_jax.models.hf_export import hf_config_dict, save_hf_checkpoint
    from qstar_jax.models.llama import LlamaModel

    cfg, tokenizer = shape_and_tokenizer(args.like)
    if args.shape_only:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "config.json").write_text(json.dumps(hf_config_dict(cfg), indent=2) + "\n")
        tokenizer.hf_tokenizer.save_pretrained(str(args.out))
    else:
        save_hf_checkpoint(LlamaModel(cfg, rngs=nnx.Rngs(args.seed)), tokenizer.hf_tokenizer,
                           args.out)
    written = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"{args.out}: {cfg.model_type}, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
          f"vocab {cfg.vocab_size}, {'shape only' if args.shape_only else 'random weights'}, "
          f"{written / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
