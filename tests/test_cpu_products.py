"""experiments/cpu_products.py (docs/decoder_speed.md's products, XLA against PyTorch): a
token's products are the model's layer products and LM head; XLA's chain computes the
products it times, one after another; a chain reuses one weight array (in cache) or,
streamed, distinct ones; each figure's call runs, and the JSON holds the stand-in
timings (each per product of a pass over eight) and their sums over a token's products."""

import functools
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.support.experiments import experiment_module

SCRIPT = Path(__file__).parents[1] / "experiments/cpu_products.py"


def test_the_chain_feeds_each_product_the_one_before(monkeypatch):
    cpu_products = experiment_module(monkeypatch, "cpu_products")
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 3), dtype=np.float32)
    weights = [rng.standard_normal((3, 5), dtype=np.float32) for _ in range(3)]
    want = a @ weights[0]
    for w in weights[1:]:
        want = (a + 1e-9 * want[:, :1]) @ w
    got = np.asarray(jax.jit(cpu_products.product_chain)(a, weights))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # The shift is too small to show in the values: the program holds the three
    # products and, between each two, the slice of the output before that feeds the next.
    primitives = [eqn.primitive.name for eqn in
                  jax.make_jaxpr(cpu_products.product_chain)(a, weights).jaxpr.eqns]
    products = [i for i, name in enumerate(primitives) if name == "dot_general"]
    assert len(products) == 3
    assert all("slice" in primitives[first:second]
               for first, second in zip(products, products[1:]))
    # Held as rows, the transposed weights give the same products.
    rows = [np.ascontiguousarray(w.T) for w in weights]
    got_rows = np.asarray(jax.jit(functools.partial(cpu_products.product_chain, rows=True))(
        a, rows))
    np.testing.assert_allclose(got_rows, want, rtol=1e-6)


def test_a_chain_reuses_one_array_in_cache_or_streams_distinct_ones(monkeypatch):
    cpu_products = experiment_module(monkeypatch, "cpu_products")
    rng = np.random.default_rng(2)
    cached = cpu_products.chain_weights(rng, 4, 6, streamed=False)
    assert len(cached) == cpu_products.CHAIN == 8
    assert all(w is cached[0] for w in cached)
    # Enough [4, 6] float32 arrays (96 bytes) to pass STREAMED_BYTES; a shape whose eight
    # copies already pass it gets eight.
    monkeypatch.setattr(cpu_products, "STREAMED_BYTES", 4 * 4 * 6 * 10 + 1)
    streamed = cpu_products.chain_weights(rng, 4, 6, streamed=True)
    assert len(streamed) == 11
    assert len({id(w) for w in streamed}) == 11
    assert not np.array_equal(streamed[0], streamed[1])
    monkeypatch.setattr(cpu_products, "STREAMED_BYTES", 4 * 4 * 6 * 3)
    assert len(cpu_products.chain_weights(rng, 4, 6, streamed=True)) == 8


def test_smollm2s_token_runs_each_layers_seven_products_thirty_times_and_the_head_once(
        monkeypatch):
    cpu_products = experiment_module(monkeypatch, "cpu_products")
    assert cpu_products.model_products("smollm2-135m-instruct") == [
        ((576, 576), 60), ((576, 192), 60), ((576, 1536), 60), ((1536, 576), 30),
        ((576, 49152), 1)]


def test_each_figure_runs_and_the_json_sums_a_token(monkeypatch, capsys):
    cpu_products = experiment_module(monkeypatch, "cpu_products")
    models = []
    monkeypatch.setattr(cpu_products, "model_products",
                        lambda model: models.append(model) or [((4, 6), 3), ((6, 4), 1)])
    # In the order the script asks for them, for each row count and shape: XLA's chain,
    # on the weights as given and held as rows, then PyTorch on one thread and on all,
    # each a pass over the chain's eight products. Under pytest JAX has one device, so
    # the two-device column is skipped.
    calls = iter([8000.0, 4000.0, 2400.0, 1600.0, 16000.0, 12000.0, 4000.0, 3200.0,
                  24000.0, 16000.0, 4800.0, 3200.0, 8000.0, 8000.0, 5600.0, 800.0])
    ran = []

    def per_call_us(run, reps):
        ran.append(np.asarray(run()).shape)
        return next(calls)

    monkeypatch.setattr(cpu_products, "per_call_us", per_call_us)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--rows", "1", "2", "--reps", "10"])
    cpu_products.main()
    assert models == ["smollm2-135m-instruct"]
    assert next(calls, None) is None
    assert ran == [(1, 6)] * 4 + [(1, 4)] * 4 + [(2, 6)] * 4 + [(2, 4)] * 4
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == ("cpu, {} threads, weights in cache; microseconds a product "
                        "(GFLOP/s)".format(cpu_products.torch.get_num_threads()))
    assert json.loads(lines[-1]) == {
        "rows": [1, 2], "shapes": [[4, 6], [6, 4]],
        "xla_us": [[1000.0, 2000.0], [3000.0, 1000.0]],
        "xla_rows_us": [[500.0, 1500.0], [2000.0, 1000.0]],
        "xla_two_devices_us": [[None, None], [None, None]],
        "torch_one_thread_us": [[300.0, 500.0], [600.0, 700.0]],
        "torch_us": [[200.0, 400.0], [400.0, 100.0]],
        # Three of the first shape and one of the second, in ms: XLA at one row
        # (3 * 1000 + 2000) / 1000 = 5.0.
        "token_ms": [{"xla": 5.0, "xla_rows": 3.0, "xla_two_devices": None,
                      "torch_one_thread": 1.4, "torch": 1.0},
                     {"xla": 10.0, "xla_rows": 7.0, "xla_two_devices": None,
                      "torch_one_thread": 2.5, "torch": 1.3}],
        "threads": cpu_products.torch.get_num_threads(), "streamed": False}


@pytest.mark.parametrize("rows", ["3", "0"])
def test_a_row_count_the_split_cannot_halve_is_refused(monkeypatch, rows):
    cpu_products = experiment_module(monkeypatch, "cpu_products")
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--rows", rows])
    with pytest.raises(SystemExit) as refused:
        cpu_products.main()
    assert refused.value.code == 2
