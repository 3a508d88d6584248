import time

import jax
import jax.numpy as jnp

from qstar_jax.models import compile_cache


def test_the_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("QSTAR_COMPILE_CACHE", str(tmp_path / "xla"))
    assert compile_cache.compile_cache_folder() == tmp_path / "xla"
    monkeypatch.setenv("QSTAR_COMPILE_CACHE", "OFF")
    assert compile_cache.compile_cache_folder() is None
    monkeypatch.setenv("QSTAR_COMPILE_CACHE", " off\n")
    assert compile_cache.compile_cache_folder() is None
    assert compile_cache.enable_compile_cache() is None
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))  # the user's wins
    assert compile_cache.compile_cache_folder() == tmp_path / "jax"
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.delenv("QSTAR_COMPILE_CACHE")
    assert compile_cache.compile_cache_folder() == compile_cache.DEFAULT_FOLDER.expanduser()


def test_a_compiled_program_is_written_to_the_folder():
    """The suite's conftest turned the cache on: a program that takes over the cache's
    minimum compile time lands in its folder, and compiles to the same results."""
    folder = compile_cache.compile_cache_folder()
    assert folder is not None and jax.config.jax_compilation_cache_dir == str(folder)
    assert jax.config.jax_compilation_cache_max_size == compile_cache.MAX_BYTES == 4 << 30
    before = set(folder.iterdir())
    scale = float(time.time_ns() % 10**9)  # a constant no earlier program had: a new key
    minimum = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        x = jnp.arange(12.0).reshape(3, 4)
        out = jax.jit(lambda a: jnp.tanh(a @ a.T / scale))(x)
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", minimum)
    assert set(folder.iterdir()) - before
    assert jnp.allclose(out, jnp.tanh(x @ x.T / scale))


def test_a_folder_that_cannot_be_made_leaves_the_cache_as_it_was(monkeypatch, tmp_path):
    """Under a file, no folder can be made: every program compiles afresh, and the
    suite's cache setting stands."""
    (tmp_path / "file").write_text("")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("QSTAR_COMPILE_CACHE", str(tmp_path / "file" / "xla"))
    before = jax.config.jax_compilation_cache_dir
    assert compile_cache.enable_compile_cache() is None
    assert jax.config.jax_compilation_cache_dir == before
