"""The ablation report: report.md (a table shaped like the report's own) and report.png.

Everything is rebuilt from the arms' logs (`<arm>/metrics.jsonl` for loss curves,
`<arm>/eval/summary.json`, written by the eval runner, for final metrics, and
`<arm>/eval/<task>.jsonl` for their standard errors: `report_stats.py`), so `run.py
--mode=report` works on a finished, partly finished or copied experiment directory without
a model. The figure is `report_plot.py`.

The paper's numbers sit beside ours for reference only: they come from a 14B model and
~2T tokens; a CPU-scale run cannot reproduce them, and the report says so in plain words.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from zen_code_jax.config import config_from_dict, model_config_from
from zen_code_jax.experiment.report_phases import report_section
from zen_code_jax.experiment.report_plot import (
    difference_panel,
    fim_panels,
    plot,
    repo_panels,
    repo_x,
)
from zen_code_jax.experiment.report_stats import (
    derived_metrics,
    paired_differences,
    task_estimators,
    task_standard_errors,
)
from zen_code_jax.model.config import param_count
from zen_code_jax.rundir import RunDir, write_text_atomic
from zen_code_jax.tracking import read_scalars

# The report's Table 7 (FIM rate) and Table 8 (repository fine-tuning).
PAPER_TABLE7 = {  # arm: (HumanEval pass@1 %, single-line FIM exact match %)
    "fim0": (86.8, 41.2),
    "fim25": (85.9, 74.3),
    "fim50": (87.2, 82.3),
    "fim75": (84.3, 83.1),
}
PAPER_TABLE8 = {  # arm: (RepoBench, SWE-bench Verified %)
    "base": (0.761, 19.3),
    "repo8k": (0.803, 23.7),
    "repo64k": (0.834, 28.4),
}

SCALE_NOTES = {
    "smoke": (
        "**Scale: smoke.** A few optimizer steps of a tiny model, to check that the pipeline "
        "runs end to end. None of the numbers below mean anything about FIM or repository "
        "training."
    ),
    "cpu": (
        "**Scale: cpu** ({budget}). What this scale can "
        "show: whether an arm learned the FIM format, through the teacher-forced loss of the "
        "masked middle under a FIM prompt (PSM, SPM) compared with the same arm's loss under "
        "a prefix-only prompt, and whether left-to-right ability (held-out bits per byte) "
        "suffers from FIM. What it cannot show: exact match and pass@1. A model this small, "
        "trained for minutes, scores 0 on HumanEval and near 0 on single-line exact match at "
        "every FIM rate (measured on this machine: 0/300 held-out lines for every arm and "
        "prompt), so the Table 7 columns stay at zero here and say nothing about the paper's "
        "finding. Expect the FIM arms' middle loss to drop well below fim0's while staying "
        "above their own prefix-only loss (the format is learned before the suffix is used)."
    ),
    "gpu": (
        "**Scale: gpu** (a ~40M-parameter model on one accelerator). Large enough for "
        "single-line exact match to move with the FIM rate; still far from the paper's 14B "
        "model, so compare the trend across arms, not the absolute numbers."
    ),
    "paper": (
        "**Scale: paper.** The report's model and recipe; numbers are comparable with the "
        "paper's columns."
    ),
}


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _load_arm(path: Path) -> dict[str, Any]:
    """One arm's loss curve (metrics.jsonl), final metrics (eval/summary.json), their
    standard errors (from eval/<task>.jsonl) and config."""
    run_dir = RunDir(path)
    scalars = read_scalars(run_dir.metrics)
    curve = {int(r["step"]): float(r["train/loss"]) for r in scalars if "train/loss" in r}
    padding = [float(r["train/padding"]) for r in scalars if "train/padding" in r]
    config = run_dir.read_config() if run_dir.config_json.exists() else {}
    mode = str(config.get("eval", {}).get("fim_mode", "psm"))
    metrics: dict[str, float] = {}
    se: dict[str, float] = {}
    estimators: dict[str, Any] = {}
    for task, values in run_dir.read_summary().items():  # {task: {metric: value, "step": n}}
        for key, value in values.items():
            if key != "step" and isinstance(value, int | float):
                metrics[f"{task}/{key}"] = float(value)
        records = _read_records(run_dir.records(task))
        eval_cfg = config.get("eval", {})
        for key, value in task_standard_errors(task, records, eval_cfg).items():
            se[f"{task}/{key}"] = value
        for key, est in task_estimators(task, records, eval_cfg).items():
            estimators[f"{task}/{key}"] = est
    metrics.update(derived_metrics(metrics))
    # The main FIM layout's middle loss also under its layout's name, so PSM and SPM columns
    # read the same keys whichever layout eval.fim_mode scored first.
    for store in (metrics, se):
        for key in [k for k in store if k.endswith("/middle_bpb_fim")]:
            store.setdefault(key.replace("/middle_bpb_fim", f"/middle_bpb_{mode}"), store[key])
    for key in [k for k in estimators if k.endswith("/middle_bpb_fim")]:  # one name per metric
        estimators.setdefault(
            key.replace("/middle_bpb_fim", f"/middle_bpb_{mode}"), estimators[key]
        )
        del estimators[key]
    return {
        "curve": sorted(curve.items()),
        "metrics": metrics,
        "se": se,
        "config": config,
        "estimators": estimators,
        "padding": sum(padding) / len(padding) if padding else None,
    }


def _fmt(value: float | None, pct: bool = False, digits: int = 3, se: float | None = None) -> str:
    """A value (in % if pct), with ' ± SE' when its standard error is known."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    scale = 100.0 if pct else 1.0
    text = f"{scale * value:.1f}" if pct else f"{value:.{digits}f}"
    if se is not None and not math.isnan(se):
        text += f" ± {scale * se:.1f}" if pct else f" ± {se:.{digits}f}"
    return text


