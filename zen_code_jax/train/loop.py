"""The training loop of one arm: data, sharded state, step, hooks, checkpoints, eval.

`train_arm(config, run_dir, workdir=...)` is the whole job of one arm of an experiment:

  prepare (cached) corpus -> tokenizer -> mesh -> sharded train state
  -> resume from the newest good checkpoint (or start from `train.init_checkpoint`)
  -> for each step: next batch, jitted step, metrics fetched one step late,
     hooks (progress line + TensorBoard, held-out loss, checkpoint)
  -> final checkpoint -> evaluation tasks -> hparams summary.

Exactness: a checkpoint at step k holds the state after k updates and the data iterator
after k batches, so a rerun after SIGKILL replays steps k+1.. with the same batches and
the same arithmetic, i.e. bitwise the same losses on CPU. SIGTERM (preemption) saves at
the next step boundary and returns "preempted". A non-finite loss or gradient norm stops
the run before anything is saved from that step, naming the last good checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from zen_code_jax.config import config_to_dict, model_config_from
from zen_code_jax.model.config import ModelConfig, param_count
from zen_code_jax.train import flops as flops_lib
from zen_code_jax.train.checkpoint import (
    Checkpointer,
    abstract_like,
    identity,
    restore_params,
    tokenizer_to_json,
)
from zen_code_jax.train.hooks import Hooks, StepInfo
from zen_code_jax.train.tb import LazyMetrics, NullWriter, SummaryWriter, truncate_after

DatasetFn = Callable[..., Any]


class NonFiniteError(RuntimeError):
    """Loss or gradient norm became NaN/inf; the message names the step and last checkpoint."""


class _Preemption:
    """Turn SIGTERM into a flag checked at step boundaries (installed for one arm).

    Multi-process runs leave SIGTERM to jax's preemption sync manager instead
    (`install=False`), which agrees on one stopping step across hosts.
    """

    def __init__(self, install: bool = True) -> None:
        self.requested = False
        self._install = install
        self._previous: Any = None

    def __enter__(self) -> _Preemption:
        if not self._install:
            return self
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no preemption handling
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _fault_injection() -> tuple[int, str] | None:
    """ZEN_CODE_FAULT=STEP:SIGKILL|SIGTERM kills this process after STEP (tests only)."""
    spec = os.environ.get("ZEN_CODE_FAULT", "")
    if not spec:
        return None
    step, kind = spec.split(":")
    return int(step), kind


def resolve_init_checkpoint(spec: str, run_dir: Path) -> Path:
    """`arm:NAME` -> the sibling arm's run dir; anything else is a path."""
    if spec.startswith("arm:"):
        return run_dir.parent / spec[4:]
    return Path(spec)


def _device_count_for_mfu() -> int:
    # The CPU backend's simulated devices share one host's cores; count the host once.
    return 1 if jax.devices()[0].platform == "cpu" else jax.device_count()


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def total_steps(config: ml_collections.ConfigDict, data_iter: Any = None) -> int:
    epochs = int(config.train.epochs)
    if epochs > 0:
        per_epoch = getattr(data_iter, "batches_per_epoch", None)
        if per_epoch is None:
            raise ValueError(
                "train.epochs > 0 needs a dataset that knows its batches_per_epoch (the SFT "
                "dataset does); for pretraining set train.steps and train.epochs=0."
            )
        return epochs * int(per_epoch)
    return int(config.train.steps)


def _default_dataset_fn() -> DatasetFn:
    from zen_code_jax.data.pipeline import make_dataset

    return make_dataset


def heldout_loss(
    eval_step: Callable, params: Any, batches: list[dict], tokens_per_byte: float = 0.0
) -> dict[str, float]:
    """Mean next-token loss (nats) over fixed held-out batches, and bits/byte if known."""
    loss_sum, tokens = 0.0, 0.0
    for batch in batches:
        out = eval_step(params, batch)
        loss_sum += float(out["loss_sum"])
        tokens += float(out["tokens"])
    loss = loss_sum / max(tokens, 1.0)
    result = {"heldout_loss": loss}
    if tokens_per_byte > 0:
        result["heldout_bits_per_byte"] = loss * tokens_per_byte / math.log(2)
    return result


