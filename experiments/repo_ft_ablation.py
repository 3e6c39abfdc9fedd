"""Repository-level fine-tuning ablation: the report's Table 8.

One base model, then three arms compared on held-out repositories:

    base     the base model itself (no repository fine-tuning)
    repo8k   + fine-tuning on repository windows of 8K tokens
    repo64k  + fine-tuning on repository windows of 64K tokens

Windows (`data.mode='repo'`) concatenate a repository's files dependencies-first with
`# File: path` headers. Both fine-tuning arms see the same number of tokens per step
(the 64K arm uses 8x fewer, 8x longer sequences). At smaller scales the windows shrink
but keep their 1:8 ratio (cpu: 512 and 4,096 tokens).

The `base` arm trains the base model (file mode, FIM 50%); the fine-tuning arms start
from its newest checkpoint (`train.init_checkpoint='arm:base'`), so run the arms in order
(no --arm) or run --arm=base first. Metrics: RepoBench-style next-line completion on
held-out repositories (exact match, edit similarity) and held-out loss.
"""

from __future__ import annotations

import ml_collections

from zen_code_jax.config import apply_overrides, set_arms, start_config

# (short window, long window, sequences per step of the short arm) per scale.
WINDOWS = {
    "smoke": (64, 512, 64),
    "cpu": (512, 4096, 8),
    "gpu": (1024, 8192, 64),
    "paper": (8192, 65_536, 512),
}
# Fine-tuning steps per arm, per scale (the base arm trains `train.steps`).
FT_STEPS = {"smoke": 4, "cpu": 150, "gpu": 300, "paper": 12_000}  # paper: ~50B tokens


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c, overrides = start_config("repo_ft_ablation", arg)
    short, long, batch = WINDOWS[c.scale]
    c.data.mode = "file"
    c.fim.rate = 0.5
    c.eval.tasks = ("heldout_loss", "repo_completion")
    if c.scale == "smoke":
        c.eval.tasks = ("repo_completion",)
    # Same model config in every arm (a checkpoint only loads into an identical model).
    c.model.max_position_embeddings = max(long, c.model.max_position_embeddings)
    if c.scale == "cpu":
        c.train.steps = 300
    ft = {
        "data.mode": "repo",
        "train.init_checkpoint": "arm:base",
        "train.steps": FT_STEPS[c.scale],
        "optimizer.warmup_steps": max(1, FT_STEPS[c.scale] // 10),
        "optimizer.peak_lr": c.optimizer.peak_lr / 3,
    }
    set_arms(
        c,
        {
            "base": {},
            "repo8k": {**ft, "train.seq_len": short, "train.global_batch_size": batch},
            "repo64k": {**ft, "train.seq_len": long, "train.global_batch_size": batch // 8},
        },
    )
    apply_overrides(c, overrides)
    return c
