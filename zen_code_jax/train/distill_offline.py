"""The preparation step of offline distillation: run the teacher once over the student's
training batches and store its top-k per position (`data/teacher_logits.py`).

Why offline: a teacher too large to sit beside the student on the training mesh runs
once, on whatever hardware holds it, and the student's run reads k ids + k log-probs + 2
floats per position instead of running it. The rows are the student's own (the same
pipeline call as `experiment/arm.prepare_data`: corpus, seed, sequence length, batch,
process shard), so FIM rows are distilled exactly as they will be trained on.

Runners (`distill.logits_runner`): "local", one process writes its own shard batch after
batch; "beam", the teacher runs in an Apache Beam pipeline's workers
(`train/distill_beam.py`, `distill.beam_options`) and writes the same records as part
files. Both are read by the same Grain reader (`data/teacher_logits.py`).
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
from zen_code_jax.data.teacher_logits import (
    META_FILE,
    LogitsMeta,
    TeacherLogitsWriter,
    data_key,
    shard_file,
    with_teacher_logits,
)
from zen_code_jax.parallel import make_mesh
from zen_code_jax.parallel.rules import DEFAULT_RULES
from zen_code_jax.resolve import load_model, parse_checkpoint, run_facts
from zen_code_jax.rundir import RunDir
from zen_code_jax.train.distill import (
    PRESET_PREFIX,
    DistillSettings,
    check_teacher_tokenizer,
    make_topk_fn,
)


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
    t0 = time.time()
    if s.logits_runner == "beam":
        # local import: apache-beam is an optional extra (zen-code-jax[beam]), loaded only here
        from zen_code_jax.train.distill_beam import TeacherJob, write_teacher_logits_beam

        job = TeacherJob(
            teacher=s.teacher,
            dtype=s.teacher_dtype,
            top_k=s.top_k,
            temperature=s.temperature,
            chunk=s.chunk,
            mesh=dict(config.mesh.to_dict()),
        )
        batches = (next(data_iter) for _ in range(steps))
        write_teacher_logits_beam(
            batches, job, directory, options=s.beam_options, shard=(shard_index, shard_count)
        )
        step = run_facts(s.teacher).step
    else:
        teacher = load_model(s.teacher, mesh=mesh, dtype=jnp.dtype(s.teacher_dtype))
        topk_fn = make_topk_fn(teacher.model_cfg, s.top_k, s.temperature, s.chunk)
        for part in Path(directory).glob(
            shard_file(directory, shard_index, shard_count).stem + ".part-*"
        ):
            part.unlink()  # a Beam runner's earlier parts of this shard
        writer = TeacherLogitsWriter(directory, shard_index, shard_count)
        with jax.set_mesh(mesh), nn.logical_axis_rules(list(DEFAULT_RULES)):
            for i in range(steps):
                batch = next(data_iter)
                top = jax.tree.map(np.asarray, topk_fn(teacher.params, batch))
                writer.write_batch(batch, top)
                if (i + 1) % 50 == 0:
                    log(f"  teacher logits: {i + 1}/{steps} batches, {time.time() - t0:.0f}s")
        writer.close_records()
        step = teacher.step
    meta = LogitsMeta(
        key=key,
        teacher=f"{s.teacher}@{step}",
        temperature=s.temperature,
        top_k=s.top_k,
        seq_len=seq_len,
        rows_per_batch=rows,
        batches=steps,
    )
    meta.write(directory)  # last: its presence = complete
    log(
        f"  teacher logits ({s.logits_runner} runner): {steps} batches x {rows} rows "
        f"(k={s.top_k}) in {directory}, {time.time() - t0:.0f}s"
    )
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
