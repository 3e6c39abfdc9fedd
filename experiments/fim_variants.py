"""FIM variants beyond Bavarian et al. (2022), each against the same FIM-50% baseline.

Five arms, all at the FIM ablation's `fim50` settings (`experiments/fim_ablation.py`: FIM
rate 0.5, half SPM, document level at the paper scale and context level below it, the
same model, data, steps and evaluation), each changing one thing:

    baseline  character-level spans, first-fit packing (= fim_ablation's fim50)
    line      fim.span="line": spans cut at line boundaries
    ast       fim.span="ast": a whole syntax-tree node of the parsed file as the middle
    hlp       train.hlp_weight=1: + Horizon-Length Prediction (train/hlp.py)
    best_fit  data.packing="best_fit": best-fit packing of the training rows

The claims being tested, as the papers state them:
- AST-FIM (Gong et al., 2025, "Evaluation of LLMs on Syntax-Aware Code Fill-in-the-Middle
  Tasks" / "AST-FIM"): masking whole syntax-tree nodes instead of random character spans
  gives up to +5 points on real-world infilling benchmarks, with no loss in left-to-right
  ability. Line-level spans are the cheap middle ground many FIM benchmarks (single- and
  multi-line infilling) are built on.
- HLP (Ding et al., 2024/2025, arXiv 2410.03103): an auxiliary head predicting the share
  of middle tokens still to come, trained with an L1 loss beside next-token prediction
  and dropped at inference, improves FIM by up to 24% relative across file- and
  repository-level benchmarks at negligible training cost and no inference cost.
- Best-fit packing (MaxText measured up to 27.6% less padding than first-fit): more real
  tokens per step at the same compute. With our streaming packer the gain is far smaller
  (docs/measurements.md: 3.21% -> 3.02% padding at 4,096 tokens, 5.86% -> 5.83% at 512 on
  the stdlib), so this arm mostly checks that the packer changes nothing else.

What the report shows: every metric per arm with its own bootstrap ± (the Table 7 layout),
and each arm's difference from `baseline` with a paired bootstrap over the same held-out
files and examples (report.md "Differences from the baseline"), which is the sharp test:
per-arm intervals (± 0.16 bits/byte) dwarf differences that pairing resolves. At the cpu
scale a 7M-parameter model scores 0 on exact match, so the held-out middle losses (PSM,
SPM, prefix-only) and their gap are the signals (see fim_ablation's docstring).

The `line` and `ast` arms need the `fim.span` config key (issue 21 items 1-2, built
beside this file); on a tree without it they are left out with a warning, never silently.

    python experiments/run.py --config=experiments/fim_variants.py:smoke  # seconds when idle
    python experiments/run.py --config=experiments/fim_variants.py        # cpu: ~40 min est.
    python experiments/run.py --config=experiments/fim_variants.py:gpu    # one H100/H200
    python experiments/run.py --config=experiments/fim_variants.py:paper  # the 14B recipe

Measured cost: the smoke test (tests/test_experiments.py::test_fim_variants_smoke: three
arms, as this tree has no fim.span, corpus preparation included) took 9 min 30 s on the
2-core CI machine shared with eight other jobs (load ~15), where fim_ablation's own smoke,
run beside it, took 6.5-8 min per arm; it trains the same model for the same steps as
fim_ablation's smoke (~15 s idle). The cpu scale is sized from fim_ablation's measured
36 min for four arms (~6 min training + ~2.5 min evaluation per arm): five arms with the
evaluation cut to the two held-out tasks (the only ones that move at this scale) come to
~40 minutes idle. Timed end to end once (2026-12-07, fresh clone): 1 h 18 min wall beside
two other long runs and the CI suite (load average 6-9 on 2 cores), peak RSS 1.99 GB; the
results and how to read them are in docs/fim_variants.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

import ml_collections

from zen_code_jax.config import apply_overrides, set_arms
from zen_code_jax.experiment.cli import load_experiment_module
from zen_code_jax.experiment.setup import parse_config_arg

log = logging.getLogger(__name__)

# The scales, model, data and FIM settings are the FIM ablation's (one fact in one place).
FIM_ABLATION = load_experiment_module(str(Path(__file__).with_name("fim_ablation.py")))
SCALES = FIM_ABLATION.SCALES

HLP_WEIGHT = 1.0  # the paper's L = L_NTP + L_HLP
ARMS: dict[str, dict[str, object]] = {
    "baseline": {},
    "line": {"fim.span": "line"},
    "ast": {"fim.span": "ast"},
    "hlp": {"train.hlp_weight": HLP_WEIGHT},
    "best_fit": {"data.packing": "best_fit"},
}


def _has_key(c: ml_collections.ConfigDict, dotted: str) -> bool:
    group, key = dotted.split(".")
    return group in c and key in c[group]


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    scale, overrides = parse_config_arg(arg)
    c = FIM_ABLATION.get_config(scale)  # fim_ablation at this scale, without our overrides
    c.name = "fim_variants"
    c.fim.rate = 0.5
    if c.scale == "cpu":  # only the held-out signals move at this scale (see the docstring)
        c.eval.tasks = ("heldout_loss", "heldout_fim")
    arms = {a: o for a, o in ARMS.items() if all(_has_key(c, k) for k in o)}
    if len(arms) < len(ARMS):
        log.warning(
            "fim_variants: arms %s need config keys this tree lacks (%s); running %s.",
            sorted(set(ARMS) - set(arms)),
            sorted({k for o in ARMS.values() for k in o if not _has_key(c, k)}),
            list(arms),
        )
    set_arms(c, arms)
    c.report.baseline = "baseline"  # arms are kept in name order; the baseline is named
    apply_overrides(c, overrides)
    return c