def _cell(arm: dict[str, Any], key: str, pct: bool = False) -> str:
    return _fmt(arm["metrics"].get(key), pct=pct, se=arm["se"].get(key))


def _paper_cell(value: float | None) -> str:
    return "–" if value is None else str(value)


def _fim_table(arms: list[str], data: dict[str, dict]) -> list[str]:
    head = (
        "| arm | FIM rate | HumanEval pass@1 (ours / paper) | HumanEval-FIM EM, Qwen "
        "convention (ours / paper) | HumanEval-Infilling single-line pass@1, OpenAI "
        "convention | held-out L2R bits/byte | middle loss PSM | middle loss SPM | middle "
        "loss prefix-only | gap prefix-only − FIM | held-out single-line EM |"
    )
    lines = [head, "|" + "---|" * 11]
    for arm in arms:
        d = data[arm]
        rate = d["config"].get("fim", {}).get("rate")
        paper = PAPER_TABLE7.get(arm, (None, None))
        lines.append(
            f"| {arm} | {rate if rate is not None else '–'} "
            f"| {_cell(d, 'humaneval/pass@1', True)} / {_paper_cell(paper[0])} "
            f"| {_cell(d, 'humaneval_fim_qwen/exact_match', True)} / {_paper_cell(paper[1])} "
            f"| {_cell(d, 'humaneval_infilling_openai_single/pass@1', True)} "
            f"| {_cell(d, 'heldout_loss/bits_per_byte')} "
            f"| {_cell(d, 'heldout_fim/single/middle_bpb_psm')} "
            f"| {_cell(d, 'heldout_fim/single/middle_bpb_spm')} "
            f"| {_cell(d, 'heldout_fim/single/middle_bpb_prefix_only')} "
            f"| {_cell(d, 'heldout_fim/single/middle_gap')} "
            f"| {_cell(d, 'heldout_fim/single/exact_match', True)} |"
        )
    lines.append("")
    lines.append(
        "Paper columns: the report's Table 7 (14B model). Percentages for pass@1 and exact "
        "match. HumanEval-FIM EM follows Qwen2.5-Coder (greedy, 64 new tokens, first line "
        "exact match); HumanEval-Infilling pass@1 follows OpenAI (completion run as "
        "generated); docs/eval.md gives both recipes. Middle loss: bits per byte of the "
        "masked held-out line, teacher forced, under a PSM, an SPM and a prefix-only prompt "
        "(lower is better); the gap is prefix-only minus the FIM prompt's (what the suffix "
        "buys). ± is one bootstrap standard error over held-out files, examples or tasks "
        "(2,000 resamples); arms whose difference is within about two of them do not differ "
        "beyond noise."
    )
    return lines


