"""Model configuration and presets.

`ModelConfig` is the one contract between the model, the parallel layout, the training
step, the decoder and the paper-scale planner. It is a frozen dataclass so it can be a
static argument to `jax.jit` and a hashable cache key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

RematPolicy = Literal["none", "full", "dots_saveable"]
AttentionImpl = Literal["auto", "xla", "chunked", "cudnn", "splash"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of the Qwen2-style decoder (Table 1 of the report)."""

    vocab_size: int = 151_936
    hidden_size: int = 5120
    num_layers: int = 40
    num_heads: int = 40
    num_kv_heads: int = 8
    head_dim: int | None = None  # None: hidden_size // num_heads
    intermediate_size: int = 13_696
    rope_theta: float = 2_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 65_536
    qkv_bias: bool = True
    tie_embeddings: bool = False
    # Precision: parameters are stored in `param_dtype`, matmuls run in `dtype`
    # (with float32 accumulation).
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    remat_policy: RematPolicy = "full"
    scan_layers: bool = True
    # Layers per iteration of the layer scan (`nn.scan(unroll=...)`); num_layers unrolls it
    # fully, which removes the scan's zero-filled stacked buffers and per-layer slices on
    # XLA:CPU (3% less CPU per cpu_small train step). The parameter layout is the same for
    # every value. Off (1) by default: the train step and decoding gave the same bits
    # unrolled, but held-out scoring moved in the 9th-10th digit (docs/measurements.md).
    scan_unroll: int = 1
    attention_impl: AttentionImpl = "auto"
    attention_block_size: int = 512  # query/key block for the `chunked` implementation
    # Sequence (context) parallelism when `length` is split over a mesh axis (see
    # model/context_parallel.py): 'all_gather' (K/V gathered per layer) or 'off' (leave
    # attention to XLA's partitioner); layout 'dual_chunk' balances causal work.
    context_parallel: str = "all_gather"
    context_parallel_layout: str = "dual_chunk"
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        validate(self)

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def num_groups(self) -> int:
        """Query heads per KV head (GQA group size)."""
        return self.num_heads // self.num_kv_heads

    def replace(self, **kwargs: Any) -> ModelConfig:
        return dataclasses.replace(self, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"Unknown ModelConfig key(s) {unknown}. Valid keys: {sorted(valid)}.")
        return cls(**d)


def validate(cfg: ModelConfig) -> None:
    """Raise a ValueError naming the fix for inconsistent shapes."""
    for name in (
        "vocab_size",
        "hidden_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "intermediate_size",
    ):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(cfg, name)}.")
    if cfg.num_heads % cfg.num_kv_heads != 0:
        raise ValueError(
            f"num_heads={cfg.num_heads} is not divisible by num_kv_heads={cfg.num_kv_heads}: "
            "grouped-query attention needs whole groups. Choose num_kv_heads among the "
            f"divisors of num_heads: {[d for d in range(1, cfg.num_heads + 1) if cfg.num_heads % d == 0]}."
        )
    if cfg.head_dim is None and cfg.hidden_size % cfg.num_heads != 0:
        raise ValueError(
            f"hidden_size={cfg.hidden_size} is not divisible by num_heads={cfg.num_heads}. "
            "Set head_dim explicitly or pick num_heads dividing hidden_size."
        )
    if cfg.resolved_head_dim % 2 != 0:
        raise ValueError(f"head_dim={cfg.resolved_head_dim} must be even for RoPE.")
    if cfg.remat_policy not in ("none", "full", "dots_saveable"):
        raise ValueError(
            f"remat_policy={cfg.remat_policy!r}; use one of 'none', 'full', 'dots_saveable'."
        )
    if not 1 <= cfg.scan_unroll <= cfg.num_layers:
        raise ValueError(
            f"scan_unroll={cfg.scan_unroll} must be in [1, num_layers={cfg.num_layers}]."
        )
    for name in ("dtype", "param_dtype"):
        if getattr(cfg, name) not in ("float32", "bfloat16", "float16"):
            raise ValueError(
                f"ModelConfig.{name}={getattr(cfg, name)!r}; use 'float32', 'bfloat16' or "
                "'float16' (a dtype name string)."
            )
    for name in ("rope_theta", "rms_norm_eps", "attention_block_size", "initializer_range"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(cfg, name)}.")
    if cfg.attention_impl not in ("auto", "xla", "chunked", "cudnn", "splash"):
        raise ValueError(
            f"attention_impl={cfg.attention_impl!r}; use one of "
            "'auto', 'xla', 'chunked', 'cudnn', 'splash'."
        )

    if cfg.context_parallel not in ("off", "all_gather"):
        raise ValueError(f"context_parallel={cfg.context_parallel!r}; use 'all_gather' or 'off'.")
    if cfg.context_parallel_layout not in ("dual_chunk", "contiguous"):
        raise ValueError(
            f"context_parallel_layout={cfg.context_parallel_layout!r}; use 'dual_chunk' or "
            "'contiguous'."
        )


