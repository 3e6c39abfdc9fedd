"""HF directory <-> run directory, and HF directories for the other entry points.

`import_hf(DIR, RUN)` writes a run directory (config.json, tokenizer/, checkpoints/0/ with
the params and identity, generation_config.json) that eval, serving, export and
`train.init_checkpoint` accept like any trained run. `export_run(RUN, OUT)` is the
inverse. `load_hf(DIR)` gives (params, ModelConfig, tokenizer) without writing anything;
checkpoint names (`hf:DIR`, ...) are parsed and loaded by `zen_code_jax.resolve`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from zen_code_jax.checkpoint import (
    Checkpointer,
    CheckpointError,
    find_checkpoint_dir,
    identity,
    inference_facts,
    tokenizer_to_json,
)
from zen_code_jax.config import base_config, config_to_dict, model_group
from zen_code_jax.data import tokenizer_load
from zen_code_jax.data.tokenizer_base import TokenizerError
from zen_code_jax.hf.checkpoint import GENERATION_CONFIG_FILE, HFCheckpoint, HFFormatError
from zen_code_jax.hf.export import export_params
from zen_code_jax.hf.load import load_params
from zen_code_jax.model.config import ModelConfig
from zen_code_jax.rundir import RunDir

# ModelConfig fields that are ours (precision, memory, kernels), not the architecture's.
OWN_FIELDS = (
    "dtype",
    "param_dtype",
    "remat_policy",
    "scan_layers",
    "scan_unroll",
    "attention_impl",
    "attention_block_size",
    "initializer_range",
    "max_position_embeddings",
)


def load_hf_tokenizer(hf_dir: str | Path, model_cfg: ModelConfig) -> Any:
    """The checkpoint's tokenizer padded to its embedding; errors name the file."""
    try:
        tok = tokenizer_load.load_tokenizer(hf_dir, vocab_size=model_cfg.vocab_size)
    except TokenizerError as e:
        raise HFFormatError(f"{Path(hf_dir) / 'tokenizer.json'}: {e}") from None
    return tok


def architecture_diff(have: ModelConfig, want: ModelConfig, want_name: str = "run") -> str:
    """ "" when the two configs describe one architecture (our own fields such as
    scan_layers may differ), else the differing fields, `name: checkpoint X vs run Y, ...`."""
    a, b = have.to_dict(), want.to_dict()
    diff = sorted(k for k in a if k not in OWN_FIELDS and a[k] != b[k])
    return ", ".join(f"{k}: checkpoint {a[k]!r} vs {want_name} {b[k]!r}" for k in diff)


def check_architecture(hf_cfg: ModelConfig, run_cfg: ModelConfig, where: str) -> None:
    """Raise unless the two configs describe the same architecture (own fields may differ)."""
    diff = architecture_diff(hf_cfg, run_cfg)
    if diff:
        raise HFFormatError(
            f"{where}: the HF checkpoint's architecture differs from the run's model group ("
            + diff
            + "); set the model group from the checkpoint (zen_code_jax.config.model_group)."
        )


def load_hf(
    hf_dir: str | Path,
    *,
    mesh: Mesh | None = None,
    target: Any | None = None,
    model_cfg: ModelConfig | None = None,
    **model_overrides: Any,
) -> tuple[Any, ModelConfig, Any]:
    """(params, ModelConfig, tokenizer) streamed from an HF directory (validated first)."""
    ckpt = HFCheckpoint.open(hf_dir, **model_overrides)
    cfg = model_cfg or ckpt.model_cfg
    if model_cfg is not None:
        check_architecture(ckpt.model_cfg, model_cfg, str(hf_dir))
    tok = load_hf_tokenizer(hf_dir, cfg)
    return load_params(ckpt, cfg, mesh=mesh, target=target), cfg, tok


