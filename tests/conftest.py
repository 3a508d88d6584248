"""One XLA compilation cache (``qstar_jax.models.compile_cache``) for the whole suite: both
pytest workers and every process a test starts (their environment carries the folder)
read back what any of them compiled, so the many tests that compile the same tiny
programs pay for each once; and one tokenizer cache (``qstar_jax.models.tokenizer``), so
SmolLM2's GGUF vocabulary is converted once for the suite. Both live in .pytest_cache,
which git ignores.

The suite compiles with most of XLA's optimisations off (JAX_DISABLE_MOST_OPTIMIZATIONS,
which the processes tests start inherit), unless the environment sets it: on a clean
checkout the suite is mostly compilation, and the tests check what programs compute and
how they are partitioned, not how fast they run. A test that runs enough of a real-sized
model for optimised code to pay for its compilation is marked ``optimized`` and compiles
as a run does. The benchmarks under experiments/, run as commands, always do."""

import os
import signal
from pathlib import Path

import jax
import pytest

from qstar_jax.models.compile_cache import enable_compile_cache

PYTEST_CACHE = Path(__file__).resolve().parents[1] / ".pytest_cache"
os.environ.setdefault("QSTAR_COMPILE_CACHE", str(PYTEST_CACHE / "xla"))
os.environ.setdefault("QSTAR_TOKENIZER_CACHE", str(PYTEST_CACHE / "tokenizers"))
enable_compile_cache()

# JAX read the environment's setting at its import, above; where there is none, the
# suite's is set here and in the environment (for the processes tests start).
if "JAX_DISABLE_MOST_OPTIMIZATIONS" not in os.environ:
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    jax.config.update("jax_disable_most_optimizations", True)
OPTIMIZATIONS_OFF = jax.config.values["jax_disable_most_optimizations"]


@pytest.fixture(autouse=True)
def optimized_compilation_where_marked(request, monkeypatch):
    """An ``optimized`` test (and every process it starts) compiles with XLA's
    optimisations on."""
    if request.node.get_closest_marker("optimized") is None:
        yield
        return
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", OPTIMIZATIONS_OFF)


@pytest.fixture(autouse=True)
def sigint_handler_left_as_found():
    """A test that leaves SIGINT's handler changed fails here, naming it: a later test in
    the same worker would otherwise meet the change (a run restores the handler it found,
    so a Ctrl-C test there would see it)."""
    found = signal.getsignal(signal.SIGINT)
    yield
    left = signal.getsignal(signal.SIGINT)
    assert left is found, f"the test left SIGINT's handler {left!r}; it found {found!r}"


# The files that take longest (processes over forced devices, whole runs: from 20 s to
# three minutes each on 2 cores), handed to the two workers first. `make test` runs with
# `--dist loadfile --no-loadscope-reorder`, which deals files out in this order, so the
# last files dealt are short ones and the workers finish together; the rest keep the
# order pytest collects them in.
LONGEST_FIRST = ("tests/test_parallel.py", "tests/test_two_process_run.py",
                 "tests/test_run_pipeline.py", "tests/test_paper_configs.py",
                 "tests/test_bench_decode.py", "tests/kernels/test_qkv_into_pages.py",
                 "tests/stages/test_arithmetic_run.py", "tests/models/test_smollm2.py",
                 "tests/test_real_model_slice.py", "tests/test_bench_row_products.py")


def pytest_collection_modifyitems(config, items):
    root = config.rootpath
    missing = [path for path in LONGEST_FIRST if not (root / path).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py's LONGEST_FIRST names no file at {missing}")
    rank = {path: place for place, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.relative_to(root).as_posix(), len(rank)))