def param_count(cfg: ModelConfig) -> int:
    """Exact number of parameters implied by the config (matches the Flax model)."""
    d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    if cfg.qkv_bias:
        attn += h * hd + 2 * kv * hd
    mlp = 3 * d * cfg.intermediate_size
    norms = 2 * d
    per_layer = attn + mlp + norms
    embed = cfg.vocab_size * d
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * d
    return cfg.num_layers * per_layer + embed + head + d  # + final norm


def non_embedding_param_count(cfg: ModelConfig) -> int:
    """Parameters excluding the input embedding (the 'N' used in 6N FLOPs per token)."""
    return param_count(cfg) - cfg.vocab_size * cfg.hidden_size


PRESETS: dict[str, ModelConfig] = {
    # Tests: well under a second per step on CPU.
    "tiny": ModelConfig(
        vocab_size=512,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=128,
        rope_theta=10_000.0,
        max_position_embeddings=2048,
        dtype="float32",
        remat_policy="none",
        attention_block_size=64,
    ),
    # CPU ablations: ~7M parameters, what 2 cores train usefully in minutes.
    "cpu_small": ModelConfig(
        vocab_size=8192,
        hidden_size=256,
        num_layers=4,
        num_heads=8,
        num_kv_heads=2,
        intermediate_size=768,
        rope_theta=1_000_000.0,
        max_position_embeddings=8192,
        dtype="bfloat16",
        remat_policy="none",
        attention_block_size=256,
    ),
    # Zen-Coder-Flash at CPU scale (docs/distill.md): ~1.9M parameters, 26% of cpu_small
    # (its teacher) with the same vocabulary; what experiments/flash_distill.py distils.
    "flash": ModelConfig(
        vocab_size=8192,
        hidden_size=96,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=288,
        rope_theta=1_000_000.0,
        max_position_embeddings=8192,
        dtype="bfloat16",
        remat_policy="none",
        attention_block_size=256,
    ),
    # One-accelerator ablations: ~40M parameters (the gpu scale of the experiment files).
    "gpu_small": ModelConfig(
        vocab_size=16_384,
        hidden_size=512,
        num_layers=8,
        num_heads=8,
        num_kv_heads=4,
        intermediate_size=1536,
        rope_theta=1_000_000.0,
        max_position_embeddings=4096,
        dtype="bfloat16",
        remat_policy="none",
        attention_block_size=512,
    ),
    # One-accelerator research preset (~1.1B with the paper vocabulary).
    "zen_code_1b": ModelConfig(
        vocab_size=151_936,
        hidden_size=2048,
        num_layers=16,
        num_heads=16,
        num_kv_heads=4,
        intermediate_size=5632,
        rope_theta=2_000_000.0,
        max_position_embeddings=65_536,
    ),
    # Table 1 exactly: 40 layers, hidden 5120, 40/8 heads, FFN 13,696, vocab 151,936.
    "zen_code_14b": ModelConfig(),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """Return a preset, optionally with field overrides; unknown names list the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"Unknown model preset {name!r}. Valid presets: {sorted(PRESETS)}.")
    cfg = PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg
