"""What a run will do, printed before it starts, and the throughput figures it watches.

One place for the numbers a user sees on a long job: the plan line per arm (parameters,
steps, tokens, estimated time), the devices MFU is counted over, and the typical MFU per
backend behind the time estimate.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from zen_code_jax.config import arm_config, model_config_from
from zen_code_jax.model.config import param_count
from zen_code_jax.train import flops
from zen_code_jax.train.standard_hooks import format_duration

# Typical MFU against flops.peak_flops_per_device, for the plan's time estimate only
# (cpu: ~0.28 measured for cpu_small on the 2-core AVX2 machine, docs/measurements.md).
TYPICAL_MFU = {"cpu": 0.3, "gpu": 0.35, "tpu": 0.4}


def mfu_device_count() -> int:
    """Devices MFU is counted over: the CPU backend's simulated devices share one host's
    cores, so the host counts once."""
    return 1 if jax.devices()[0].platform == "cpu" else jax.device_count()


def peak_flops(config: ml_collections.ConfigDict) -> float:
    return flops.peak_flops_per_device(float(config.train.peak_flops_per_device))


def tokens_per_s_guess(config: ml_collections.ConfigDict) -> float:
    """A rough throughput for the plan: the peak FLOP/s at a typical MFU for the backend."""
    platform = jax.devices()[0].platform
    mfu = TYPICAL_MFU.get(platform, 0.1)
    per_token = flops.flops_per_token(model_config_from(config.model), int(config.train.seq_len))
    return peak_flops(config) * mfu_device_count() * mfu / per_token


def plan_line(config: ml_collections.ConfigDict, arm: str, tokens_per_s: float) -> str:
    """One line: arm, parameters, steps, tokens, estimated training time."""
    model_cfg = model_config_from(config.model)
    params = f"{param_count(model_cfg) / 1e6:,.1f}M params"
    epochs = int(config.train.epochs)
    if epochs > 0:  # the step count is known once the data is read (run_arm prints it)
        return f"  {arm:<10} {params}, {epochs} epochs (steps = epochs x batches per epoch)"
    steps = int(config.train.steps)
    tokens = steps * int(config.train.global_batch_size) * int(config.train.seq_len)
    est = tokens / tokens_per_s if tokens_per_s > 0 else float("nan")
    return (
        f"  {arm:<10} {params}, {steps:,} steps, "
        f"{tokens / 1e6:,.2f}M tokens, est. {format_duration(est)} training"
    )


def print_plan(config: ml_collections.ConfigDict, arms: list[str], where: Any) -> None:
    print("=" * 80)
    print(f"Experiment {config.name!r} at scale {config.scale!r}; resolved config:")
    print(config)
    print(f"Plan ({len(arms)} arm(s), run dirs under {where}):")
    for arm in arms:
        cfg = arm_config(config, arm if arm in config.arms else "")
        overrides = dict(config.arms[arm]) if arm in config.arms else {}
        print(plan_line(cfg, arm, tokens_per_s_guess(cfg)) + f"  {overrides or ''}")
    print("=" * 80, flush=True)
