"""Pretraining as in the report's section 3.3.

`zen_code_14b` (Table 1), the Table 2 domain mixture and Table 3 language shares, 50% FIM
with half of it SPM, AdamW 3e-4 -> 3e-5 on a cosine after 1,000 warm-up steps, weight
decay 0.1, 4M-token batches (1,024 x 4,096), bf16 compute, about 625K steps.

The `paper` scale carries mesh settings for two targets, chosen in the ARG:

    --config=experiments/pretrain.py:paper                   # TPU v5p pod slice (default)
    --config=experiments/pretrain.py:paper,target=h100x64    # 64 x H100 (8 hosts x 8)

Smaller scales keep the recipe (mixture, FIM, schedule shape) on a small model:

    --config=experiments/pretrain.py:smoke | :cpu | :gpu

Measured cost: smoke ~10 s; cpu ~7 min training + held-out loss (one arm of the FIM
ablation's budget, docs/measurements.md); paper: see BUILD.md's memory plan.
"""

from __future__ import annotations

import ml_collections

from zen_code_jax.config import apply_overrides
from zen_code_jax.experiment.setup import Scale, start_config

SCALES = {
    "smoke": Scale("tiny", seq_len=128, batch=8, steps=6, lr=(3e-3, 3e-4, 2)),
    # float32: faster than bf16 on CPUs without native bf16 (AVX2); ~7 min per 256 steps.
    "cpu": Scale(
        "cpu_small",
        seq_len=512,
        batch=4,
        steps=256,
        lr=(1e-3, 1e-4, 30),
        model_overrides={"dtype": "float32"},
    ),
    "gpu": Scale("gpu_small", seq_len=1024, batch=64, steps=1000, lr=(1e-3, 1e-4, 100)),
    # Section 3.3: 1,024 x 4,096 = 4.19M tokens per step, 3e-4 -> 3e-5 after 1K warm-up.
    "paper": Scale("zen_code_14b", seq_len=4096, batch=1024, steps=625_000, lr=(3e-4, 3e-5, 1000)),
}

# Table 2: share of pretraining tokens per domain.
DOMAIN_WEIGHTS = {
    "code": 0.60,
    "docs": 0.15,
    "qa": 0.10,
    "papers": 0.05,
    "web": 0.05,
    "formal": 0.03,
    "synthetic": 0.02,
}
# Table 3: share of code tokens per language. "Other" (the report's 70+ other languages,
# 13%) is one share, divided among the unnamed languages by their bytes (corpus.py).
LANGUAGE_WEIGHTS = {
    "Python": 0.24,
    "JavaScript": 0.16,
    "TypeScript": 0.10,
    "Java": 0.09,
    "C/C++": 0.08,
    "Rust": 0.06,
    "Go": 0.05,
    "Ruby": 0.03,
    "PHP": 0.03,
    "Shell": 0.03,
    "Other": 0.13,
}
# data, fsdp, tensor, sequence. 14B params + AdamW moments in f32 are ~200 GB, so the state
# is sharded over fsdp; data parallelism takes the remaining devices.
MESHES = {
    # v5p: 95 GB HBM per chip; FSDP over 64 chips leaves ~3 GB of state per chip.
    "tpu_v5p": dict(data=-1, fsdp=64, tensor=1, sequence=1),
    # 8 hosts x 8 H100 (80 GB): FSDP inside a host over NVLink (~25 GB of state per GPU),
    # data parallel across the 8 hosts.
    "h100x64": dict(data=8, fsdp=8, tensor=1, sequence=1),
}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c, overrides = start_config("pretrain", arg, SCALES)
    target = overrides.pop("target", "tpu_v5p")
    if target not in MESHES:
        raise ValueError(f"Unknown target {target!r}; use one of {sorted(MESHES)}.")
    c.data.mode = "file"
    c.fim.rate = 0.5
    c.fim.spm_rate = 0.5
    c.optimizer.update(dict(b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0))
    if c.scale == "paper":
        c.data.domain_weights = DOMAIN_WEIGHTS
        c.data.language_weights = LANGUAGE_WEIGHTS
        c.mesh.update(MESHES[target])
        if target == "h100x64":
            # 1,024 sequences over 64 GPUs = 16 per GPU; 4 micro-batches of 4 each.
            c.train.micro_batch_size = 256
        c.eval.tasks = ("heldout_loss", "humaneval", "humaneval_infill_single")
    else:
        c.eval.tasks = ("heldout_loss",)
    apply_overrides(c, overrides)
    return c
