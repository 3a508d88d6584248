"""The kernels' tests compare float32 attention to within rounding: on a GPU, XLA's float32
matrix products default to TF32 (about 1e-3 off), so every product here, the kernels'
(interpreted or compiled) and the references', runs at full float32 precision."""

import jax
import pytest


@pytest.fixture(autouse=True)
def full_float32_products():
    with jax.default_matmul_precision("highest"):
        yield
