"""Zen-Coder-Flash: distil a fast student from the FIM ablation's fim50 model.

The report closes on a distilled fast-inference variant for editor autocomplete. A `flash`
student (about a quarter of the teacher's parameters, the same tokenizer) is trained on
the same rows as its teacher (the FIM ablation's data, FIM rate 50%, context-level below
the paper scale), three ways:

    scratch   next-token CE only (the baseline)
    distill   alpha x CE + (1 - alpha) x T^2 x KL(teacher_T || student_T), teacher online
    offline   the same loss from the teacher's top-k log-probs written once beforehand
              (distill.top_k per position + one rest bucket; docs/distill.md)

Teacher: the FIM ablation's fim50 arm (`arm:fim_ablation/fim50`) when WORKDIR holds it,
else an arm `big_teacher` trained here first (arms run in name order) with exactly fim50's settings. ARG `teacher=`
picks: `auto` (default), `fim50`, `train`, or any checkpoint name (hf:DIR, a run dir).
The report's table (report.tables = flash): held-out bits/byte, PSM middle loss, the
prefix-only gap, held-out single-line EM, parameters and ms per decoded token at batch 1
(`decode_speed`), for each student and the teacher.

    python experiments/run.py --config=experiments/flash_distill.py          # cpu, teacher reused
    python experiments/run.py --config=experiments/flash_distill.py:smoke,teacher=train  # ~1 min
    python experiments/run.py --config=experiments/flash_distill.py:gpu
    python experiments/run.py --config=experiments/flash_distill.py:paper

Measured cost, on the 2-core machine at load average 15-19 (eight other jobs): smoke with
the teacher trained inside, full evaluation, 5 min 47 s (under 1 min of it training); cpu
scale, teacher reused, per arm: scratch 36 min (24 training + 12 evaluation), distill
33 min of training at 0.09-0.13 steps/s (the teacher's forward beside the student),
offline 6 min 50 s in all at load ~5 (logit preparation 2.6 min). Not measured idle.
gpu and paper scales are written out, not yet run.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import ml_collections

from zen_code_jax.config import apply_overrides, arm_config, model_group, set_arms
from zen_code_jax.experiment.setup import Scale, parse_config_arg

# The student per scale (the teacher is fim_ablation's fim50 row at the same scale).
SCALES = {
    # tiny teacher (vocab 512) -> a ~25K-parameter student, a handful of steps.
    "smoke": Scale(
        "flash",
        seq_len=128,
        batch=8,
        steps=6,
        lr=(3e-3, 3e-4, 2),
        model_overrides=dict(
            vocab_size=512,
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            num_kv_heads=1,
            intermediate_size=64,
            max_position_embeddings=2048,
            attention_block_size=64,
            dtype="float32",
        ),
    ),
    # cpu_small (7.2M) -> flash (1.9M, 26%), the teacher's 256 steps x 4 x 512 tokens.
    "cpu": Scale(
        "flash",
        seq_len=512,
        batch=4,
        steps=256,
        lr=(2e-3, 2e-4, 30),
        model_overrides={"dtype": "float32"},
    ),
    # gpu_small (~40M) -> ~10M: hidden 256, 4 layers, vocab 16,384.
    "gpu": Scale(
        "flash",
        seq_len=1024,
        batch=32,
        steps=240,
        lr=(2e-3, 2e-4, 24),
        model_overrides=dict(
            vocab_size=16_384,
            hidden_size=256,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=768,
            max_position_embeddings=4096,
            attention_block_size=512,
        ),
    ),
    # zen_code_14b -> ~3.4B: hidden 3072, 24 layers, 24/4 heads, FFN 8,192, full vocabulary.
    "paper": Scale(
        "flash",
        seq_len=4096,
        batch=1024,
        steps=150_000,
        lr=(3e-4, 3e-5, 1000),
        model_overrides=dict(
            vocab_size=151_936,
            hidden_size=3072,
            num_layers=24,
            num_heads=24,
            num_kv_heads=4,
            intermediate_size=8192,
            max_position_embeddings=65_536,
            rope_theta=2_000_000.0,
            remat_policy="full",
            attention_block_size=512,
        ),
    ),
}

DISTILL = dict(alpha=0.5, temperature=1.0, kl="forward")
TOP_K = {"smoke": 16, "cpu": 32, "gpu": 64, "paper": 64}
FIM50 = "arm:fim_ablation/fim50"


def _fim_ablation():
    """experiments/fim_ablation.py, the teacher's experiment (its data, FIM and eval)."""
    path = Path(__file__).with_name("fim_ablation.py")
    spec = importlib.util.spec_from_file_location("fim_ablation_for_flash", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _workdir() -> Path:
    """run.py's --workdir (read from the command line: the config is built before absl
    parses flags); ./runs by default."""
    argv = sys.argv[1:]
    for i, a in enumerate(argv):
        if a.startswith("--workdir="):
            return Path(a.split("=", 1)[1])
        if a == "--workdir" and i + 1 < len(argv):
            return Path(argv[i + 1])
    return Path("./runs")


def _teacher_spec(choice: str) -> str:
    """The teacher's checkpoint name; "" = train it here (arm `big_teacher`)."""
    if choice == "auto":
        found = (_workdir() / "fim_ablation" / "fim50" / "checkpoints").is_dir()
        return FIM50 if found else ""
    if choice == "fim50":
        return FIM50
    if choice == "train":
        return ""
    return choice


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    scale, overrides = parse_config_arg(arg)
    teacher = _teacher_spec(overrides.pop("teacher", "auto"))
    fim = _fim_ablation().get_config(scale)
    fim50 = arm_config(fim, "fim50")  # the teacher's exact settings
    teacher_arm = {
        **{f"model.{k}": v for k, v in fim50.model.to_dict().items()},
        **{f"train.{k}": fim50.train[k] for k in ("steps", "global_batch_size")},
        **{f"optimizer.{k}": fim50.optimizer[k] for k in ("peak_lr", "final_lr", "warmup_steps")},
    }
    c = fim50  # same data, FIM, eval settings as the teacher (so the same tokenizer)
    c.name = "flash_distill"
    c.arm = ""
    row = SCALES[scale]
    c.model = model_group(row.model, **dict(row.model_overrides))
    peak, final, warmup = row.lr
    c.train.update(dict(seq_len=row.seq_len, global_batch_size=row.batch, steps=row.steps))
    c.optimizer.update(dict(peak_lr=peak, final_lr=final, warmup_steps=warmup))
    c.eval.tasks = ("heldout_loss", "heldout_fim", "decode_speed")
    if scale == "smoke":
        c.eval.tasks = ("heldout_fim", "decode_speed")
    c.distill.update(DISTILL)
    c.distill.top_k = TOP_K[scale]
    # The teacher computes in float32 at the CPU scales (its training dtype there): bf16
    # storage would move its logits; on accelerators bf16 halves its memory.
    c.distill.teacher_dtype = "float32" if scale in ("smoke", "cpu") else "bfloat16"
    c.report.tables = ("flash",)
    arms: dict[str, dict] = {}
    if not teacher:
        teacher = "arm:big_teacher"
        arms["big_teacher"] = teacher_arm
    distill = {"train.objective": "distill", "distill.teacher": teacher}
    arms.update(
        {
            "scratch": {"train.objective": "lm"},
            "distill": distill,
            "offline": {**distill, "distill.logits_dir": "run"},
        }
    )
    set_arms(c, arms)
    apply_overrides(c, overrides)
    return c
