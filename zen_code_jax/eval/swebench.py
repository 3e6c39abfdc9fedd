"""SWE-bench predictions (Jimenez et al. 2024) from a user-supplied file with retrieved
context, for the official harness to score (it needs Docker, so it is not run here).

Input (option `path`, or `--data`): JSONL, or a JSON list, of SWE-bench instances with the
`text` field of princeton-nlp/SWE-bench_oracle or SWE-bench_bm25_13K/27K/40K (instance_id,
repo, base_commit, problem_statement, text). The `text` holds the issue and the retrieved
files between `[start of PATH]` / `[end of PATH]` markers, each line numbered ("12 code"),
and asks for a patch. Generation is greedy (temperature 0, one sample, whatever
eval.num_samples says), the prompt is `text` as is, and generation stops at `</patch>`.

Each output's diff is extracted (`patches.extract_diff`: a <patch> block, a ```diff fence or
a raw `diff --git` / `---` diff), parsed, and applied in Python with exact context matching
to the files the prompt shows in full (`applies`: True / False, or None when the patch
touches no such file). An instance whose prompt does not fit eval.context_tokens with the
generation budget is not generated (`skipped`) and predicts an empty patch.

The records (RUN/eval/swebench.jsonl) are the predictions file: every line has the official
`instance_id`, `model_name_or_path` and `model_patch`, so
`python -m swebench.harness.run_evaluation --predictions_path RUN/eval/swebench.jsonl
--dataset_name princeton-nlp/SWE-bench_Verified --run_id ID` scores it (docs/eval.md).
Metrics: `well_formed` (fraction of instances with a parseable patch), `applies` (fraction
whose patch applies to the given files), `checked` (fraction that could be checked).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zen_code_jax.eval import patches
from zen_code_jax.eval.base import EvalContext, Task, TaskResult, apply_limit
from zen_code_jax.eval.execution import read_jsonl
from zen_code_jax.eval.stats import mean_se

STOP_SEQUENCES: tuple[str, ...] = ("</patch>",)
NEEDED = ("instance_id", "text")
_SETTING = "eval.task_options.swebench"
_FILE = re.compile(r"^\[start of (.+?)\]\n(.*?)^\[end of \1\]$", re.DOTALL | re.MULTILINE)
_NUMBERED = re.compile(r"^(\d+) ?(.*)$", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class SweOptions:
    """`path`: the instances file. `model_name`: the predictions' `model_name_or_path` ("" =
    the run's name and arm). `max_new_tokens`: generation budget (0 = eval.max_new_tokens;
    patches need far more than the default 64)."""

    path: str = ""
    model_name: str = ""
    max_new_tokens: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"{_SETTING}.max_new_tokens must be >= 0 (0 = eval.max_new_tokens).")


def load_instances(path: str) -> list[dict[str, Any]]:
    """The instances of a JSONL file or a JSON list, in file order (each needs `NEEDED`)."""
    p = Path(path) if path else None
    if p is not None and p.suffix == ".json" and p.is_file():
        rows = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError(f"{p} must hold a JSON list of SWE-bench instances.")
    else:
        rows = read_jsonl(path, "The swebench task", f"{_SETTING}.path")
    for r in rows:
        missing = [k for k in NEEDED if k not in r]
        if missing:
            raise ValueError(
                f"SWE-bench instance {r.get('instance_id', '?')} lacks {missing}: use a file "
                "with retrieved context (princeton-nlp/SWE-bench_oracle or _bm25_13K rows)."
            )
    return [dict(r, task_id=r["instance_id"], prompt=r["text"]) for r in rows]


def given_files(text: str) -> dict[str, str | None]:
    """{path: content} of the files shown in `text` between [start of PATH] and [end of PATH],
    line numbers removed; None for a file shown only in part (numbering with gaps or `...`
    lines, as SWE-bench's edits-only prompts)."""
    out: dict[str, str | None] = {}
    for m in _FILE.finditer(text):
        body = m.group(2)[:-1] if m.group(2).endswith("\n") else m.group(2)
        lines, full = [], True
        for n, line in enumerate(body.split("\n"), 1):
            num = _NUMBERED.match(line)
            if not num or int(num.group(1)) != n:
                full = False
                break
            lines.append(num.group(2))
        out[m.group(1)] = "\n".join(lines) if full else None
    return out


def predict(instance: dict[str, Any], output: str, model_name: str) -> dict[str, Any]:
    """One record: the official prediction fields plus the patch checks."""
    diff = patches.extract_diff(output)
    record: dict[str, Any] = {
        "instance_id": instance["instance_id"],
        "model_name_or_path": model_name,
        "model_patch": diff,
        "task_id": instance["instance_id"],
        "repo": instance.get("repo", ""),
        "well_formed": False,
        "applies": None,
        "apply_error": "",
        "counts_ok": None,
        "files": [],
        "checked_files": [],
    }
    try:
        files = patches.parse_patch(diff)
    except ValueError as e:
        record["apply_error"] = f"malformed patch: {e}"
        return record
    applies, checked, error = patches.check_patch(files, given_files(instance["text"]))
    record.update(
        well_formed=True,
        applies=applies,
        apply_error=error,
        counts_ok=all(h.counts_ok for f in files for h in f.hunks),
        files=[f.path for f in files],
        checked_files=checked,
    )
    return record


def score(instances: list[dict[str, Any]], outputs: dict[str, str], model_name: str) -> TaskResult:
    """Records (predictions) and metrics for one output per instance."""
    records = []
    for inst in instances:
        if inst["instance_id"] not in outputs:
            raise ValueError(f"No output for {inst['instance_id']}; give every instance one.")
        records.append(predict(inst, outputs[inst["instance_id"]], model_name))
    n = max(len(records), 1)
    metrics = {
        "well_formed": sum(r["well_formed"] for r in records) / n,
        "applies": sum(r["applies"] is True for r in records) / n,
        "checked": sum(r["applies"] is not None for r in records) / n,
        "num_instances": float(len(records)),
    }
    return TaskResult(metrics, records)


class SweBenchTask(Task):
    name = "swebench"
    description = (
        "SWE-bench predictions from a file with retrieved context (path / --data): greedy "
        "patches in the official harness's format, checked to apply to the given files"
    )
    options_type = SweOptions
    data_option = "path"

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        return apply_limit(load_instances(ctx.options(self).path), ctx.limit)

    def model_name(self, ctx: EvalContext) -> str:
        name = ctx.options(self).model_name
        if name:
            return name
        arm = str(ctx.config.get("arm", "") or "")
        return f"{ctx.config.name}/{arm}" if arm else str(ctx.config.name)

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        engine = ctx.need_engine()
        options = ctx.options(self)
        insts = self.problems(ctx)
        budget = options.max_new_tokens or int(ctx.eval_cfg.max_new_tokens)
        fits = [
            ctx.tokenizer is None
            or len(ctx.tokenizer.encode(i["prompt"])) + budget <= ctx.context_tokens()
            for i in insts
        ]
        rows = [i for i, ok in zip(insts, fits) if ok]
        texts = engine.generate(
            [i["prompt"] for i in rows],
            max_new_tokens=budget,
            temperature=0.0,
            top_p=1.0,
            stop=STOP_SEQUENCES,
            seed=ctx.seed,
        )
        outputs = {i["instance_id"]: "" for i in insts}
        outputs.update({i["instance_id"]: t for i, t in zip(rows, texts)})
        result = score(insts, outputs, self.model_name(ctx))
        for r, ok in zip(result.records, fits):
            r["skipped"] = "" if ok else "prompt + max_new_tokens > eval.context_tokens"
        result.metrics["skipped"] = fits.count(False) / max(len(fits), 1)
        return result

    def standard_errors(
        self, records: list[dict[str, Any]], eval_cfg: Mapping[str, Any]
    ) -> dict[str, float]:
        """Binomial SEs of the per-instance well_formed and applies (one sample each)."""
        if not records:
            return {}
        return {
            "well_formed": mean_se([float(r["well_formed"]) for r in records]),
            "applies": mean_se([float(r["applies"] is True) for r in records]),
        }


SWEBENCH = SweBenchTask()
TASKS = (SWEBENCH,)
