"""One arm of an experiment: corpus -> tokenizer -> mesh -> state -> hooks -> train -> evaluate.

`run_arm(config, run_dir, workdir=...)` is the whole job of one arm, one function per stage:

  `prepare_data`: (cached) corpus -> tokenizer -> data iterator (which fixes the step
      count) -> the arm's final config (`resolve_config`, built once)
  `start_state`: mesh -> sharded train state -> resume from the newest good checkpoint
      (or start from `train.init_checkpoint`, `_init_params`)
  `wire_hooks`: held-out batches + the standard hooks of `train.standard_hooks`
      (non-finite check, progress line + TensorBoard, checkpoint) + HF export
  `train.loop.train` with the objective `train.objective` names (`train.objectives`)
  `evaluate_arm`: evaluation -> hparams.

Each stage is timed (`experiment.phases.ArmClock`: the result's `phases`), without
touching what it computes.

`steps=0` (`--mode=eval`) is the same path: restore, train nothing, evaluate.

Multi-process runs share run_dir (as Orbax requires): process 0 prepares the corpus first,
writes the files, prints and logs; every process trains, checkpoints its own shards and
data state; evaluation runs on process 0 with a host-local copy of the params.
"""

from __future__ import annotations

import dataclasses
import time
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
    tokenizer_to_json,
)
from zen_code_jax.config import config_from_dict, config_to_dict, model_config_from
from zen_code_jax.data.batch import Batch
from zen_code_jax.data.hf_tokenizer import check_repo_format
from zen_code_jax.data.pipeline import make_dataset
from zen_code_jax.data.prepare import prepare_corpus
from zen_code_jax.experiment import hooks as arm_hooks
from zen_code_jax.experiment.evaluate import evaluate, heldout_batches
from zen_code_jax.experiment.forecast import mfu_device_count, peak_flops
from zen_code_jax.experiment.phases import ArmClock, ArmPhases, note_corpus, time_state_hooks
from zen_code_jax.hf.checkpoint import HFCheckpoint
from zen_code_jax.hf.transfer import check_architecture, load_hf_tokenizer
from zen_code_jax.model.config import ModelConfig
from zen_code_jax.model.params import AUX_PARAMS_KEY, model_params
from zen_code_jax.parallel import batch_sharding, make_mesh, multihost
from zen_code_jax.resolve import CheckpointRef, load_model, parse_checkpoint
from zen_code_jax.rundir import RunDir
from zen_code_jax.tracking import NullWriter, SummaryWriter, truncate_after
from zen_code_jax.train.distill_offline import wire_teacher
from zen_code_jax.train.hooks import Hooks
from zen_code_jax.train.loop import train
from zen_code_jax.train.objectives import build_objective, hlp_weight
from zen_code_jax.train.standard_hooks import (
    CheckpointHook,
    ProgressHook,
    add_standard_hooks,
    preemption_stop,
    rng_data,
)
from zen_code_jax.train.state import TrainState, create_train_state
from zen_code_jax.train.step import make_eval_step, make_train_step

DatasetFn = Callable[..., Any]
AddHooks = Callable[[Hooks], None]
PERIODIC_EVAL_BATCHES = 4


@dataclasses.dataclass(frozen=True)
class ArmResult:
    status: str  # "done" | "preempted" (SIGTERM: saved; the caller should exit 0)
    step: int
    metrics: dict[str, float]
    phases: ArmPhases = dataclasses.field(default_factory=ArmPhases)  # wall time per phase


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


def resolve_config(
    config: ml_collections.ConfigDict,
    *,
    repo_format: str,
    steps: int,
    hlp_sentinels: tuple[int, ...] = (),
) -> ml_collections.ConfigDict:
    """The arm's final config: the facts only the data can fix written in, in one copy.

    `data.repo_format` "" becomes the tokenizer's own layout (one layout for training,
    evaluation and serving) and `train.steps` the real step count (epochs x batches per
    epoch for SFT), so the schedule, plan, checkpoints, config.json and report agree.
    With `train.hlp_weight > 0`, `train.hlp_sentinels` becomes the tokenizer's
    (fim_middle_id, eot_id) (`hlp_sentinels`), which the HLP objective reads the middle by.
    """
    sentinels = tuple(config.train.hlp_sentinels)
    if hlp_weight(config) > 0 and hlp_sentinels:
        sentinels = tuple(int(i) for i in hlp_sentinels)
    if (
        repo_format == str(config.data.repo_format)
        and steps == int(config.train.steps)
        and sentinels == tuple(config.train.hlp_sentinels)
    ):
        return config
    final = config_from_dict(config_to_dict(config))
    final.data.repo_format = repo_format
    final.train.steps = steps
    final.train.hlp_sentinels = sentinels
    return final


