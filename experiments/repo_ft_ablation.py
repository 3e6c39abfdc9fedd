"""Repository-level fine-tuning ablation: the report's Table 8.

One base model, then four arms compared on held-out repositories:

    base             the base model itself (no repository fine-tuning)
    repo8k           + fine-tuning on repository windows of 8K tokens
    repo64k          + fine-tuning on repository windows of 64K tokens
    repo64k_symbols  repo64k whose windows open with the report's "structured file-path
                     and symbol-table prefixes" (`data.repo_prefix="paths+symbols"`: the
                     window's paths, then each context file's top-level signatures, within
                     `data.repo_prefix_tokens`; evaluation prompts carry the same prefix)

The fine-tuning arms train on repositories with more than 10 files and 1,000 lines (the
report's filter; `data.min_repo_files` / `data.min_repo_lines`, off at smoke scale).
Windows (`data.mode='repo'`) concatenate a repository's files dependencies-first in the
`data.repo_format` layout (default "report": a `# File: path` / `// File: path` header in
the file's comment syntax; "qwen2.5" and "starcoder2" use `<|repo_name|>`/`<|file_sep|>`;
docs/fim.md). FIM, when on, is drawn per window and sits inside the window's
last file (context files stay plain). Both fine-tuning arms see the same number of tokens per step
(the 64K arm uses 8x fewer, 8x longer sequences). At smaller scales the windows shrink
but keep their 1:8 ratio (cpu: 512 and 4,096 tokens).

The `base` arm trains the base model (file mode, FIM 50%); the fine-tuning arms start
from its newest checkpoint (`train.init_checkpoint='arm:base'`), so run the arms in order
(no --arm) or run --arm=base first. Metrics: RepoBench-style next-line completion on
held-out repositories (exact match, edit similarity) and held-out loss.

    python experiments/run.py --config=experiments/repo_ft_ablation.py         # cpu
    python experiments/run.py --config=experiments/repo_ft_ablation.py:smoke   # ~20 s

Measured cost: smoke ~20 s on the 2-core CI machine; the cpu scale trains 300 base
steps plus 150 fine-tuning steps per arm (the 4,096-token arm runs 8x fewer, 8x longer
sequences). Timed end to end once (2026-12-07, fresh clone): 1 h 42 min wall beside two
other long runs and the CI suite (load average 6-9 on 2 cores), peak RSS 2.43 GB; the
4,096-token arms are the slow ones (0.10 steps/s under that load, 5-8 min of
repo_completion scoring each). Results: docs/measurements.md, "Repository fine-tuning".
"""

from __future__ import annotations

import ml_collections

from zen_code_jax.config import apply_overrides, set_arms
from zen_code_jax.experiment.setup import Scale, start_config

# What the `base` arm trains (file mode, FIM 50%) per scale.
SCALES = {
    "smoke": Scale("tiny", seq_len=128, batch=8, steps=6, lr=(3e-3, 3e-4, 2)),
    # 300 base steps (vs 256 in the FIM ablation) so the base model knows the code well
    # enough for repository fine-tuning to show in next-line completion.
    "cpu": Scale(
        "cpu_small",
        seq_len=512,
        batch=4,
        steps=300,
        lr=(1e-3, 1e-4, 30),
        model_overrides={"dtype": "float32"},
    ),
    "gpu": Scale("gpu_small", seq_len=1024, batch=64, steps=1000, lr=(1e-3, 1e-4, 100)),
    "paper": Scale("zen_code_14b", seq_len=4096, batch=1024, steps=625_000, lr=(3e-4, 3e-5, 1000)),
}
# (short window, long window, sequences per step of the short arm) per scale.
WINDOWS = {
    "smoke": (64, 512, 64),
    "cpu": (512, 4096, 8),
    "gpu": (1024, 8192, 64),
    "paper": (8192, 65_536, 512),
}
# The report's repository-level data filter (> 10 files and > 1K lines per repository),
# applied to the fine-tuning arms' training split only (the held-out split, and the
# tokenizer, stay those of the base arm). On the stdlib it keeps 21 of 50 repositories and
# 89% of the bytes (1,660 of 1,787 files), so cpu uses it as is; the smoke corpus (80 files
# over ~50 repositories, ~2 a repository) would keep none, so smoke turns it off.
REPO_FILTER = {"smoke": (0, 0), "cpu": (10, 1000), "gpu": (10, 1000), "paper": (10, 1000)}
# Fine-tuning steps per arm, per scale (the base arm trains `train.steps`).
FT_STEPS = {"smoke": 4, "cpu": 150, "gpu": 300, "paper": 12_000}  # paper: ~50B tokens
# The symbol arm's prefix budget per scale: 1/8 of its long window (at most a quarter).
PREFIX_TOKENS = {"smoke": 64, "cpu": 512, "gpu": 1024, "paper": 8192}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c, overrides = start_config("repo_ft_ablation", arg, SCALES)
    short, long, batch = WINDOWS[c.scale]
    c.data.mode = "file"
    c.fim.rate = 0.5
    c.eval.tasks = ("heldout_loss", "repo_completion")
    c.report.tables = ("repo_ft",)
    if c.scale == "smoke":
        c.eval.tasks = ("repo_completion",)
    # Same model config in every arm (a checkpoint only loads into an identical model).
    c.model.max_position_embeddings = max(long, c.model.max_position_embeddings)
    ft = {
        "data.mode": "repo",
        "train.init_checkpoint": "arm:base",
        "train.steps": FT_STEPS[c.scale],
        "optimizer.warmup_steps": max(1, FT_STEPS[c.scale] // 10),
        "optimizer.peak_lr": c.optimizer.peak_lr / 3,
        "data.min_repo_files": REPO_FILTER[c.scale][0],
        "data.min_repo_lines": REPO_FILTER[c.scale][1],
    }
    set_arms(
        c,
        {
            "base": {},
            "repo8k": {**ft, "train.seq_len": short, "train.global_batch_size": batch},
            "repo64k": {**ft, "train.seq_len": long, "train.global_batch_size": batch // 8},
            "repo64k_symbols": {
                **ft,
                "train.seq_len": long,
                "train.global_batch_size": batch // 8,
                "data.repo_prefix": "paths+symbols",
                "data.repo_prefix_tokens": PREFIX_TOKENS[c.scale],
            },
        },
    )
    apply_overrides(c, overrides)
    return c