def _heldout_batches(
    dataset_fn: DatasetFn, corpus: Any, config: ml_collections.ConfigDict, n: int
) -> list[dict]:
    """A fixed, left-to-right (FIM off) sample of held-out batches for periodic eval."""
    cfg = ml_collections.ConfigDict(config.to_dict(), allow_dotted_keys=True)
    cfg.fim.rate = 0.0
    try:
        it = dataset_fn(
            corpus,
            cfg,
            split="heldout",
            seq_len=int(config.train.seq_len),
            batch_size=int(config.train.global_batch_size),
            seed=int(config.seed),
        )
    except Exception as e:  # noqa: BLE001 - a corpus without held-out split
        print(f"note: no held-out batches for periodic eval ({type(e).__name__}: {e})")
        return []
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


def train_arm(
    config: ml_collections.ConfigDict,
    run_dir: str | Path,
    *,
    workdir: str | Path,
    dataset_fn: DatasetFn | None = None,
    run_eval: bool = True,
) -> dict[str, Any]:
    """Train (or resume) one arm in `run_dir`; returns {"status", "step", "metrics"}.

    status is "done" or "preempted" (SIGTERM: saved, caller should exit 0).
    """
    from zen_code_jax.data.prepare import prepare_corpus
    from zen_code_jax.parallel import batch_sharding, make_mesh, multihost
    from zen_code_jax.parallel.multihost import global_from_full, make_global_batch
    from zen_code_jax.train import create_train_state, make_eval_step, make_train_step

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    arm = config.arm or "main"
    model_cfg = model_config_from(config.model)
    custom_dataset_fn = dataset_fn
    dataset_fn = dataset_fn or _default_dataset_fn()
    # Multi-process runs share run_dir (as Orbax requires): process 0 writes the files,
    # prints and logs; every process trains, checkpoints its own shards and data state.
    primary = multihost.is_primary()

    corpus = multihost.primary_first(
        prepare_corpus, config.data, model_cfg.vocab_size, str(workdir)
    )
    tokenizer = corpus.tokenizer
    tokenizer.check_compatible(model_cfg)
    if primary:
        if not (run_dir / "tokenizer").exists():
            tokenizer.save(run_dir / "tokenizer")
        (run_dir / "config.json").write_text(json.dumps(config_to_dict(config), indent=2))

    mesh = make_mesh(config.mesh)
    rng = jax.random.key(int(config.seed))
    init_rng, loop_rng = jax.random.split(rng)
    state, shardings = create_train_state(model_cfg, config, mesh, init_rng)

    procs, proc = jax.process_count(), jax.process_index()
    global_batch = int(config.train.global_batch_size)
    data_iter = dataset_fn(
        corpus,
        config,
        split="train",
        seq_len=int(config.train.seq_len),
        batch_size=global_batch // procs,
        seed=int(config.seed),
        shard_index=proc,
        shard_count=procs,
    )
    steps = total_steps(config, data_iter)

    ident = identity(model_cfg, tokenizer)
    tok_json = tokenizer_to_json(tokenizer)
    ckpt = Checkpointer(
        run_dir / "checkpoints",
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
        print(f"[{arm}] resumed from {ckpt.step_dir(start)} (step {start}/{steps})", flush=True)
    elif config.train.init_checkpoint:
        src = resolve_init_checkpoint(config.train.init_checkpoint, run_dir)
        params, meta, _ = restore_params(src, abstract_params=abstract_like(state["params"]))
        if meta.get("identity") != ident:
            raise ValueError(
                f"train.init_checkpoint={config.train.init_checkpoint!r} ({src}) has a different "
                "model config or tokenizer than this arm; initialize from a run with the same "
                "model group and data (tokenizer) settings."
            )
        state = {**state, "params": params}
        print(f"[{arm}] initialized params from {src} (step {meta['step']})", flush=True)
    if primary:
        truncate_after(run_dir / "metrics.jsonl", start)
    writer = SummaryWriter(run_dir) if primary else NullWriter()
    train_step = make_train_step(model_cfg, config, mesh, shardings)
    eval_step = make_eval_step(model_cfg, config, mesh)
    tpb = float(corpus.manifest.get("tokens_per_byte", 0.0) or 0.0)
    eval_batches = (
        _heldout_batches(dataset_fn, corpus, config, 4) if int(config.train.eval_every) else []
    )
    if procs > 1:  # the same full batches on every process -> global arrays
        eval_batches = [global_from_full(b, batch_sharding(mesh)) for b in eval_batches]

    seq_len = int(config.train.seq_len)
    tokens_per_step = int(config.train.global_batch_size) * seq_len
    peak = flops_lib.peak_flops_per_device(float(config.train.peak_flops_per_device))
    ndev = _device_count_for_mfu()
    last_good = {"step": start if restored is not None else None}
    timing = {"t0": None, "s0": start}

    def rng_meta() -> list[int]:
        return np.asarray(jax.random.key_data(loop_rng)).tolist()

    def save(info: StepInfo) -> None:
        meta = {"identity": ident, "config": config_to_dict(config), "rng": rng_meta()}
        ckpt.save(info.step, info.state, data_iter, meta, tok_json)
        last_good["step"] = info.step

    def log(info: StepInfo) -> None:
        m = info.metrics
        now = time.perf_counter()
        if timing["t0"] is None or info.step <= timing["s0"]:
            rate = float("nan")
        else:
            rate = (info.step - timing["s0"]) / (now - timing["t0"])
        tok_s = rate * tokens_per_step
        mfu = flops_lib.mfu(tok_s, model_cfg, seq_len, ndev, peak) if rate == rate else math.nan
        eta = (info.total_steps - info.step) / rate if rate > 0 else float("nan")
        writer.scalars(
            info.step,
            {
                "loss": m["loss"],
                "lr": m.get("lr", math.nan),
                "grad_norm": m.get("grad_norm", math.nan),
                "tokens_per_s": tok_s,
                "mfu": mfu,
            },
            prefix="train/",
        )
        if not primary:
            return
        print(
            f"[{arm}] step {info.step}/{info.total_steps} loss {m['loss']:.4f} "
            f"| {rate:.2f} steps/s {tok_s / 1e3:.1f}K tok/s MFU {100 * mfu:.1f}% "
            f"| ETA {format_duration(eta)}",
            flush=True,
        )

    def periodic_eval(info: StepInfo) -> None:
        if eval_batches:
            writer.scalars(
                info.step,
                heldout_loss(eval_step, info.state["params"], eval_batches, tpb),
                prefix="eval/",
            )

    # Metric hooks see host floats one step late (no pipeline bubble); state hooks run at
    # their own step, after that step's metrics are checked, so nothing non-finite is saved.
    metric_hooks, state_hooks = Hooks(), Hooks()
    metric_hooks.add(log, int(config.train.log_every), name="log")
    state_hooks.add(periodic_eval, int(config.train.eval_every), name="eval")
    state_hooks.add(save, int(config.checkpoint.every), name="checkpoint")

    def check(ready: tuple[int, dict[str, float]] | None, force: tuple[str, ...] = ()) -> Any:
        if ready is None:
            return None
        step, metrics = ready
        bad = {k: metrics[k] for k in ("loss", "grad_norm") if k in metrics}
        if not all(math.isfinite(v) for v in bad.values()):
            ckpt.wait()
            where = (
                str(ckpt.step_dir(last_good["step"]))
                if last_good["step"] is not None
                else "none (no checkpoint was saved yet)"
            )
            raise NonFiniteError(
                f"[{arm}] non-finite values at step {step}: "
                + ", ".join(f"{k}={v}" for k, v in bad.items())
                + f". Last good checkpoint: {where}. Lower optimizer.peak_lr or raise "
                "optimizer.warmup_steps, then rerun (it resumes from that checkpoint)."
            )
        metric_hooks.run(StepInfo(step, steps, None, metrics), force=force)
        return ready

    lazy = LazyMetrics()
    fault = _fault_injection()
    status = "done"
    sync_preemption = multihost.preemption_sync_available()
    with _Preemption(install=not sync_preemption) as preempt:
        for step in range(start + 1, steps + 1):
            batch = next(data_iter)
            if procs > 1:  # per-host rows -> global arrays sharded over the mesh
                batch = make_global_batch(batch, batch_sharding(mesh), global_batch)
            state, metrics = train_step(state, batch)
            if timing["t0"] is None and step == start + 2:  # after the compile of step 1
                timing["t0"], timing["s0"] = time.perf_counter(), start + 1
            check(lazy.push(step, metrics))
            if fault and fault[0] == step:
                os.kill(os.getpid(), getattr(signal, fault[1]))
            final = step == steps
            if sync_preemption:  # every host, every step: the agreed stop step
                preempt.requested = multihost.reached_preemption(step)
            stop = preempt.requested and not final
            if final or stop or state_hooks.due(step):
                ready = check(lazy.flush(), force=("log",) if final or stop else ())
                force = ("checkpoint",) if final or stop else ()
                state_hooks.run(StepInfo(step, steps, state, ready[1]), force=force)
            if stop:
                status = "preempted"
                ckpt.wait()
                print(f"[{arm}] SIGTERM: saved step {step}; exiting.", flush=True)
                break
    ckpt.wait()
    final_step = int(np.asarray(state["step"]))
    result: dict[str, Any] = {"status": status, "step": final_step, "metrics": {}}
    if status == "done" and run_eval:
        params, eval_mesh = state["params"], mesh
        if procs > 1:
            # Evaluation runs on process 0's first device with a full copy of the params
            # (ablation-scale models fit one host); the others wait at a barrier.
            params = multihost.host_local_copy(params)
            eval_mesh = make_mesh({"data": 1}, devices=jax.local_devices()[:1])
            eval_step = make_eval_step(model_cfg, config, eval_mesh)
        if primary:
            result["metrics"] = evaluate_run(
                run_dir,
                config,
                params=params,
                model_cfg=model_cfg,
                tokenizer=tokenizer,
                corpus=corpus,
                mesh=eval_mesh,
                writer=writer,
                step=final_step,
                eval_step=eval_step,
                dataset_fn=custom_dataset_fn,
            )
        multihost.barrier(f"{arm}:eval")
    writer.close()
    ckpt.close()
    return result


def plan_line(config: ml_collections.ConfigDict, arm: str, tokens_per_s: float) -> str:
    """One line: arm, parameters, steps, tokens, estimated training time."""
    model_cfg: ModelConfig = model_config_from(config.model)
    steps = int(config.train.steps)
    tokens = steps * int(config.train.global_batch_size) * int(config.train.seq_len)
    est = tokens / tokens_per_s if tokens_per_s > 0 else float("nan")
    epochs = int(config.train.epochs)
    steps_s = f"{epochs} epochs" if epochs > 0 else f"{steps:,} steps"
    return (
        f"  {arm:<10} {param_count(model_cfg) / 1e6:,.1f}M params, {steps_s}, "
        f"{tokens / 1e6:,.2f}M tokens, est. {format_duration(est)} training"
    )


def arm_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What distinguishes this arm in the HParams dashboard: its name, scale, overrides."""
    hp: dict[str, Any] = {"arm": config.arm or "main", "scale": str(config.scale)}
    if config.arm and config.arm in config.arms:
        for key, value in config.arms[config.arm].items():
            hp[key] = value if isinstance(value, bool | int | float | str) else str(value)
    return hp


def evaluate_run(
    run_dir: str | Path,
    config: ml_collections.ConfigDict,
    *,
    params: Any,
    model_cfg: ModelConfig,
    tokenizer: Any,
    corpus: Any,
    mesh: Any,
    writer: SummaryWriter,
    step: int,
    eval_step: Callable | None = None,
    dataset_fn: DatasetFn | None = None,
) -> dict[str, float]:
    """Run `config.eval.tasks` on `params` and record the arm's hparams + final metrics.

    The eval runner writes eval/<task>.jsonl, eval/summary.json and the
    `eval/<task>/<metric>` scalars.

    With a custom data pipeline (e.g. SFT) the held-out loss of that pipeline's own
    held-out split is measured too (`pipeline_heldout/loss`), over at most 50 batches.
    Returns {"task/metric": value}.
    """
    from zen_code_jax.eval.runner import run_tasks
    from zen_code_jax.eval.tasks import EvalContext
    from zen_code_jax.infer.engine import InferenceEngine

    run_dir = Path(run_dir)
    metrics: dict[str, float] = {}
    if dataset_fn is not None and eval_step is not None:
        batches = _heldout_batches(dataset_fn, corpus, config, 50)
        if batches:
            loss = heldout_loss(eval_step, params, batches)["heldout_loss"]
            metrics["pipeline_heldout/loss"] = loss
            _merge_summary(run_dir, "pipeline_heldout", {"step": step, "loss": loss})
    tasks = list(config.eval.tasks)
    if tasks:
        engine = InferenceEngine(
            params, model_cfg, tokenizer, max_batch_size=max(1, int(config.eval.batch_size))
        )
        ctx = EvalContext(config=config, engine=engine, tokenizer=tokenizer, corpus=corpus)
        summaries = run_tasks(ctx, tasks, run_dir, step=step)
        for task, values in summaries.items():
            metrics.update({f"{task}/{k}": float(v) for k, v in values.items()})
        if "heldout_fim" in tasks:
            other = other_mode_middle_loss(ctx)
            metrics.update({f"heldout_fim/{k}": v for k, v in other.items()})
            _merge_summary(run_dir, "heldout_fim", {**summaries["heldout_fim"], **other})
    writer.scalars(step, {k: v for k, v in metrics.items() if k.startswith("pipeline_")}, "eval/")
    writer.hparams(arm_hparams(config), metrics, step)
    writer.flush()
    return metrics


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    run_dir: str | Path,
    *,
    workdir: str | Path,
    dataset_fn: DatasetFn | None = None,
) -> dict[str, Any]:
    """`--mode=eval`: score the newest good checkpoint of an existing run dir."""
    from zen_code_jax.data.prepare import prepare_corpus
    from zen_code_jax.train import make_eval_step
    from zen_code_jax.train.checkpoint import restore_for_inference

    params, model_cfg, tokenizer, saved = restore_for_inference(run_dir)
    saved.arm = config.arm
    saved.eval = config.eval  # the command line's eval settings win
    corpus = prepare_corpus(saved.data, model_cfg.vocab_size, str(workdir))
    from zen_code_jax.parallel import make_mesh

    mesh = make_mesh(saved.mesh)
    step = int(restore_step(run_dir))
    writer = SummaryWriter(run_dir)
    try:
        metrics = evaluate_run(
            run_dir,
            saved,
            params=params,
            model_cfg=model_cfg,
            tokenizer=tokenizer,
            corpus=corpus,
            mesh=mesh,
            writer=writer,
            step=step,
            eval_step=make_eval_step(model_cfg, saved, mesh) if dataset_fn else None,
            dataset_fn=dataset_fn,
        )
    finally:
        writer.close()
    return {"status": "done", "step": step, "metrics": metrics}


def restore_step(run_dir: str | Path) -> int:
    ckpt = Checkpointer(Path(run_dir) / "checkpoints", async_save=False)
    try:
        return ckpt.latest_step() or 0
    finally:
        ckpt.close()


def _merge_summary(run_dir: Path, name: str, values: dict[str, float]) -> None:
    """Add one entry to eval/summary.json in the eval runner's {task: {metric}} layout."""
    path = run_dir / "eval" / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else {}
    old[name] = values
    path.write_text(json.dumps(old, indent=2, sort_keys=True))


def other_mode_middle_loss(ctx: Any) -> dict[str, float]:
    """Middle loss (bits/byte) under the FIM layout heldout_fim did not use (SPM for PSM).

    heldout_fim scores one layout (`eval.fim_mode`); the FIM ablation reports both, so this
    teacher-forces the same held-out examples under the other layout, without generating
    (cheap), using the task's own sampling and trimming so the bytes are identical.
    """
    from zen_code_jax.data.fim import fim_prompt_tokens
    from zen_code_jax.eval import heldout

    mode = "spm" if str(ctx.eval_cfg.fim_mode) == "psm" else "psm"
    tok, budget = ctx.tokenizer, ctx.context_tokens()
    n = ctx.limit if ctx.limit > 0 else heldout.DEFAULT_SAMPLES
    src = heldout._heldout(ctx)
    out: dict[str, float] = {}
    for kind in ("single", "multi"):
        exs = heldout.sample_fim_examples(src, kind, n, ctx.seed)
        if not exs:
            continue
        fitted = [heldout.fit_fim(e, tok, budget, with_middle=True) for e in exs]
        contexts = [fim_prompt_tokens(p, s, mode, tok) for p, s in fitted]
        mids = [tok.encode(e["canonical_solution"]) for e in exs]
        nats = sum(-float(np.sum(lp)) for lp in ctx.engine.token_logprobs(contexts, mids))
        nbytes = sum(len(e["canonical_solution"].encode("utf-8")) for e in exs)
        out[f"{kind}/middle_bpb_{mode}"] = heldout.bits_per_byte(nats, nbytes)
    return out
