"""KV-cache decoding, sampling, FIM prompts and the OpenAI-compatible completions server.

See docs/infer.md. `InferenceEngine` is the entry point for evaluation and serving.
"""

from zen_code_jax.infer.engine import InferenceEngine, random_params
from zen_code_jax.infer.request import Completion, CompletionRequest

__all__ = ["Completion", "CompletionRequest", "InferenceEngine", "random_params"]
