"""experiments/random_checkpoint.py: a model's shape and tokenizer carried without its
weights, then random weights that our loader and transformers read as the same model (the
two sides of bench_search on the device machine)."""

import runpy
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
import transformers

from qstar_jax.models.loading import load_model
from tests.support.tiny_checkpoints import save_tiny_checkpoint

SCRIPT = Path(__file__).parents[1] / "experiments/random_checkpoint.py"


def run_script(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    runpy.run_path(str(SCRIPT), run_name="__main__")


def test_a_shape_then_random_weights_that_both_sides_read_alike(tmp_path, monkeypatch):
    source = save_tiny_checkpoint(tmp_path / "source", "llama")
    shape, drawn = tmp_path / "shape", tmp_path / "random"
    run_script(monkeypatch, "--like", str(source), "--out", str(shape), "--shape-only")
    assert (shape / "config.json").is_file() and not list(shape.glob("*.safetensors"))
    run_script(monkeypatch, "--like", str(shape), "--out", str(drawn), "--seed", "3")

    original, ours = load_model(source), load_model(drawn)
    assert ours.config == original.config
    text = "Natalia sold 48 clips.\nThe answer is 72"
    assert ours.tokenizer.encode(text) == original.tokenizer.encode(text)
    assert ours.tokenizer.eos_ids == original.tokenizer.eos_ids

    ids = jnp.asarray([ours.tokenizer.encode(text)])
    logits = np.asarray(ours.model.logits(ours.model.forward_sequence(ids)))
    source_logits = np.asarray(original.model.logits(original.model.forward_sequence(ids)))
    assert np.abs(logits - source_logits).max() > 1e-2  # drawn, not the source's weights
    theirs = transformers.AutoModelForCausalLM.from_pretrained(drawn).eval()
    with torch.inference_mode():
        their_logits = theirs(torch.tensor(np.asarray(ids))).logits.numpy()
    np.testing.assert_allclose(logits, their_logits, atol=1e-4)


def weight_bytes(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(folder.glob("*.safetensors")))


def test_the_weights_are_drawn_from_the_seed(tmp_path, monkeypatch):
    shape = tmp_path / "shape"
    run_script(monkeypatch, "--like", str(save_tiny_checkpoint(tmp_path / "source", "llama")),
               "--out", str(shape), "--shape-only")
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        run_script(monkeypatch, "--like", str(shape), "--out", str(tmp_path / name),
                   "--seed", seed)
    assert weight_bytes(tmp_path / "a") == weight_bytes(tmp_path / "b")
    assert weight_bytes(tmp_path / "a") != weight_bytes(tmp_path / "c")
    assert len(weight_bytes(tmp_path / "a")) > 0