@dataclasses.dataclass(frozen=True)
class ArmData:
    """What the corpus fixes before training starts."""

    config: ml_collections.ConfigDict  # the final config (`resolve_config`)
    model_cfg: ModelConfig
    corpus: Any
    tokenizer: Any
    data_iter: Any  # this process's training batches (resumable: get_state/set_state)
    init_ref: CheckpointRef | None  # train.init_checkpoint, parsed (None when empty)


def prepare_data(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    make_data: DatasetFn,
    run_dir: RunDir,
    clock: ArmClock | None = None,
) -> ArmData:
    """(cached) corpus -> tokenizer checks -> training iterator -> the final config.

    `train.init_checkpoint` is parsed first (`resolve.parse_checkpoint`: a bad name fails
    before any work), and an `hf:` base's tokenizer tokenizes the data. `clock` times the
    corpus (its `prepare_s` phase).
    """
    clock = clock or ArmClock()
    model_cfg = model_config_from(config.model)
    init = str(config.train.init_checkpoint)
    init_ref = parse_checkpoint(init, run_dir=run_dir) if init else None
    hf_tok = None
    if init_ref is not None and init_ref.kind == "hf":  # an HF base: its tokenizer for the data
        hf_cfg = HFCheckpoint.open(init_ref.path).model_cfg
        check_architecture(hf_cfg, model_cfg, f"train.init_checkpoint={init_ref.path}")
        hf_tok = load_hf_tokenizer(init_ref.path, model_cfg)
    started = time.time()
    with clock.phase("prepare_s"):
        corpus = multihost.primary_first(
            prepare_corpus, config.data, model_cfg.vocab_size, str(workdir), hf_tok
        )
    note_corpus(clock.phases, corpus, started)
    tokenizer = corpus.tokenizer
    tokenizer.check_compatible(model_cfg)
    # A checkpoint tokenizer's family disagreeing with data.repo_format is an error here.
    repo_format = check_repo_format(tokenizer, str(config.data.repo_format))
    procs, proc = jax.process_count(), jax.process_index()
    data_iter = make_data(
        corpus,
        config,
        split="train",
        seq_len=int(config.train.seq_len),
        batch_size=int(config.train.global_batch_size) // procs,
        seed=int(config.seed),
        shard_index=proc,
        shard_count=procs,
    )
    final = resolve_config(
        config,
        repo_format=repo_format,
        steps=resolve_steps(config, data_iter),
        hlp_sentinels=(tokenizer.fim_middle_id, tokenizer.eot_id),
    )
    if str(final.train.objective) == "distill":  # teacher named, checked; offline logits joined
        final, data_iter = wire_teacher(
            final, run_dir, corpus, make_data, data_iter, tokenizer, shard=(proc, procs)
        )
    return ArmData(final, model_cfg, corpus, tokenizer, data_iter, init_ref)


def _init_params(
    config: ml_collections.ConfigDict,
    state: TrainState,
    *,
    run_dir: RunDir,
    data: ArmData,
    ident: dict[str, Any],
    arm: str,
) -> TrainState:
    """A fresh state's params from `train.init_checkpoint` (HF directory, run or `arm:`),
    loaded by the one resolver: params only (no AdamW moments), streamed straight into this
    arm's shardings and dtype; unchanged when it is empty. An objective's fresh heads
    (`AUX_PARAMS_KEY`, e.g. HLP's) stay as initialized: checkpoints hold models only."""
    ref = data.init_ref
    if ref is None:
        return state
    hf = ref.kind == "hf"
    loaded = load_model(
        ref,
        target=abstract_like(model_params(state.params)),
        model_cfg=data.model_cfg if hf else None,
    )
    if not hf and loaded.identity != ident:
        raise ValueError(
            f"train.init_checkpoint={config.train.init_checkpoint!r} ({ref.path}) has a "
            "different model config or tokenizer than this arm; initialize from a run with "
            "the same model group and data (tokenizer) settings."
        )
    src = f"HF checkpoint {ref.path}" if hf else f"{ref.path} (step {loaded.step})"
    print(f"[{arm}] initialized params from {src}", flush=True)
    params = dict(loaded.params)
    if AUX_PARAMS_KEY in state.params:
        params[AUX_PARAMS_KEY] = state.params[AUX_PARAMS_KEY]
    return state.replace(params=params)


@dataclasses.dataclass(frozen=True)
class StartState:
    """Where training starts: the state (restored, initialized or fresh) and its step."""

    state: TrainState
    shardings: TrainState
    start: int  # optimizer steps already taken (0 unless resumed)
    resumed: bool
    loop_rng: jax.Array
    ckpt: Checkpointer


