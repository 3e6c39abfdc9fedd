"""The report suite: the paper's Tables 4, 5 and 6 for any checkpoint, beside its numbers.

`plan_suite` decides which tasks of a suite (`registry.SUITES`) run: a task whose data
option (`Task.data_option`) is set, or one that needs no data (humaneval, the derived
HumanEval-Infilling tasks); every other one is skipped with the reason and the setting that
fixes it. The derived single/multi-line infilling tasks give way to the official-file tasks
when those have their `dir`. `score_suite` scores a run directory's checkpoint on the
planned tasks (`runner.score_checkpoint`) and `write_suite_report` lays the results out
(`eval/suite_tables.py`) into `RUN/eval/report/`: tables.md, tables.json and tables.png.

Why the plan skips instead of failing: a researcher rarely has every benchmark file at
hand, and the table must still say which cells are missing and why.
"""

from __future__ import annotations

import dataclasses
import glob
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zen_code_jax.config import apply_overrides
from zen_code_jax.eval.registry import SUITES, TASK_MODULES, get_task
from zen_code_jax.eval.runner import score_checkpoint
from zen_code_jax.eval.suite_tables import build_tables, render_markdown, render_plot
from zen_code_jax.resolve import run_facts
from zen_code_jax.rundir import RunDir, write_text_atomic

# Derived infilling task -> the official-file task that replaces it when its `dir` is set.
SUPERSEDED_BY = {
    "humaneval_infill_single": "humaneval_infilling_openai_single",
    "humaneval_infill_multi": "humaneval_infilling_openai_multi",
}
_INFILL = "HumanEval-{}Infilling.jsonl*"
# --data_dir: the published file names each task's data option is looked up by; True =
# the option takes the folder holding the file (the HumanEval-Infilling `dir`).
DATA_FILES: dict[str, tuple[tuple[str, ...], bool]] = {
    "humaneval_plus": (("HumanEvalPlus*.jsonl*",), False),
    "mbpp_plus": (("MbppPlus*.jsonl*",), False),
    "mbpp": (("mbpp.jsonl", "mbpp*.jsonl"), False),
    "multipl_e": (("multipl_e*.jsonl", "multipl-e*.jsonl"), False),
    "livecodebench": (("code_generation_lite*", "livecodebench*"), False),
    "swebench": (("swebench*.json*", "SWE-bench*.json*"), False),
    "repobench": (("repobench*",), False),
    "humaneval_infilling_openai_single": ((_INFILL.format("SingleLine"),), True),
    "humaneval_infilling_openai_multi": ((_INFILL.format("MultiLine"),), True),
    "humaneval_infilling_openai_random_span": ((_INFILL.format("RandomSpan"),), True),
    "humaneval_infilling_openai_random_span_light": ((_INFILL.format("RandomSpanLight"),), True),
}


@dataclasses.dataclass(frozen=True)
class SuitePlan:
    """What a suite will do: `run` (task names, in suite order) and `skipped` ({task: why})."""

    suite: str
    run: tuple[str, ...]
    skipped: Mapping[str, str]


def _option(eval_cfg: Mapping[str, Any], task: str, option: str) -> str:
    opts = dict(eval_cfg.get("task_options", None) or {})
    return str(dict(opts.get(task, None) or {}).get(option, "") or "")


def plan_suite(eval_cfg: Mapping[str, Any], suite: str = "report") -> SuitePlan:
    """The suite's tasks split into those to run and those skipped, with each reason."""
    if suite not in SUITES:
        raise ValueError(f"--suite={suite!r} is not a suite; valid suites: {', '.join(SUITES)}.")
    run, skipped = [], {}
    for name in SUITES[suite]:
        if name not in TASK_MODULES:
            skipped[name] = f"unavailable: task {name} is not in this build's registry"
            continue
        task = get_task(name)
        official = SUPERSEDED_BY.get(name)
        if official and _option(eval_cfg, official, "dir"):
            skipped[name] = f"superseded by {official} (official file)"
        elif task.data_option and not _option(eval_cfg, name, task.data_option):
            skipped[name] = (
                f"no data: set eval.task_options.{name}.{task.data_option} (or --data_dir)"
            )
        else:
            run.append(name)
    return SuitePlan(suite, tuple(run), skipped)


def data_dir_overrides(data_dir: str | Path, eval_cfg: Mapping[str, Any]) -> dict[str, str]:
    """Dotted overrides pointing each suite task whose data option is unset at its
    published file in `data_dir` (`DATA_FILES`); tasks with no file there stay unset."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data_dir={data_dir!r} is not a folder.")
    out: dict[str, str] = {}
    for name, (patterns, folder) in DATA_FILES.items():
        if name not in TASK_MODULES:
            continue
        option = get_task(name).data_option
        if not option or _option(eval_cfg, name, option):
            continue
        hits = [h for p in patterns for h in sorted(glob.glob(str(root / p)))]
        if hits:
            out[f"eval.task_options.{name}.{option}"] = str(root) if folder else hits[0]
    return out


def read_records(run: RunDir, task: str) -> list[dict[str, Any]]:
    """RUN/eval/<task>.jsonl's records ([] when the task was not scored)."""
    path = run.records(task)
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def write_suite_report(
    run_dir: str | Path,
    eval_cfg: Mapping[str, Any],
    plan: SuitePlan,
    out_dir: str | Path | None = None,
    *,
    checkpoint: str = "",
) -> Path:
    """Tables 4, 5, 6 of the scored run beside the paper's numbers, into `out_dir` (default
    RUN/eval/report/): tables.md, tables.json, tables.png. Returns the folder."""
    run = RunDir(run_dir)
    summary = run.read_summary()
    ran = [n for n in plan.run if n in summary]
    records = {n: read_records(run, n) for n in ran}
    ses = {n: get_task(n).standard_errors(records[n], eval_cfg) for n in ran}
    tables = build_tables({n: summary[n] for n in ran}, ses, records, dict(plan.skipped), eval_cfg)
    out = Path(out_dir) if out_dir else run.eval_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    step = next((int(summary[n]["step"]) for n in ran if "step" in summary[n]), None)
    doc = {
        "suite": plan.suite,
        "checkpoint": checkpoint or str(run.path),
        "step": step,
        "ran": list(plan.run),
        "skipped": dict(plan.skipped),
        "tables": [t.to_json() for t in tables],
    }
    write_text_atomic(out / "tables.json", json.dumps(doc, indent=2))
    write_text_atomic(out / "tables.md", render_markdown(tables, doc))
    render_plot(tables, out / "tables.png")
    return out


def score_suite(
    run_dir: str | Path,
    suite: str = "report",
    *,
    overrides: Mapping[str, Any] | None = None,
    data_dir: str | Path | None = None,
    workdir: str | Path | None = None,
    out_dir: str | Path | None = None,
    checkpoint: str = "",
) -> tuple[dict[str, dict[str, float]], Path]:
    """Score RUN's checkpoint on the suite's tasks that have data, then write its tables.
    Returns (summaries, report folder)."""
    config = run_facts(RunDir(run_dir).path).config
    assert config is not None  # a run directory always has one
    o = dict(overrides or {})
    apply_overrides(config, o)
    if data_dir:
        o.update(data_dir_overrides(data_dir, config.eval))
        apply_overrides(config, o)
    plan = plan_suite(config.eval, suite)
    summaries = (
        score_checkpoint(run_dir, list(plan.run), overrides=o, workdir=workdir) if plan.run else {}
    )
    folder = write_suite_report(run_dir, config.eval, plan, out_dir, checkpoint=checkpoint)
    return summaries, folder
