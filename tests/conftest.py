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
