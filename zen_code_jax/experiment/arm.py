"""One arm of an experiment: corpus -> tokenizer -> mesh -> state -> hooks -> train -> evaluate.

`run_arm(config, run_dir, workdir=...)` is the whole job of one arm:

  prepare (cached) corpus -> tokenizer -> data iterator (which fixes the step count)
  -> mesh -> sharded train state -> resume from the newest good checkpoint (or start
  from `train.init_checkpoint`) -> hooks (progress line + TensorBoard, non-finite check,
  held-out batches, checkpoint) -> `train.loop.train` -> evaluation -> hparams.

`steps=0` (`--mode=eval`) is the same path: restore, train nothing, evaluate.

Multi-process runs share run_dir (as Orbax requires): process 0 prepares the corpus first,
writes the files, prints and logs; every process trains, checkpoints its own shards and
data state; evaluation runs on process 0 with a host-local copy of the params.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from zen_code_jax.checkpoint import (
    Checkpointer,
    CheckpointError,
    abstract_like,
    identity,
    restore_params_only,
    tokenizer_to_json,
)
from zen_code_jax.config import config_from_dict, config_to_dict, model_config_from
from zen_code_jax.data.batch import Batch
from zen_code_jax.data.hf_tokenizer import check_repo_format
from zen_code_jax.data.pipeline import make_dataset
from zen_code_jax.data.prepare import prepare_corpus
from zen_code_jax.experiment import hooks as arm_hooks
from zen_code_jax.experiment.evaluate import evaluate, heldout_batches
from zen_code_jax.experiment.plan import mfu_device_count, peak_flops
from zen_code_jax.hf.checkpoint import HFCheckpoint
from zen_code_jax.hf.load import load_params
from zen_code_jax.hf.rundir import check_architecture, load_tokenizer
from zen_code_jax.parallel import batch_sharding, make_mesh, multihost
from zen_code_jax.resolve import parse_checkpoint
from zen_code_jax.rundir import RunDir
from zen_code_jax.tracking import NullWriter, SummaryWriter, truncate_after
from zen_code_jax.train.hooks import Hooks
from zen_code_jax.train.loop import train
from zen_code_jax.train.state import create_train_state
from zen_code_jax.train.step import make_eval_step, make_train_step

DatasetFn = Callable[..., Any]
AddHooks = Callable[[Hooks], None]
PERIODIC_EVAL_BATCHES = 4


@dataclasses.dataclass(frozen=True)
class ArmResult:
    status: str  # "done" | "preempted" (SIGTERM: saved; the caller should exit 0)
    step: int
    metrics: dict[str, float]


def resolve_steps(config: ml_collections.ConfigDict, data_iter: Any) -> int:
    """Optimizer steps of the arm: `train.steps`, or epochs x batches per epoch (SFT)."""
    epochs = int(config.train.epochs)
    if epochs <= 0:
        return int(config.train.steps)
    per_epoch = getattr(data_iter, "batches_per_epoch", None)
    if per_epoch is None:
        raise ValueError(
            "train.epochs > 0 needs a dataset that knows its batches_per_epoch (the SFT "
            "dataset does); for pretraining set train.steps and train.epochs=0."
        )
    return epochs * int(per_epoch)


def _global_batches(data_iter: Iterator[Batch], mesh: Any, global_batch: int) -> Iterator[Batch]:
    """Per-host rows -> global arrays sharded over the mesh (multi-process runs)."""
    sharding = batch_sharding(mesh)
    for batch in data_iter:
        yield multihost.make_global_batch(batch, sharding, global_batch)


def run_arm(
    config: ml_collections.ConfigDict,
    run_dir: RunDir,
    *,
    workdir: str | Path,
    dataset_fn: DatasetFn | None = None,
    steps: int | None = None,
    run_eval: bool = True,
    add_hooks: AddHooks | None = None,
) -> ArmResult:
    """Train (or resume) one arm in `run_dir`, then evaluate it.

    `config` is the arm's resolved config (`config.arm_config`). `dataset_fn` replaces the
    Grain pipeline (an experiment file's `make_dataset`). `steps=0` evaluates the newest
    checkpoint without training. `add_hooks` adds hooks after the built-in ones (tests
    inject faults this way).
    """
    arm = config.arm or "main"
    primary = multihost.is_primary()
    model_cfg = model_config_from(config.model)
    make_data = dataset_fn or make_dataset

    init = str(config.train.init_checkpoint)
    init_ref = parse_checkpoint(init, run_dir=run_dir) if init else None
    hf_dir = str(init_ref.path) if init_ref is not None and init_ref.kind == "hf" else None
    hf_ckpt, hf_tok = None, None
    if hf_dir is not None:  # an HF base: its weights, and its tokenizer for the data
        hf_ckpt = HFCheckpoint.open(hf_dir)
        check_architecture(hf_ckpt.model_cfg, model_cfg, f"train.init_checkpoint={hf_dir}")
        hf_tok = load_tokenizer(hf_dir, model_cfg)
    corpus = multihost.primary_first(
        prepare_corpus, config.data, model_cfg.vocab_size, str(workdir), hf_tok
    )
    tokenizer = corpus.tokenizer
    tokenizer.check_compatible(model_cfg)
    # One repository layout for training, evaluation and serving: "" resolves to the
    # tokenizer's own; a checkpoint tokenizer's family disagreeing with it is an error.
    repo_format = check_repo_format(tokenizer, str(config.data.repo_format))
    if repo_format != str(config.data.repo_format):
        config = config_from_dict(config_to_dict(config))
        config.data.repo_format = repo_format
    procs, proc = jax.process_count(), jax.process_index()
    global_batch = int(config.train.global_batch_size)
    data_iter = make_data(
        corpus,
        config,
        split="train",
        seq_len=int(config.train.seq_len),
        batch_size=global_batch // procs,
        seed=int(config.seed),
        shard_index=proc,
        shard_count=procs,
    )
    total = resolve_steps(config, data_iter)
    if total != int(config.train.steps):  # one number for the schedule, plan and report
        config = config_from_dict(config_to_dict(config))
        config.train.steps = total
        if primary:
            print(f"[{arm}] {config.train.epochs} epochs = {total} steps", flush=True)
    if primary:
        run_dir.path.mkdir(parents=True, exist_ok=True)
        if not run_dir.tokenizer_dir.exists():
            tokenizer.save(run_dir.tokenizer_dir)
        run_dir.write_config(config_to_dict(config))

    mesh = make_mesh(config.mesh)
    init_rng, loop_rng = jax.random.split(jax.random.key(int(config.seed)))
    state, shardings = create_train_state(model_cfg, config, mesh, init_rng)
    ident = identity(model_cfg, tokenizer)
    ckpt = Checkpointer(
        run_dir.checkpoints,
        keep_last=int(config.checkpoint.keep_last),
        keep_every=int(config.checkpoint.keep_every),
        async_save=bool(config.checkpoint.async_save),
    )
    restored = ckpt.restore_latest(abstract_like(state), data_iter, ident)
    start = 0
    if restored is not None:
        state, meta = restored
        start = int(meta["step"])
        loop_rng = jax.random.wrap_key_data(np.asarray(meta["rng"], dtype=np.uint32))
        print(f"[{arm}] resumed from {ckpt.step_dir(start)} (step {start}/{total})", flush=True)
    elif steps == 0:
        ckpt.close()
        raise CheckpointError(
            f"--mode=eval: {run_dir.checkpoints} holds no checkpoint to evaluate. Train the "
            "arm first (--mode=train or --mode=all)."
        )
    elif hf_ckpt is not None:
        # Streamed tensor by tensor into the state's shardings and dtype (docs/hf.md).
        state = state.replace(
            params=load_params(hf_ckpt, model_cfg, target=abstract_like(state.params))
        )
        print(f"[{arm}] initialized params from HF checkpoint {hf_dir}", flush=True)
    elif config.train.init_checkpoint:
        src = init_ref.path
        # Params only (no AdamW moments), straight into this arm's shardings.
        target = abstract_like(state.params)
        params, meta, _, _ = restore_params_only(
            src,
            step=init_ref.step,
            sharding_fn=lambda _: jax.tree.map(lambda a: a.sharding, target),
        )
        if meta.get("identity") != ident:
            raise ValueError(
                f"train.init_checkpoint={config.train.init_checkpoint!r} ({src}) has a different "
                "model config or tokenizer than this arm; initialize from a run with the same "
                "model group and data (tokenizer) settings."
            )
        state = state.replace(params=params)
        print(f"[{arm}] initialized params from {src} (step {meta['step']})", flush=True)
    end = start if steps == 0 else total
    if primary:
        truncate_after(run_dir.metrics, start)
    writer = SummaryWriter(run_dir.path) if primary else NullWriter()
    eval_step = make_eval_step(model_cfg, config, mesh)
    checkpoint = arm_hooks.CheckpointHook(
        ckpt,
        data_iter,
        lambda: {
            "identity": ident,
            "config": config_to_dict(config),
            "rng": arm_hooks.rng_data(loop_rng),
        },
        tokenizer_to_json(tokenizer),
        last_good=start if restored is not None else None,
    )
    seq_len = int(config.train.seq_len)
    progress = arm_hooks.ProgressHook(
        arm,
        writer,
        model_cfg,
        seq_len,
        tokens_per_step=global_batch * seq_len,
        peak_flops=peak_flops(config),
        devices=mfu_device_count(),
        printing=primary,
    )
    # Metric hooks run in order: the check first, so nothing is logged past a NaN.
    hooks = Hooks()
    hooks.on_metrics(arm_hooks.nonfinite_check(arm, checkpoint), every=1, name="nonfinite")
    hooks.on_metrics(progress.tick, every=1, name="clock")
    hooks.on_metrics(progress, int(config.train.log_every), at_end=True, name="log")
    if int(config.train.eval_every) and end > start:
        batches = heldout_batches(make_data, corpus, config, PERIODIC_EVAL_BATCHES)
        if procs > 1:  # the same full batches on every process -> global arrays
            batches = [multihost.global_from_full(b, batch_sharding(mesh)) for b in batches]
        hooks.on_state(
            arm_hooks.periodic_heldout(writer, eval_step, batches),
            int(config.train.eval_every),
            name="heldout_batches",
        )
    hooks.on_state(checkpoint, int(config.checkpoint.every), at_end=True, name="checkpoint")
    if int(config.checkpoint.hf_export_every) and primary:
        hooks.on_state(
            arm_hooks.hf_export(run_dir.path / "hf", model_cfg, tokenizer),
            int(config.checkpoint.hf_export_every),
            at_end=True,
            name="hf_export",
        )
    if add_hooks is not None:
        add_hooks(hooks)

    batches_it = data_iter if procs == 1 else _global_batches(data_iter, mesh, global_batch)
    train_step = make_train_step(model_cfg, config, mesh, shardings)
    sync = multihost.preemption_sync_available()
    with arm_hooks.Preemption(install=not sync) as sigterm:
        stop = multihost.reached_preemption if sync else (lambda step: sigterm.requested)
        result = train(
            state, train_step, batches_it, hooks, start=start, total=end, stop_requested=stop
        )
    ckpt.wait()
    state = result.state
    final_step = int(np.asarray(state.step))
    if result.preempted:
        print(f"[{arm}] SIGTERM: saved step {result.step}; exiting.", flush=True)
        writer.close()
        ckpt.close()
        return ArmResult("preempted", final_step, {})
    metrics: dict[str, float] = {}
    if run_eval:
        params = state.params
        if procs > 1:
            # Evaluation runs on process 0's first device with a full copy of the params
            # (ablation-scale models fit one host); the others wait at a barrier.
            params = multihost.host_local_copy(params)
            eval_mesh = make_mesh({"data": 1}, devices=jax.local_devices()[:1])
            eval_step = make_eval_step(model_cfg, config, eval_mesh)
        if primary:
            metrics = evaluate(
                run_dir,
                config,
                params=params,
                model_cfg=model_cfg,
                tokenizer=tokenizer,
                corpus=corpus,
                writer=writer,
                step=final_step,
                eval_step=eval_step,
                dataset_fn=dataset_fn,
            )
        multihost.barrier(f"{arm}:eval")
    writer.close()
    ckpt.close()
    return ArmResult("done", final_step, metrics)
