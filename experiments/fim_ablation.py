"""FIM-rate ablation: the report's Table 7 (section 5, "Effect of FIM rate").

Four arms, identical except for the share of training files turned into fill-in-the-middle
examples (half of those in SPM order, as in pretraining):

    fim0 (0%), fim25 (25%), fim50 (50%), fim75 (75%)

Metrics as in Table 7: HumanEval pass@1 (left-to-right ability) and HumanEval-Infilling
single-line exact match. Because a CPU-sized model scores 0 on both, the CPU scale also
reports held-out signals that move long before exact match does: left-to-right bits per
byte, the loss of the masked middle under PSM / SPM / prefix-only prompts, and single-line
FIM exact match on held-out files.

    python experiments/run.py --config=experiments/fim_ablation.py          # cpu (~45 min)
    python experiments/run.py --config=experiments/fim_ablation.py:smoke    # seconds
    python experiments/run.py --config=experiments/fim_ablation.py:gpu      # one H100
"""

from __future__ import annotations

import ml_collections

from zen_code_jax.config import apply_overrides, set_arms, start_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c, overrides = start_config("fim_ablation", arg)
    c.data.mode = "file"
    c.fim.spm_rate = 0.5
    c.eval.tasks = ("heldout_loss", "heldout_fim", "humaneval_infill_single", "humaneval")
    if c.scale == "smoke":  # (heldout_loss is exercised by pretrain's smoke run)
        c.eval.tasks = ("heldout_fim",)
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
