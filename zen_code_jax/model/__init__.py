"""Qwen2-style decoder, its config and presets, and attention implementations."""

from zen_code_jax.model.attention import dot_product_attention
from zen_code_jax.model.config import (
    PRESETS,
    ModelConfig,
    get_preset,
    non_embedding_param_count,
    param_count,
)
from zen_code_jax.model.params import abstract_params, param_partition_specs
from zen_code_jax.model.transformer import (
    KV_CACHE_AXES,
    Transformer,
    init_kv_cache,
    lm_head_kernel,
)

__all__ = [
    "KV_CACHE_AXES",
    "PRESETS",
    "ModelConfig",
    "Transformer",
    "abstract_params",
    "dot_product_attention",
    "get_preset",
    "init_kv_cache",
    "lm_head_kernel",
    "non_embedding_param_count",
    "param_count",
    "param_partition_specs",
]
