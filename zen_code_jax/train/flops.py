"""Model FLOPs per token and MFU.

FLOPs per trained token = 6 * N_matmul + 6 * L * H * Dh * S
  * N_matmul: parameters that take part in matmuls = all parameters except the input
    embedding table (a gather, not a matmul), plus the LM head (counted once even when
    tied to the embedding). 2N forward + 4N backward.
  * attention: QK^T and AV cost 2 * 2 * S * H * Dh forward per token per layer for a
    full S x S score matrix, x3 for forward + backward = 12 L H Dh S; causal masking
    halves it to 6 L H Dh S (PaLM appendix B convention, with the causal halving).
`compiled.cost_analysis()` is not used: it counts a scanned layer body once.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from zen_code_jax.model.config import ModelConfig, param_count

# Dense bf16 peak FLOP/s per device (one chip / one GPU), by `jax.devices()[0].device_kind`
# prefix. Used when train.peak_flops_per_device is 0.
PEAK_FLOPS_BY_DEVICE_KIND: dict[str, float] = {
    "TPU v2": 45e12 / 2,  # per core-device
    "TPU v3": 123e12 / 2,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "TPU7x": 2307e12,
    "NVIDIA H200": 989e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100": 989e12,  # SXM
    "NVIDIA GH200": 989e12,
    "NVIDIA B200": 2250e12,
    "NVIDIA A100": 312e12,
    "NVIDIA A10G": 70e12,
    "NVIDIA L4": 121e12,
    "Tesla V100": 125e12,
    # CPUs: derived from the host's vector ISA, cores and clock (`cpu_peak_flops`).
}


def cpu_peak_flops(cpuinfo: str | None = None, cores: int | None = None) -> float:
    """Peak FLOP/s of this host (the whole host is one CPU device), from /proc/cpuinfo.

    cores x clock x FLOPs per cycle per core, with two FMA units per core: 32 for AVX2+FMA
    (8 f32 lanes), 64 for AVX-512, 1024 with AMX-BF16 tiles (the bf16 path XLA uses there).
    A fixed number would be wrong by 10x between machines: an AMX machine reached ~1.5 TFLOP/s
    in bf16, this project's AVX2 CI machine ~50 GFLOP/s (docs/measurements.md).
    Set train.peak_flops_per_device to override.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        cores = cores or os.cpu_count() or 1
    flags: set[str] = set()
    mhz = 0.0
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "cpu MHz":
            try:
                mhz = max(mhz, float(value))
            except ValueError:
                pass
    if "amx_bf16" in flags:
        per_cycle = 1024
    elif "avx512f" in flags:
        per_cycle = 64
    elif "avx2" in flags and "fma" in flags:
        per_cycle = 32
    else:
        per_cycle = 16
    ghz = mhz / 1000 if mhz > 0 else 2.5
    return cores * ghz * 1e9 * per_cycle


def matmul_param_count(cfg: ModelConfig) -> int:
    """Parameters used in matmuls: everything but the embedding lookup, plus the LM head."""
    embed = cfg.vocab_size * cfg.hidden_size
    n = param_count(cfg) - embed
    if cfg.tie_embeddings:
        n += embed  # the tied table is still multiplied as the LM head
    return n


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training (fwd + bwd) attention-score FLOPs per token, causal-halved."""
    return 6.0 * cfg.num_layers * cfg.num_heads * cfg.resolved_head_dim * seq_len


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 N_matmul + causal attention."""
    return 6.0 * matmul_param_count(cfg) + attention_flops_per_token(cfg, seq_len)


def flops_per_step(cfg: ModelConfig, seq_len: int, global_batch_size: int) -> float:
    """Training FLOPs of one optimizer step (all micro-batches)."""
    return flops_per_token(cfg, seq_len) * seq_len * global_batch_size


def peak_flops_per_device(configured: float = 0.0, device: jax.Device | None = None) -> float:
    """The configured peak if > 0, else the table entry for this device kind (0 if unknown)."""
    if configured and configured > 0:
        return float(configured)
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return cpu_peak_flops()
    kind = device.device_kind
    for prefix in sorted(PEAK_FLOPS_BY_DEVICE_KIND, key=len, reverse=True):
        if kind.startswith(prefix):
            return PEAK_FLOPS_BY_DEVICE_KIND[prefix]
    return 0.0


def mfu(
    tokens_per_second: float,
    cfg: ModelConfig,
    seq_len: int,
    num_devices: int,
    peak_per_device: float,
) -> float:
    """Model FLOPs utilization in [0, 1]; NaN when the peak is unknown."""
    if peak_per_device <= 0:
        return float("nan")
    achieved = tokens_per_second * flops_per_token(cfg, seq_len)
    return achieved / (peak_per_device * num_devices)