def _repo_source(arm: dict[str, Any]) -> tuple[str, str]:
    """(task, label) of an arm's next-line columns: RepoBench's published data when the
    `repobench` task ran, the offline proxy (`repo_completion`) otherwise."""
    if any(k.startswith("repobench/cross_file_first/") for k in arm["metrics"]):
        return "repobench", "RepoBench (published)"
    return "repo_completion", "offline stdlib proxy"


def _repo_table(arms: list[str], data: dict[str, dict]) -> list[str]:
    head = (
        "| arm | window | next-line EM, cross-file | edit sim., cross-file | EM, in-file "
        "| edit sim., in-file | RepoBench (paper) | SWE-bench Verified (paper) "
        "| held-out bits/byte | next-line metric |"
    )
    lines = [head, "|" + "---|" * 10]
    for arm in arms:
        d = data[arm]
        window = int(repo_x(d["config"])) or None
        paper = PAPER_TABLE8.get(arm, (None, None))
        task, source = _repo_source(d)
        lines.append(
            f"| {arm} | {window or '– (no repo FT)'} "
            f"| {_cell(d, f'{task}/cross_file_first/exact_match', True)} "
            f"| {_cell(d, f'{task}/cross_file_first/edit_similarity')} "
            f"| {_cell(d, f'{task}/in_file/exact_match', True)} "
            f"| {_cell(d, f'{task}/in_file/edit_similarity')} "
            f"| {_paper_cell(paper[0])} | {_paper_cell(paper[1])} "
            f"| {_cell(d, 'heldout_loss/bits_per_byte')} | {source} |"
        )
    lines.append("")
    lines.append(
        "Ours: next-line completion (EM in %, edit similarity in [0, 1]), cross-file context "
        'first or in-file only; the last column says which data: "RepoBench (published)" '
        "is the `repobench` task on RepoBench v1.1 (its exact match and fuzzy edit "
        'similarity), "offline stdlib proxy" is `repo_completion` on held-out '
        "repositories (RepoBench-style, Levenshtein similarity) when no data was given. Paper "
        "columns: the report's Table 8 (14B model, 64K windows, 50B tokens); SWE-bench is not "
        "run by this codebase (it needs the SWE-bench harness and network access). ± is one "
        "bootstrap standard error over examples or files."
    )
    return lines


def baseline_arm(arms: list[str], config: Any) -> str:
    """`report.baseline` when set (it must be one of the arms found), else the first arm."""
    name = str(config.report.get("baseline", "") or "")
    if not name:
        return arms[0]
    if name not in arms:
        raise ValueError(
            f"report.baseline={name!r} is not one of the arms found {arms}; set it to one of "
            "them or to '' (the first arm)."
        )
    return name


def _difference_table(arms: list[str], diffs: dict[str, dict], baseline: str) -> list[str]:
    """Rows: metrics; columns: every other arm's difference from the baseline."""
    others = [a for a in arms if a != baseline]
    keys = sorted({k for a in others for k in diffs[a]})
    if not keys:
        return ["No metric has per-unit records in both arms (nothing to pair)."]
    head = "| metric | units | " + " | ".join(f"{a} − {baseline}" for a in others) + " |"
    lines = [head, "|" + "---|" * (len(others) + 2)]
    for key in keys:
        n = next((diffs[a][key].units for a in others if key in diffs[a]), 0)
        cells = []
        for a in others:
            d = diffs[a].get(key)
            cells.append(
                "–" if d is None else f"{d.value:+.4f} ± {d.se:.4f} [{d.low:+.4f}, {d.high:+.4f}]"
            )
        lines.append(f"| {key} | {n} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Each cell: the arm's metric minus {baseline}'s on the same held-out files, examples "
        "and tasks (units), ± the standard error of that difference and its 95% interval from "
        "a paired bootstrap (2,000 resamples, each drawing one set of units for both arms). "
        "Pairing removes what the arms share (which files are hard), so these intervals are "
        "much narrower than the per-arm ± in the tables above; an interval that excludes 0 is "
        "a difference beyond resampling noise of the evaluation set (not of training seeds). "
        "Rates and exact match are fractions here (0.01 = 1 point)."
    )
    return lines


