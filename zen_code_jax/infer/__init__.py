"""KV-cache decoding, sampling, FIM prompts and the OpenAI-compatible completions server.

See docs/infer.md. `InferenceEngine` is the entry point for evaluation and serving.
"""

from zen_code_jax.infer.engine import (
    Completion,
    CompletionRequest,
    InferenceEngine,
    random_params,
)

__all__ = ["Completion", "CompletionRequest", "InferenceEngine", "random_params"]
