"""Qwen2-style decoder, its config and presets, and attention implementations."""

from zen_code_jax.model.config import (
    PRESETS,
    ModelConfig,
    get_preset,
    non_embedding_param_count,
    param_count,
)

__all__ = ["PRESETS", "ModelConfig", "get_preset", "non_embedding_param_count", "param_count"]
