"""The run-directory contract: where every file of one run lives, and the one writer of each.

A run directory is what training leaves and what evaluation, serving, export and the report
read; nothing else passes between them. Layout (docs/architecture.md):

    WORKDIR/                      --workdir: the root of many runs
      cache/<key>/                prepared corpora (data.prepare), cache/jax/ compiled steps
      <experiment>/               one experiment: report.md, report.png
        <arm>/                    --run_dir: one run
          config.json             the resolved config this run trained with
          tokenizer/              the tokenizer's files
          checkpoints/<step>/     Orbax steps (zen_code_jax.checkpoint)
          metrics.jsonl           every scalar logged (zen_code_jax.tracking)
          events.out.tfevents.*   the same scalars for TensorBoard
          eval/<task>.jsonl       one record per scored sample
          eval/summary.json       {task: {metric: value, "step": n}}

Every write here is atomic (a temporary name in the same directory, then a rename), so a
run killed at any point leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


@dataclasses.dataclass(frozen=True)
class RunDir:
    """One run's directory (`--run_dir`). Paths only; creating it is the writers' job."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of(cls, workdir: str | Path, experiment: str, arm: str) -> RunDir:
        """WORKDIR/<experiment>/<arm>."""
        return cls(Path(workdir) / experiment / arm)

    # -- paths -------------------------------------------------------------------------
    @property
    def config_json(self) -> Path:
        return self.path / "config.json"

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def summary_json(self) -> Path:
        return self.eval_dir / "summary.json"

    def records(self, task: str) -> Path:
        return self.eval_dir / f"{task}.jsonl"

    @property
    def workdir(self) -> Path:
        """The WORKDIR this run lives in (where the prepared-data cache is)."""
        return self.path.resolve().parents[1]

    # -- the one writer of each file ---------------------------------------------------
    def write_config(self, config_dict: Mapping[str, Any]) -> None:
        write_text_atomic(self.config_json, json.dumps(dict(config_dict), indent=2))

    def read_config(self) -> dict[str, Any]:
        if not self.config_json.exists():
            raise FileNotFoundError(
                f"{self.config_json} does not exist: {self.path} is not a run directory. "
                "Pass --run_dir=WORKDIR/<experiment>/<arm> of a run that has trained."
            )
        return json.loads(self.config_json.read_text(encoding="utf-8"))

    def read_summary(self) -> dict[str, dict[str, Any]]:
        if not self.summary_json.exists():
            return {}
        return json.loads(self.summary_json.read_text(encoding="utf-8"))

    def update_summary(self, step: int, summaries: Mapping[str, Mapping[str, float]]) -> None:
        """Merge `{task: {metric: value}}` measured at `step` into eval/summary.json."""
        old = self.read_summary()
        old.update({name: {"step": int(step), **dict(m)} for name, m in summaries.items()})
        write_text_atomic(self.summary_json, json.dumps(old, indent=2, sort_keys=True))

    def write_records(self, task: str, records: Sequence[Mapping[str, Any]]) -> None:
        """eval/<task>.jsonl, one JSON object per scored sample."""
        text = "".join(json.dumps(r, default=_jsonable) + "\n" for r in records)
        write_text_atomic(self.records(task), text)