def start_state(
    data: ArmData, run_dir: RunDir, mesh: Any, *, arm: str, eval_only: bool
) -> StartState:
    """A sharded state: resumed from the newest good checkpoint (with the data iterator
    and rng), else initialized from `train.init_checkpoint`, else fresh."""
    config, model_cfg = data.config, data.model_cfg
    init_rng, loop_rng = jax.random.split(jax.random.key(int(config.seed)))
    state, shardings = create_train_state(model_cfg, config, mesh, init_rng)
    ident = identity(model_cfg, data.tokenizer)
    ckpt = Checkpointer(
        run_dir.checkpoints,
        keep_last=int(config.checkpoint.keep_last),
        keep_every=int(config.checkpoint.keep_every),
        async_save=bool(config.checkpoint.async_save),
    )
    restored = ckpt.restore_latest(abstract_like(state), data.data_iter, ident)
    if restored is not None:
        state, meta = restored
        start = int(meta["step"])
        loop_rng = jax.random.wrap_key_data(np.asarray(meta["rng"], dtype=np.uint32))
        total = int(config.train.steps)
        print(f"[{arm}] resumed from {ckpt.step_dir(start)} (step {start}/{total})", flush=True)
        return StartState(state, shardings, start, True, loop_rng, ckpt)
    if eval_only:
        ckpt.close()
        raise CheckpointError(
            f"--mode=eval: {run_dir.checkpoints} holds no checkpoint to evaluate. Train the "
            "arm first (--mode=train or --mode=all)."
        )
    state = _init_params(config, state, run_dir=run_dir, data=data, ident=ident, arm=arm)
    return StartState(state, shardings, 0, False, loop_rng, ckpt)


def wire_hooks(
    data: ArmData,
    begin: StartState,
    run_dir: RunDir,
    *,
    arm: str,
    writer: Any,
    eval_step: Callable,
    mesh: Any,
    make_data: DatasetFn,
    trains: bool,
) -> Hooks:
    """The arm's hooks, in order. Metric: non-finite check, clock, progress line. State:
    held-out batches (when training with train.eval_every), checkpoint, HF export."""
    config, model_cfg, tokenizer = data.config, data.model_cfg, data.tokenizer
    primary = multihost.is_primary()
    ident = identity(model_cfg, tokenizer)
    checkpoint = CheckpointHook(
        begin.ckpt,
        data.data_iter,
        lambda: {
            "identity": ident,
            "config": config_to_dict(config),
            "rng": rng_data(begin.loop_rng),
        },
        tokenizer_to_json(tokenizer),
        last_good=begin.start if begin.resumed else None,
    )
    seq_len = int(config.train.seq_len)
    progress = ProgressHook(
        arm,
        writer,
        model_cfg,
        seq_len,
        tokens_per_step=int(config.train.global_batch_size) * seq_len,
        peak_flops=peak_flops(config),
        devices=mfu_device_count(),
        printing=primary,
    )
    hooks = Hooks()
    if int(config.train.eval_every) and trains:
        batches = heldout_batches(make_data, data.corpus, config, PERIODIC_EVAL_BATCHES)
        if jax.process_count() > 1:  # the same full batches on every process -> global arrays
            batches = [multihost.global_from_full(b, batch_sharding(mesh)) for b in batches]
        hooks.on_state(
            arm_hooks.periodic_heldout(writer, eval_step, batches),
            int(config.train.eval_every),
            name="heldout_batches",
        )
    add_standard_hooks(
        hooks,
        arm,
        progress=progress,
        checkpoint=checkpoint,
        log_every=int(config.train.log_every),
        checkpoint_every=int(config.checkpoint.every),
    )
    if int(config.checkpoint.hf_export_every) and primary:
        hooks.on_state(
            arm_hooks.hf_export(run_dir.path / "hf", model_cfg, tokenizer),
            int(config.checkpoint.hf_export_every),
            at_end=True,
            name="hf_export",
        )
    return hooks


