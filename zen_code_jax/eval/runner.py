"""Score a run's checkpoint on named tasks and record the results in the run directory.

Per task: `RUN/eval/<task>.jsonl` (one line per scored sample), and summary scalars as
`eval/<task>/<metric>` in TensorBoard (the run's event files, via `train.tb.SummaryWriter`,
which also appends them to `RUN/metrics.jsonl` for the report) at the checkpoint's step;
all summaries also go to `RUN/eval/summary.json`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zen_code_jax.eval.tasks import EvalContext, get_task


def checkpoint_step(run_dir: str | Path) -> int:
    """Newest checkpoint step of a run (0 if it cannot be determined)."""
    try:
        from zen_code_jax.train.checkpoint import find_checkpoint_dir

        d = find_checkpoint_dir(run_dir)
        steps = [int(p.name) for p in Path(d).iterdir() if p.name.isdigit()]
        return max(steps) if steps else 0
    except Exception:  # noqa: BLE001 - the step only labels the scalars
        return 0


def write_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(x: Any) -> Any:
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(x)


def run_tasks(
    ctx: EvalContext,
    task_names: Sequence[str],
    out_dir: str | Path,
    *,
    step: int = 0,
    log: Any = None,
    writer: Any = None,
) -> dict[str, dict[str, float]]:
    """Evaluate each task, write its records and scalars under out_dir; returns summaries.

    `writer`: an open `train.tb.SummaryWriter` for out_dir to reuse (the training loop's);
    by default one is opened and closed here.
    """
    from zen_code_jax.train.tb import SummaryWriter

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out_dir)
    tasks = [get_task(n) for n in task_names]  # fail on a typo before any work
    summaries: dict[str, dict[str, float]] = {}
    own_writer = writer is None
    writer = writer if writer is not None else SummaryWriter(out)
    try:
        for task in tasks:
            t0 = time.time()
            result = task.evaluate(ctx)
            metrics = {**result.metrics, "eval_seconds": time.time() - t0}
            write_records(out / "eval" / f"{task.name}.jsonl", result.records)
            writer.scalars(step, metrics, prefix=f"eval/{task.name}/")
            writer.flush()
            summaries[task.name] = metrics
            log(
                f"[eval] {task.name} @ step {step}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            )
    finally:
        if own_writer:
            writer.close()
        else:
            writer.flush()
    summary_path = out / "eval" / "summary.json"
    old = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    old.update({name: {"step": step, **m} for name, m in summaries.items()})
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(old, indent=2, sort_keys=True))
    return summaries


def data_workdir(run_dir: str | Path) -> Path:
    """WORKDIR of a run dir WORKDIR/<experiment>/<arm> (where the prepared-data cache lives)."""
    return Path(run_dir).resolve().parents[1]


def corpus_loader(config: Any, vocab_size: int, workdir: str | Path) -> Any:
    """A zero-argument callable that prepares (or loads the cached) corpus on first use."""

    def load() -> Any:
        from zen_code_jax.data.prepare import prepare_corpus

        return prepare_corpus(config.data, vocab_size, str(workdir))

    return load


def apply_overrides(config: Any, overrides: dict[str, Any]) -> None:
    """Set `eval.*` (or other dotted) fields; unknown keys raise with the valid names."""
    for key, value in overrides.items():
        node = config
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[p]
        leaf = parts[-1]
        if leaf not in node:
            raise ValueError(f"Unknown config key {key!r}; valid keys here: {sorted(node.keys())}.")
        with node.unlocked() if hasattr(node, "unlocked") else _nullctx():
            node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], list) else value


class _nullctx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None


def evaluate_run(
    run_dir: str | Path,
    task_names: Sequence[str] | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    workdir: str | Path | None = None,
) -> dict[str, dict[str, float]]:
    """Load RUN's newest checkpoint (`restore_for_inference`) and score it on the tasks
    (default: the run's config.eval.tasks)."""
    from zen_code_jax.infer.engine import InferenceEngine
    from zen_code_jax.train.checkpoint import restore_for_inference

    params, model_cfg, tokenizer, config = restore_for_inference(run_dir)
    if overrides:
        apply_overrides(config, overrides)
    names = list(task_names) if task_names else list(config.eval.tasks)
    for n in names:
        get_task(n)
    engine = InferenceEngine(
        params, model_cfg, tokenizer, max_batch_size=max(1, int(config.eval.batch_size))
    )
    ctx = EvalContext(
        config=config,
        engine=engine,
        tokenizer=tokenizer,
        corpus=corpus_loader(config, model_cfg.vocab_size, workdir or data_workdir(run_dir)),
    )
    return run_tasks(ctx, names, run_dir, step=checkpoint_step(run_dir))
