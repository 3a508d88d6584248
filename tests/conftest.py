"""One XLA compilation cache (``qstar_jax.models.compile_cache``) for the whole suite: both
pytest workers and every process a test starts (their environment carries the folder)
read back what any of them compiled, so the many tests that compile the same tiny
programs pay for each once; and one tokenizer cache (``qstar_jax.models.tokenizer``), so
SmolLM2's GGUF vocabulary is converted once for the suite. Both live in .pytest_cache,
which git ignores."""

import os
from pathlib import Path

from qstar_jax.models.compile_cache import enable_compile_cache

PYTEST_CACHE = Path(__file__).resolve().parents[1] / ".pytest_cache"
os.environ.setdefault("QSTAR_COMPILE_CACHE", str(PYTEST_CACHE / "xla"))
os.environ.setdefault("QSTAR_TOKENIZER_CACHE", str(PYTEST_CACHE / "tokenizers"))
enable_compile_cache()