def evaluate_arm(
    data: ArmData,
    run_dir: RunDir,
    params: Any,
    *,
    writer: Any,
    step: int,
    eval_step: Callable,
    dataset_fn: DatasetFn | None,
) -> dict[str, float]:
    """`experiment.evaluate.evaluate` on process 0; multi-process runs evaluate a full
    copy of the params on process 0's first device while the others wait at a barrier."""
    config, model_cfg = data.config, data.model_cfg
    metrics: dict[str, float] = {}
    if jax.process_count() > 1:  # ablation-scale models fit one host
        params = multihost.host_local_copy(params)
        eval_mesh = make_mesh({"data": 1}, devices=jax.local_devices()[:1])
        eval_step = make_eval_step(model_cfg, config, eval_mesh)
    if multihost.is_primary():
        metrics = evaluate(
            run_dir,
            config,
            params=params,
            model_cfg=model_cfg,
            tokenizer=data.tokenizer,
            corpus=data.corpus,
            writer=writer,
            step=step,
            eval_step=eval_step,
            dataset_fn=dataset_fn,
        )
    multihost.barrier(f"{config.arm or 'main'}:eval")
    return metrics


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
    inject faults this way). The result carries the arm's wall time per phase
    (`experiment.phases`), measured without touching what the arm computes.
    """
    clock = ArmClock()
    with clock.compiles(), clock.phase("setup_s"):
        run = _set_up(config, run_dir, workdir, dataset_fn, steps, add_hooks, clock)
    arm, data, begin, writer = run.arm, run.data, run.begin, run.writer
    time_state_hooks(run.hooks, clock)
    with clock.compiles(), clock.phase("train_s"), preemption_stop() as stop:
        result = train(
            begin.state,
            clock.first_call("compile_s", run.train_step),  # its first call compiles
            run.batches,
            run.hooks,
            start=begin.start,
            total=run.end,
            stop_requested=stop,
            extra=run.extra,
        )
    clock.phases.steps = result.step - begin.start
    with clock.phase("checkpoint_wait_s"):
        begin.ckpt.wait()
    final_step = int(np.asarray(result.state.step))
    metrics: dict[str, float] = {}
    if result.preempted:
        print(f"[{arm}] SIGTERM: saved step {result.step}; exiting.", flush=True)
    elif run_eval:
        with clock.compiles(), clock.phase("eval_s"):
            metrics = evaluate_arm(
                data,
                run_dir,
                model_params(result.state.params),
                writer=writer,
                step=final_step,
                eval_step=run.eval_step,
                dataset_fn=dataset_fn,
            )
        clock.phases.evaluated = True
    with clock.phase("checkpoint_wait_s"):
        writer.close()
        begin.ckpt.close()
    status = "preempted" if result.preempted else "done"
    return ArmResult(status, final_step, metrics, clock.phases)


@dataclasses.dataclass(frozen=True)
class _ArmRun:
    """What `_set_up` hands to the training loop and evaluation."""

    arm: str
    data: ArmData
    begin: StartState
    hooks: Hooks
    writer: Any
    eval_step: Callable
    train_step: Callable
    batches: Any
    extra: Any  # the objective's frozen inputs (None when nothing trains)
    end: int  # the last step to run


def _set_up(
    config: ml_collections.ConfigDict,
    run_dir: RunDir,
    workdir: str | Path,
    dataset_fn: DatasetFn | None,
    steps: int | None,
    add_hooks: AddHooks | None,
    clock: ArmClock,
) -> _ArmRun:
    """Everything before the first step: data, config files, state, hooks, step functions."""
    arm = config.arm or "main"
    primary = multihost.is_primary()
    make_data = dataset_fn or make_dataset
    data = prepare_data(config, workdir, make_data, run_dir, clock)
    total = int(data.config.train.steps)
    if primary and total != int(config.train.steps):
        print(f"[{arm}] {config.train.epochs} epochs = {total} steps", flush=True)
    config, model_cfg = data.config, data.model_cfg  # the final config from here on
    if primary:
        run_dir.path.mkdir(parents=True, exist_ok=True)
        if not run_dir.tokenizer_dir.exists():
            data.tokenizer.save(run_dir.tokenizer_dir)
        run_dir.write_config(config_to_dict(config))

    mesh = make_mesh(config.mesh)
    begin = start_state(data, run_dir, mesh, arm=arm, eval_only=steps == 0)
    end = begin.start if steps == 0 else total
    if primary:
        truncate_after(run_dir.metrics, begin.start)
    writer = SummaryWriter(run_dir.path) if primary else NullWriter()
    eval_step = make_eval_step(model_cfg, config, mesh)
    hooks = wire_hooks(
        data,
        begin,
        run_dir,
        arm=arm,
        writer=writer,
        eval_step=eval_step,
        mesh=mesh,
        make_data=make_data,
        trains=end > begin.start,
    )
    if add_hooks is not None:
        add_hooks(hooks)

    global_batch = int(config.train.global_batch_size)
    batches = data.data_iter
    if jax.process_count() > 1:
        batches = _global_batches(data.data_iter, mesh, global_batch)
    objective = build_objective(model_cfg, config, mesh)
    train_step = make_train_step(model_cfg, config, mesh, begin.shardings, objective=objective)
    extra = objective.frozen.load() if end > begin.start else None
    return _ArmRun(arm, data, begin, hooks, writer, eval_step, train_step, batches, extra, end)
