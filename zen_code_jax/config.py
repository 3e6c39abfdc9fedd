"""The experiment config schema: one ml-collections ConfigDict with fixed top-level groups.

Every experiment file in `experiments/` starts from `base_config()` and changes fields;
it never adds keys (ConfigDicts are locked), so a typo is an error that names the valid
keys. Groups: model, mesh, data, fim, optimizer, train, checkpoint, eval, arms.

Each group is owned by one part of the package, which reads only its own group(s):
  model -> zen_code_jax.model     mesh -> zen_code_jax.parallel
  data, fim -> zen_code_jax.data  optimizer, train, checkpoint -> zen_code_jax.train
  eval -> zen_code_jax.eval       arms -> experiments/run.py
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from zen_code_jax.model.config import PRESETS, ModelConfig, get_preset


def model_group(preset: str = "cpu_small", **overrides: Any) -> ml_collections.ConfigDict:
    """A `model` group holding the preset name and every ModelConfig field, typed."""
    cfg = get_preset(preset, **overrides)
    d = dataclasses.asdict(cfg)
    # head_dim may be None; store 0 for "derive from hidden_size // num_heads" so the
    # field has a type that command-line overrides can parse.
    d["head_dim"] = d["head_dim"] or 0
    return ml_collections.ConfigDict({"preset": preset, **d})


def model_config_from(group: ml_collections.ConfigDict) -> ModelConfig:
    """Build the frozen ModelConfig from a config's `model` group."""
    d = dict(group.to_dict())
    preset = d.pop("preset")
    if preset not in PRESETS:
        raise ValueError(f"Unknown model preset {preset!r}. Valid presets: {sorted(PRESETS)}.")
    d["head_dim"] = d["head_dim"] or None
    return ModelConfig.from_dict(d)


def base_config() -> ml_collections.ConfigDict:
    """Defaults for every group; experiment files override fields, never add keys."""
    c = ml_collections.ConfigDict()
    c.name = "experiment"
    c.seed = 0

    c.model = model_group("cpu_small")

    # Mesh axes; -1 fills the remaining devices. Product must equal the device count.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, sequence=1))

    c.data = ml_collections.ConfigDict(
        dict(
            source="stdlib",  # stdlib | local | dir | jsonl | parquet
            path="",  # for dir / jsonl / parquet
            mode="file",  # file (pretraining) | repo (repository windows)
            heldout_fraction=0.05,  # share of repositories held out (by repository)
            max_file_bytes=1_000_000,
            minhash_num_perm=128,
            minhash_bands=16,
            minhash_rows=8,
            minhash_threshold=0.8,
            shingle_size=10,
            num_workers=0,  # grain worker processes; 0 = in-process
            num_prepare_processes=2,
            domain_weights={"code": 1.0},
            language_weights={},  # empty: natural frequencies
            exclude_tests=False,
        )
    )

    c.fim = ml_collections.ConfigDict(dict(rate=0.5, spm_rate=0.5))

    c.optimizer = ml_collections.ConfigDict(
        dict(
            peak_lr=3e-4,
            final_lr=3e-5,
            warmup_steps=1000,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.1,
            clip_norm=1.0,
            z_loss=0.0,
        )
    )

    c.train = ml_collections.ConfigDict(
        dict(
            seq_len=512,
            global_batch_size=8,  # sequences per optimizer step, across all hosts
            micro_batch_size=0,  # per-step micro-batch (sequences); 0 = no accumulation
            steps=1000,
            log_every=10,
            eval_every=0,  # 0 = only at the end
            peak_flops_per_device=0.0,  # 0 = guess from the backend (for MFU)
            loss_chunk_size=0,  # tokens per logits chunk in the loss; 0 = unchunked
            init_checkpoint="",  # start from these params (e.g. a base model for repo FT)
        )
    )

    c.checkpoint = ml_collections.ConfigDict(
        dict(every=100, keep_last=3, keep_every=0, async_save=True)
    )

    c.eval = ml_collections.ConfigDict(
        dict(
            tasks=["heldout_loss"],
            max_new_tokens=64,
            temperature=0.0,
            top_p=1.0,
            num_samples=1,
            limit=0,  # 0 = all problems
            batch_size=8,
            sandbox_timeout_s=10.0,
            sandbox_memory_mb=1024,
            sandbox_workers=2,
        )
    )

    # Named overrides that make up an ablation: {arm_name: {"dotted.key": value}}.
    c.arms = ml_collections.ConfigDict()
    c.lock()
    return c
