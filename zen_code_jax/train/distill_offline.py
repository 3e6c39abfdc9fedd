"""The preparation step of offline distillation: run the teacher once over the student's
training batches and store its top-k per position (`data/teacher_logits.py`).

Why offline: a teacher too large to sit beside the student on the training mesh runs
once, on whatever hardware holds it, and the student's run reads k ids + k log-probs + 2
floats per position instead of running it. The rows are the student's own (the same
pipeline call as `experiment/arm.prepare_data`: corpus, seed, sequence length, batch,
process shard), so FIM rows are distilled exactly as they will be trained on.

Local runner only: one process writes its own shard, batch after batch (the Beam runner
of corpus preparation is not wired for this step yet; docs/distill.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from zen_code_jax.checkpoint import CheckpointError
from zen_code_jax.config import config_from_dict, config_to_dict
from zen_code_jax.data.batch import Batch, TeacherTopK
from zen_code_jax.data.teacher_logits import (
    META_FILE,
    LogitsMeta,
    TeacherLogitsWriter,
    data_key,
    with_teacher_logits,
)
from zen_code_jax.model import transformer as tm
from zen_code_jax.parallel import make_mesh
from zen_code_jax.parallel.rules import DEFAULT_RULES
from zen_code_jax.resolve import load_model, parse_checkpoint, run_facts
from zen_code_jax.rundir import RunDir
from zen_code_jax.train.distill import (
    PRESET_PREFIX,
    DistillSettings,
    _strided,
    check_teacher_tokenizer,
    teacher_topk,
)


def make_topk_fn(teacher_cfg: Any, k: int, temperature: float, chunk: int) -> Any:
    """jit (params, batch) -> TeacherTopK numpy-able arrays [B, S, k], the teacher's logits
    formed `chunk` positions at a time (strided, as in the loss)."""
    model = tm.Transformer(teacher_cfg)

    def fn(params: Any, batch: Batch) -> TeacherTopK:
        args = (batch.inputs, batch.positions, batch.segment_ids)
        hidden = model.apply({"params": params}, *args, return_hidden=True)
        head = tm.lm_head_kernel(params, teacher_cfg)
        b, s, _ = hidden.shape
        c = min(chunk, s)
        n = -(-s // c)
        pad = n * c - s
        h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        t = jnp.pad(batch.targets, ((0, 0), (0, pad)))

        def one(x: tuple[jax.Array, jax.Array]) -> TeacherTopK:
            h_c, t_c = x
            logits = jnp.einsum(
                "bcd,dv->bcv",
                h_c.astype(teacher_cfg.dtype),
                head.astype(teacher_cfg.dtype),
                preferred_element_type=jnp.float32,
            )
            return teacher_topk(logits, t_c, k, temperature)

        out = jax.lax.map(one, (_strided(h, c, n), _strided(t, c, n)))

        def unstride(x: jax.Array) -> jax.Array:  # [n, B, c, ...] -> [B, S, ...]
            x = jnp.moveaxis(x, 0, 2)  # [B, c, n, ...]
            return x.reshape(b, n * c, *x.shape[3:])[:, :s]

        return jax.tree.map(unstride, out)

    return jax.jit(fn)


def prepare_teacher_logits(
    config: Any,
    corpus: Any,
    make_data: Any,
    directory: str | Path,
    mesh: Mesh,
    *,
    shard_index: int = 0,
    shard_count: int = 1,
    log: Any = print,
) -> LogitsMeta:
    """Write the teacher's top-k for the first `train.steps` batches of this process's
    training iterator into `directory` (skipped when a complete one for the same rows and
    settings is there). Returns its meta."""
    s = DistillSettings.from_config(config)
    key = data_key(corpus, config, shard_index, shard_count)
    steps = int(config.train.steps)
    rows = int(config.train.global_batch_size) // shard_count
    seq_len = int(config.train.seq_len)
    have = LogitsMeta.read(directory)
    if (
        have is not None
        and have.key == key
        and have.temperature == s.temperature
        and have.top_k == s.top_k
        and have.batches >= steps
    ):
        return have
    (Path(directory) / META_FILE).unlink(missing_ok=True)  # incomplete until written again
    teacher = load_model(s.teacher, mesh=mesh, dtype=jnp.dtype(s.teacher_dtype))
    topk_fn = make_topk_fn(teacher.model_cfg, s.top_k, s.temperature, s.chunk)
    data_iter = make_data(
        corpus,
        config,
        split="train",
        seq_len=seq_len,
        batch_size=rows,
        seed=int(config.seed),
        shard_index=shard_index,
        shard_count=shard_count,
    )
    writer = TeacherLogitsWriter(directory, shard_index, shard_count)
    t0 = time.time()
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(DEFAULT_RULES)):
        for i in range(steps):
            batch = next(data_iter)
            top = jax.tree.map(np.asarray, topk_fn(teacher.params, batch))
            writer.write_batch(batch, top)
            if (i + 1) % 50 == 0:
                log(f"  teacher logits: {i + 1}/{steps} batches, {time.time() - t0:.0f}s")
    meta = LogitsMeta(
        key=key,
        teacher=f"{s.teacher}@{teacher.step}",
        temperature=s.temperature,
        top_k=s.top_k,
        seq_len=seq_len,
        rows_per_batch=rows,
        batches=steps,
    )
    writer.close(meta)
    log(f"  teacher logits: {steps} batches x {rows} rows (k={s.top_k}) in {directory}")
    return meta


def wire_teacher(
    config: Any,
    run_dir: RunDir,
    corpus: Any,
    make_data: Any,
    data_iter: Any,
    tokenizer: Any,
    *,
    shard: tuple[int, int] = (0, 1),
) -> tuple[Any, Any]:
    """A distill arm's teacher, before training: its name resolved against the run
    (`arm:` forms become the run directory, so config.json says which run taught), its
    checkpoint present, its tokenizer the student's; offline, the logits prepared (once)
    and joined to the training batches. Returns (the final config, the batches)."""
    s = DistillSettings.from_config(config)
    final = config_from_dict(config_to_dict(config))
    if s.teacher and not s.teacher.startswith(PRESET_PREFIX):
        ref = parse_checkpoint(s.teacher, run_dir=run_dir)
        if not ref.has_checkpoint():
            how = (
                f"run --arm={ref.arm} first, or every arm in order"
                if ref.arm and "/" not in ref.arm
                else "e.g. python experiments/run.py --config=experiments/fim_ablation.py "
                "--arm=fim50 (with the same --workdir)"
            )
            raise CheckpointError(
                f"distill.teacher={s.teacher!r}: {ref.path} has no checkpoint; train the "
                f"teacher first ({how}) or name another one."
            )
        check_teacher_tokenizer(run_facts(ref).tokenizer, tokenizer, s.teacher)
        resolved = f"hf:{ref.path}" if ref.kind == "hf" else str(ref.path)
        if ref.step is not None:
            resolved = str(ref.path / "checkpoints" / str(ref.step))
        final.distill.teacher = resolved
    if not s.offline:
        return final, data_iter
    if s.logits_dir == "run":
        final.distill.logits_dir = str(run_dir.path / "teacher_logits")
    directory = str(final.distill.logits_dir)
    prepare_teacher_logits(
        final,
        corpus,
        make_data,
        directory,
        make_mesh(final.mesh),
        shard_index=shard[0],
        shard_count=shard[1],
    )
    joined = with_teacher_logits(
        data_iter,
        directory,
        key=data_key(corpus, final, *shard),
        temperature=s.temperature,
        top_k=s.top_k,
        seq_len=int(final.train.seq_len),
        shard=shard,
    )
    return final, joined