def _flash_rows(arms: list[str], data: dict[str, dict]) -> list[tuple[str, dict[str, Any]]]:
    """The arms, plus the teacher the distill arms name when it is not one of them (the
    FIM ablation's fim50: its own run directory, from a distill arm's config.json)."""
    rows = [(a, data[a]) for a in arms]
    for a in arms:
        teacher = str(data[a]["config"].get("distill", {}).get("teacher", ""))
        objective = data[a]["config"].get("train", {}).get("objective")
        if objective == "distill" and teacher and not teacher.startswith(("arm:", "hf:")):
            path = Path(teacher)
            path = path.parent.parent if path.parent.name == "checkpoints" else path
            here = path.parent.name == data[a]["config"].get("name") and path.name in arms
            if not here and (path / "config.json").is_file():
                rows.append((f"teacher ({path.parent.name}/{path.name})", _load_arm(path)))
            break
    return rows


def _flash_table(arms: list[str], data: dict[str, dict]) -> list[str]:
    head = (
        "| arm | objective | parameters | held-out L2R bits/byte | middle loss PSM | gap "
        "prefix-only − PSM | held-out single-line EM | ms / decoded token (batch 1) |"
    )
    lines = [head, "|" + "---|" * 8]
    for name, d in _flash_rows(arms, data):
        cfg = d["config"]
        params = param_count(model_config_from(config_from_dict(cfg).model)) if cfg else None
        objective = cfg.get("train", {}).get("objective", "–")
        if objective == "distill":
            dd = cfg.get("distill", {})
            how = f"offline top-{dd.get('top_k')}" if dd.get("logits_dir") else "online"
            objective = f"distill ({how}, α={dd.get('alpha')}, T={dd.get('temperature')})"
        lines.append(
            f"| {name} | {objective} | {f'{params / 1e6:.2f}M' if params else '–'} "
            f"| {_cell(d, 'heldout_loss/bits_per_byte')} "
            f"| {_cell(d, 'heldout_fim/single/middle_bpb_psm')} "
            f"| {_cell(d, 'heldout_fim/single/middle_gap')} "
            f"| {_cell(d, 'heldout_fim/single/exact_match', True)} "
            f"| {_fmt(d['metrics'].get('decode_speed/ms_per_token'), digits=2)} |"
        )
    lines.append("")
    lines.append(
        "Students (scratch, distill, offline) see the same rows (FIM included); the teacher "
        "is the FIM ablation's fim50 arm or one trained here with its settings. Bits per "
        "byte and middle loss: lower is better; the gap is prefix-only minus PSM middle "
        "loss (what the suffix buys). ms / decoded token: greedy, one slot, after warm-up, "
        "on the machine that evaluated the arm (its load unknown to this table). ± is one "
        "bootstrap standard error over held-out files or examples."
    )
    return lines


def _padding_lines(arms: list[str], data: dict[str, dict]) -> list[str]:
    lines = []
    for arm in arms:
        pad, packing = data[arm]["padding"], data[arm]["config"].get("data", {}).get("packing")
        text = "not logged" if pad is None else f"{100 * pad:.2f}% of training-row tokens"
        lines.append(f"- {arm} ({packing or 'first_fit'}): {text}")
    return lines


