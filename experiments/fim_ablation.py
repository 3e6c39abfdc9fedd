"""FIM-rate ablation: the report's Table 7 (section 5, "Effect of FIM rate").

Four arms, identical except for the share of training code files turned into
fill-in-the-middle examples (half of those in SPM order, as in pretraining):

    fim0 (0%), fim25 (25%), fim50 (50%), fim75 (75%)

What the rate applies to: at the paper scale (`fim.level="document"`, the report's
setting) the share of *files* of the `fim.domains` domains (default code only), the
decision and split points drawn once per file over its whole text before it is cut into
sequence-sized pieces. At the smoke, cpu and gpu scales (`fim.level="context"`, Bavarian et
al.'s context-level FIM) the share of packed fragments (one document's part of one row),
FIM applied after packing with the length restored by `<|fim_pad|>` (never in the loss):
with 512-token rows a document-level FIM file's prefix, suffix and middle fall in
different rows (measured: see get_config). Either way the draws are common to all arms (one
set of uniforms per unit, split points always drawn), so FIM(25%) ⊂ FIM(50%) ⊂ FIM(75%)
unit by unit and the arms differ only in the rate. Rows are shuffled within 64-row packing groups, so
a batch mixes ~2.8 files instead of 1.5 (docs/measurements.md). Metrics as in Table 7: HumanEval pass@1
(left-to-right ability) and HumanEval-Infilling single-line exact match. Because a CPU-sized
model scores 0 on both, the cpu scale also reports held-out signals that move long before
exact match does: left-to-right bits per byte, the loss of the masked middle under PSM /
SPM / prefix-only prompts, and single-line FIM exact match on held-out files.

    python experiments/run.py --config=experiments/fim_ablation.py          # cpu: 36 min
    python experiments/run.py --config=experiments/fim_ablation.py:smoke    # ~15 s
    python experiments/run.py --config=experiments/fim_ablation.py:gpu      # one H200, <= 6 min

Measured cost (docs/measurements.md): cpu scale 36 min 00 s wall end to end on the 2-core
AVX2 CI machine, corpus preparation included (~6 min training + ~2.5 min evaluation per
arm, 1.8 GB peak RSS).
"""

from __future__ import annotations

import ml_collections

from zen_code_jax.config import apply_overrides, set_arms
from zen_code_jax.experiment.setup import Scale, start_config

SCALES = {
    "smoke": Scale("tiny", seq_len=128, batch=8, steps=6, lr=(3e-3, 3e-4, 2)),
    # float32: on the 2-core AVX2 CI machine (no AVX-512 bf16) bf16 steps were slower
    # (1.24K vs 1.44K tok/s at batch 8). 256 steps x 4 x 512 = 0.52M tokens per arm train
    # in ~7 minutes, so the four arms, evaluation and preparation fit the 36-minute job.
    "cpu": Scale(
        "cpu_small",
        seq_len=512,
        batch=4,
        steps=256,
        lr=(1e-3, 1e-4, 30),
        model_overrides={"dtype": "float32"},
    ),
    # Sized to launch/gpu_check.sh's budget: the whole ablation (preparation, 4 arms,
    # evaluation, report) in <= 6 minutes on one H200 + 16 cores. A ~40M-parameter model,
    # 240 steps x 32 x 1024 = 7.9M tokens per arm (~1 epoch of the 24 MB capped `local`
    # corpus, ~25 s at an estimated 300K tok/s), the compilation cache shared by the arms.
    # Estimated, not yet measured on the device: gpu_check.sh records the real times.
    "gpu": Scale("gpu_small", seq_len=1024, batch=32, steps=240, lr=(1e-3, 1e-4, 24)),
    # Table 1's model with the pretraining recipe: 1,024 x 4,096 = 4.19M tokens per step.
    "paper": Scale("zen_code_14b", seq_len=4096, batch=1024, steps=625_000, lr=(3e-4, 3e-5, 1000)),
}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c, overrides = start_config("fim_ablation", arg, SCALES)
    c.data.mode = "file"
    c.fim.spm_rate = 0.5  # half of the FIM examples in SPM order, as in pretraining
    # Below the paper's scale, FIM per packed fragment (context level): with 512-token rows
    # a document-level FIM file's prefix, suffix and middle land in different rows, so the
    # arms barely see a FIM example. Measured at cpu scale (docs/measurements.md): document
    # level left the FIM arms' PSM middle loss within 0.02-0.15 bits/byte of fim0's and
    # above their own prefix-only loss in every arm; the paper's 4K-64K rows hold whole files.
    if c.scale != "paper":
        c.fim.level = "context"
    c.eval.tasks = (
        "heldout_loss",
        "heldout_fim",
        "humaneval_infill_single",
        "humaneval",
        # Table 7's FIM column under both published conventions (docs/eval.md).
        "humaneval_fim_qwen",
        "humaneval_infilling_openai_single",
    )
    if c.scale == "smoke":  # (heldout_loss is exercised by pretrain's smoke run)
        c.eval.tasks = ("heldout_fim",)
    if c.scale == "gpu":
        # The time budget: the `local` corpus capped at 24 MB (preparation ~1 min on 14
        # processes), the sandbox on 14 of the 16 cores; HumanEval-Infilling single-line
        # (1,033) and HumanEval (164) in full (eval.limit=0), greedy, 64 new tokens.
        apply_overrides(
            c,
            {
                "data.max_bytes": 24_000_000,
                "data.num_prepare_processes": 14,
                "eval.sandbox_workers": 14,
                "eval.task_options.heldout_loss.files": 40,
            },
        )
    c.report.tables = ("fim_rate",)
    set_arms(
        c,
        {
            "fim0": {"fim.rate": 0.0},
            "fim25": {"fim.rate": 0.25},
            "fim50": {"fim.rate": 0.5},
            "fim75": {"fim.rate": 0.75},
        },
    )
    apply_overrides(c, overrides)
    return c
