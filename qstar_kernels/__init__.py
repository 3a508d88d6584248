"""Pallas kernels, each tested against the plain-``jnp`` path it replaces: a reference
beside it, or (``qkv_into_pages_gpu``) the decoder's own code."""

from qstar_kernels.paged_attention import paged_decode_attention
from qstar_kernels.paged_attention_gpu import paged_decode_attention_gpu
from qstar_kernels.paged_attention_reference import paged_decode_attention_reference
from qstar_kernels.paged_attention_tpu import paged_decode_attention_tpu
from qstar_kernels.platform import compiling_for, resolve_implementation, target_platform
from qstar_kernels.qkv_into_pages_gpu import qkv_into_pages_gpu
from qstar_kernels.row_products import resolve_rows_implementation, rows_product
from qstar_kernels.row_products_gpu import rows_product_gpu
from qstar_kernels.row_products_reference import rows_product_reference

__all__ = ["compiling_for", "paged_decode_attention", "paged_decode_attention_gpu",
           "paged_decode_attention_reference", "paged_decode_attention_tpu",
           "qkv_into_pages_gpu", "resolve_implementation", "resolve_rows_implementation",
           "rows_product", "rows_product_gpu", "rows_product_reference", "target_platform"]