def _generic_table(arms: list[str], data: dict[str, dict]) -> list[str]:
    keys = sorted({k for arm in arms for k in data[arm]["metrics"]})
    lines = ["| arm | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for arm in arms:
        m = data[arm]["metrics"]
        lines.append(f"| {arm} | " + " | ".join(_fmt(m.get(k), digits=4) for k in keys) + " |")
    return lines


def _budget(config: Any, arm_configs: list[dict[str, Any]]) -> str:
    """'a 7.2M-parameter model, 0.52M tokens per arm', from the configs the arms ran with
    (their config.json holds the resolved step count, e.g. epochs x batches for SFT)."""
    params = param_count(model_config_from(config.model))
    t = dict(config.train)
    ran = [c["train"] for c in arm_configs if "steps" in c.get("train", {})]
    if ran:
        t = ran[0]
    tokens = int(t["steps"]) * int(t["global_batch_size"]) * int(t["seq_len"])
    return f"a {params / 1e6:.1f}M-parameter model, {tokens / 1e6:.2f}M tokens per arm"


# report.tables -> (heading, table builder, figure panels, paper values). Chosen by the
# config, never by the experiment's name.
TABLES = {
    "fim_rate": (
        "Table 7 (FIM rate), ours beside the paper's",
        _fim_table,
        fim_panels,
        PAPER_TABLE7,
    ),
    "repo_ft": (
        "Table 8 (repository fine-tuning), ours beside the paper's",
        _repo_table,
        repo_panels,
        PAPER_TABLE8,
    ),
    "flash": (
        "Zen-Coder-Flash: distilled students beside their teacher",
        _flash_table,
        lambda arms, data, paper: [],
        {},
    ),
}


def write_report(experiment_dir: str | Path, config: Any) -> tuple[Path, Path]:
    """Write report.md and report.png for the arms found under `experiment_dir`."""
    experiment_dir = Path(experiment_dir)
    names = list(config.arms.keys()) or ["main"]
    arms = [a for a in names if (experiment_dir / a).is_dir()]
    if not arms:
        raise FileNotFoundError(
            f"No arm directories under {experiment_dir} (expected {names}). Train first: "
            f"python experiments/run.py --config=... --workdir={experiment_dir.parent}"
        )
    data = {arm: _load_arm(experiment_dir / arm) for arm in arms}
    name = str(config.name)
    scale = str(config.scale)
    budget = _budget(config, [data[a]["config"] for a in arms])
    note = SCALE_NOTES.get(scale, "").replace("{budget}", budget)
    lines = [f"# {name}: ablation report", "", note, ""]
    panels = []
    for table in config.report.tables:
        if table not in TABLES:
            raise ValueError(
                f"Unknown report.tables entry {table!r}; valid tables: {sorted(TABLES)}."
            )
        heading, builder, make_panels, paper = TABLES[table]
        lines += [f"## {heading}", ""] + builder(arms, data)
        panels += make_panels(arms, data, paper)
    lines += ["", "## Every final metric", ""] + _generic_table(arms, data)
    if len(arms) > 1:
        baseline = baseline_arm(arms, config)
        lines += ["", f"## Differences from the baseline ({baseline}), paired bootstrap", ""]
        diffs = paired_differences(arms, {a: data[a]["estimators"] for a in arms}, baseline)
        lines += _difference_table(arms, diffs, baseline)
        panels.append(difference_panel(arms, diffs, baseline))
    lines += ["", "## Packing padding (train/padding, mean over logged steps)", ""]
    lines += _padding_lines(arms, data)
    lines += ["", "## Training", ""]
    for arm in arms:
        curve = data[arm]["curve"]
        last = f"final train loss {curve[-1][1]:.4f} at step {curve[-1][0]}" if curve else "no log"
        missing = "" if data[arm]["metrics"] else " (not evaluated yet)"
        lines.append(f"- {arm}: {last}{missing}")
    phases = report_section(experiment_dir, arms)  # from timings.json; [] when absent
    lines += [""] + phases if phases else []
    lines += ["", "![loss curves and metrics against the ablated setting](report.png)", ""]
    md = experiment_dir / "report.md"
    write_text_atomic(md, "\n".join(lines))
    png = experiment_dir / "report.png"
    plot(png, arms, data, panels)
    return md, png
