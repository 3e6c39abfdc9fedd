"""What experiment files share: the ARG grammar, the per-scale table type, common settings.

An experiment file states what it trains at each scale in its own `SCALES` table (model,
sequence length, batch, steps, learning rate: the numbers a reader of a paper's setup
paragraph looks for) and calls `start_config(name, arg, SCALES)`. What is the same for every
experiment at a scale (logging and checkpoint cadence, how much evaluation, corpus caps for
tests, the paper's mesh) is `COMMON` below, in one place.

Scales: `smoke` (seconds, for tests), `cpu` (the default, minutes on a 2-core laptop),
`gpu` (one accelerator), `paper` (the report's settings, for pods and clusters).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from zen_code_jax.config import apply_overrides, base_config, model_group

SCALES = ("smoke", "cpu", "gpu", "paper")


@dataclasses.dataclass(frozen=True)
class Scale:
    """One row of an experiment's scale table."""

    model: str  # a preset of zen_code_jax.model.config.PRESETS
    seq_len: int  # tokens per sequence
    batch: int  # sequences per optimizer step (all hosts)
    steps: int  # optimizer steps
    lr: tuple[float, float, int]  # (peak, final, warm-up steps): linear warm-up, cosine
    model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# Settings every experiment shares at a scale, as dotted overrides.
COMMON: dict[str, dict[str, Any]] = {
    # A few dozen stdlib files and a handful of steps: every code path in seconds.
    "smoke": {
        "train.log_every": 1,
        "checkpoint.every": 2,
        "checkpoint.keep_last": 2,
        "data.heldout_fraction": 0.2,
        "data.max_files": 80,
        "eval.limit": 4,
        "eval.max_new_tokens": 8,
        "eval.batch_size": 4,
    },
    # 50 held-out lines / problems per task and 25 held-out files (~130K tokens) for the
    # left-to-right loss keep evaluation to ~2.5 minutes per arm on the 2-core machine.
    "cpu": {
        "train.log_every": 8,
        "checkpoint.every": 100,
        "checkpoint.keep_last": 2,
        "eval.limit": 50,
        "eval.task_options.heldout_loss.files": 25,
        "eval.max_new_tokens": 32,
        "eval.batch_size": 16,
    },
    "gpu": {
        "train.log_every": 50,
        "checkpoint.every": 250,
        "checkpoint.keep_last": 2,
        "data.source": "local",
        "eval.limit": 0,
        "eval.max_new_tokens": 64,
        "eval.batch_size": 64,
    },
    # The report's setting: 14B params + AdamW moments in f32 are ~200 GB, so the state is
    # sharded over 64-way FSDP; data parallelism takes the remaining devices.
    "paper": {
        "train.log_every": 100,
        "train.micro_batch_size": 0,
        "optimizer.weight_decay": 0.1,
        "mesh.data": -1,
        "mesh.fsdp": 64,
        "mesh.tensor": 1,
        "mesh.sequence": 1,
        "checkpoint.every": 1000,
        "checkpoint.keep_last": 3,
        "checkpoint.keep_every": 25_000,
        "eval.limit": 0,
        "eval.max_new_tokens": 512,
        "eval.batch_size": 64,
    },
}


def parse_config_arg(arg: str | None, default_scale: str = "cpu") -> tuple[str, dict[str, str]]:
    """Parse an experiment file's ARG, big_vision style: `SCALE[,key=value,...]`.

    `"gpu,train.steps=100"` -> `("gpu", {"train.steps": "100"})`; `scale=gpu` also works and
    an empty ARG means the default scale. Values stay strings here; `apply_overrides`
    parses them against the type of the field they replace.
    """
    scale, overrides = default_scale, {}
    for part in [p.strip() for p in (arg or "").split(",") if p.strip()]:
        if "=" in part:
            key, value = part.split("=", 1)
            if key.strip() == "scale":
                scale = value.strip()
            else:
                overrides[key.strip()] = value.strip()
        else:
            scale = part
    if scale not in SCALES:
        raise ValueError(
            f"Unknown scale {scale!r} in the config ARG {arg!r}. Use one of {list(SCALES)}, "
            "e.g. --config=experiments/fim_ablation.py:smoke or ...:cpu,train.steps=100."
        )
    return scale, overrides


def apply_scale(c: ml_collections.ConfigDict, scale: str, row: Scale) -> None:
    """Write one scale-table row and the scale's COMMON settings into `c`."""
    c.scale = scale
    c.model = model_group(row.model, **dict(row.model_overrides))
    peak, final, warmup = row.lr
    c.train.update(dict(seq_len=row.seq_len, global_batch_size=row.batch, steps=row.steps))
    c.optimizer.update(dict(peak_lr=peak, final_lr=final, warmup_steps=warmup))
    apply_overrides(c, COMMON[scale])


def start_config(
    name: str, arg: str | None, scales: Mapping[str, Scale]
) -> tuple[ml_collections.ConfigDict, dict[str, str]]:
    """base_config() named `name` at the ARG's scale; returns it and the ARG's overrides.

    Experiment files apply the overrides last (with `apply_overrides`) so the command line
    always wins over the file.
    """
    scale, overrides = parse_config_arg(arg)
    if scale not in scales:
        raise ValueError(
            f"Experiment {name!r} has no {scale!r} scale; its scales: {sorted(scales)}."
        )
    c = base_config()
    c.name = name
    apply_scale(c, scale, scales[scale])
    return c, overrides