def import_hf(
    hf_dir: str | Path, run_dir: str | Path, *, mesh: Mesh | None = None, **model_overrides: Any
) -> RunDir:
    """Write a run directory for an HF checkpoint (atomically: temp dir, then rename)."""
    out = Path(run_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; pass a new --run_dir.")
    params, cfg, tok = load_hf(hf_dir, mesh=mesh, **model_overrides)
    config = base_config()
    config.name = "hf_import"
    config.model = model_group(cfg)
    config.train.steps = 0
    config.train.seq_len = min(int(config.train.seq_len), cfg.max_position_embeddings)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        run = RunDir(tmp)
        run.write_config(config_to_dict(config))
        tok.save(run.tokenizer_dir)
        gen = Path(hf_dir) / GENERATION_CONFIG_FILE
        if gen.is_file():
            shutil.copyfile(gen, tmp / GENERATION_CONFIG_FILE)
        # Uncompressed: Orbax writes each array from its own buffer (no second copy).
        ckpt = Checkpointer(run.checkpoints, async_save=False, compress=False)
        meta = {
            "identity": identity(cfg, tok),
            "config": config_to_dict(config),
            "rng": seed0_key_data().tolist(),
            "hf_source": str(Path(hf_dir).resolve()),
        }
        ckpt.save(
            0,
            {"step": np.zeros((), np.int32), "params": params},
            None,
            meta,
            tokenizer_to_json(tok),
        )
        ckpt.close()
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return RunDir(out)


def seed0_key_data() -> np.ndarray:
    """`jax.random.key_data(jax.random.key(0))` without running XLA for it when the default
    PRNG is threefry (its seed-0 key is two zero words): the first computation of a
    process compiles, which costs ~40 MB of resident code and buffers in the import."""
    if jax.config.jax_default_prng_impl == "threefry2x32":
        return np.zeros((2,), np.uint32)
    return np.asarray(jax.random.key_data(jax.random.key(0)))


def export_run(
    run_dir: str | Path,
    hf_dir: str | Path,
    *,
    dtype: str | None = None,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
) -> Path:
    """Export a run's newest checkpoint as an HF directory (see `export.export_params`).

    The parameters are read one leaf at a time (an Orbax partial restore of that leaf),
    written and dropped, so the process holds one leaf, never the whole model."""
    ckpt = Checkpointer(find_checkpoint_dir(run_dir), async_save=False)
    try:
        step = ckpt.latest_step()
        if step is None:
            raise CheckpointError(f"{ckpt.directory} holds no finished checkpoint yet.")
        meta = ckpt.read_meta(step)
        tok_json = None
        if (ckpt.step_dir(step) / "tokenizer").exists():
            tok_json = ckpt.manager.restore(
                step, args=ocp.args.Composite(tokenizer=ocp.args.JsonRestore())
            )["tokenizer"]
        cfg, tok, _ = inference_facts(run_dir, meta, tok_json)
        metadata = ckpt.manager.item_metadata(step)["state"]["params"]
        state_dir = ckpt.step_dir(step) / "state"
    finally:
        ckpt.close()
    gen_path = Path(run_dir) / GENERATION_CONFIG_FILE
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else None
    with ocp.PyTreeCheckpointer() as reader:
        return export_params(
            functools.partial(_restore_leaf, reader, state_dir, metadata),
            cfg,
            hf_dir,
            tokenizer=tok,
            dtype=dtype,
            max_shard_size=max_shard_size,
            generation_config=gen,
            overwrite=overwrite,
        )


def _restore_leaf(reader: Any, state_dir: Path, metadata: Any, path: str) -> np.ndarray:
    """One params leaf ("layers/mlp/up_proj/kernel") of a checkpoint, as a host array
    (restored as numpy: a device array would cost a second copy while it is placed)."""
    keys = path.split("/")
    md = metadata
    for k in keys:
        md = md[k]
    target: Any = np.empty((0,), md.dtype)  # a placeholder: only the type is used
    args: Any = ocp.RestoreArgs(restore_type=np.ndarray, dtype=md.dtype)
    for k in reversed(["params", *keys]):
        target, args = {k: target}, {k: args}
    restored = reader.restore(
        state_dir,
        args=ocp.args.PyTreeRestore(item=target, restore_args=args, partial_restore=True),
    )
    for k in ["params", *keys]:
        restored = restored[k]
    return restored
