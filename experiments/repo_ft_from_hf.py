"""Repository-level fine-tuning of a Hugging Face base: Table 8's arms from `hf:PATH`.

The same comparison as `repo_ft_ablation.py` (8K vs 64K repository windows, the same
tokens per step), but the base is a public Qwen2 / Qwen2.5-Coder checkpoint instead of a
model pretrained here: both arms start from `train.init_checkpoint="hf:PATH"`, tokenize
with the checkpoint's own tokenizer and keep its architecture (read from
PATH/config.json; only precision, remat and kernels are ours).

    base     the HF checkpoint itself, evaluated (one step at learning rate 0)
    repo8k   + fine-tuning on repository windows of 8K tokens
    repo64k  + fine-tuning on repository windows of 64K tokens

    python experiments/run.py --config=experiments/repo_ft_from_hf.py:paper,hf=/models/Qwen2.5-Coder-7B
    python experiments/run.py --config=experiments/repo_ft_from_hf.py:smoke,hf=DIR   # a test fixture

ARG is `<scale>,hf=PATH[,key=value...]`; PATH is required. At the smoke scale the windows
shrink to 64 / 512 tokens (the same 1:8 ratio), for the tests' tiny random fixture.
Measured cost: smoke ~1 minute on the 2-core machine (tests/test_hf_experiment.py); the
paper scale is the report's Table 8 budget (~50B tokens per arm), not run here.
"""

from __future__ import annotations

import ml_collections

from zen_code_jax.config import apply_overrides, model_group, set_arms
from zen_code_jax.experiment.setup import Scale, start_config
from zen_code_jax.hf.checkpoint import HFCheckpoint

# The `model` column is unused (the architecture comes from hf=PATH); batch and LR are the
# fine-tuning arms'.
SCALES = {
    "smoke": Scale("tiny", seq_len=64, batch=4, steps=2, lr=(1e-4, 1e-5, 1)),
    "cpu": Scale("cpu_small", seq_len=512, batch=8, steps=100, lr=(5e-5, 5e-6, 10)),
    "gpu": Scale("gpu_small", seq_len=8192, batch=64, steps=300, lr=(2e-5, 2e-6, 30)),
    "paper": Scale("zen_code_14b", seq_len=8192, batch=512, steps=12_000, lr=(1e-5, 1e-6, 1000)),
}
# (short window, long window) per scale: Table 8's 8K vs 64K, shrunk at small scales.
WINDOWS = {"smoke": (64, 512), "cpu": (512, 4096), "gpu": (8192, 65_536), "paper": (8192, 65_536)}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    parts = [p for p in (arg or "").split(",") if p]
    hf = [p[3:] for p in parts if p.startswith("hf=")]
    rest = ",".join(p for p in parts if not p.startswith("hf="))
    c, overrides = start_config("repo_ft_from_hf", rest, SCALES)
    short, long = WINDOWS[c.scale]
    if hf:
        base = HFCheckpoint.open(hf[0]).model_cfg
        own = {k: c.model[k] for k in ("remat_policy", "attention_impl", "attention_block_size")}
        # Train in float32 master weights; compute in the checkpoint's dtype (bf16 for
        # real bases).
        c.model = model_group(base.replace(param_dtype="float32", **own))
        c.model.max_position_embeddings = max(long, base.max_position_embeddings)
    # Without hf=PATH the config still builds (the scale's preset stands in, for listing
    # and tests); running it stops at "hf:" naming the missing PATH.
    c.train.init_checkpoint = f"hf:{hf[0] if hf else ''}"
    c.data.mode = "repo"
    c.eval.tasks = ("heldout_loss", "repo_completion")
    c.report.tables = ("repo_ft",)
    if c.scale == "smoke":
        c.eval.tasks = ("repo_completion",)
    batch = int(c.train.global_batch_size)
    set_arms(
        c,
        {
            # One step at learning rate 0 (the schedule needs >= 1 step): the HF weights.
            "base": {"train.steps": 1, "optimizer.peak_lr": 0.0, "optimizer.final_lr": 0.0},
            "repo8k": {"train.seq_len": short, "train.global_batch_size": batch},
            "repo64k": {"train.seq_len": long, "train.global_batch_size": max(1, batch // 8)},
        },
    )
    apply_overrides(c, overrides)
    return c
