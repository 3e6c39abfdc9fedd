"""The ablation report: report.md (a table shaped like the report's own) and report.png.

Everything is rebuilt from the arms' logs (`<arm>/metrics.jsonl` for loss curves and
`<arm>/eval/summary.json`, written by the eval runner, for final metrics), so `run.py --mode=report` works on a
finished, partly finished or copied experiment directory without a model.

The paper's numbers sit beside ours for reference only: they come from a 14B model and
~2T tokens; a CPU-scale run cannot reproduce them, and the report says so in plain words.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from zen_code_jax.config import model_config_from
from zen_code_jax.model.config import param_count
from zen_code_jax.rundir import RunDir
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


def _load_arm(path: Path) -> dict[str, Any]:
    """One arm's loss curve (metrics.jsonl), final metrics (eval/summary.json) and config."""
    run_dir = RunDir(path)
    curve = {
        int(r["step"]): float(r["train/loss"])
        for r in read_scalars(run_dir.metrics)
        if "train/loss" in r
    }
    metrics: dict[str, float] = {}
    for task, values in run_dir.read_summary().items():  # {task: {metric: value, "step": n}}
        for key, value in values.items():
            if key != "step" and isinstance(value, int | float):
                metrics[f"{task}/{key}"] = float(value)
    config = run_dir.read_config() if run_dir.config_json.exists() else {}
    return {"curve": sorted(curve.items()), "metrics": metrics, "config": config}


def _find(metrics: dict[str, float], task: str, *names: str) -> float | None:
    """The first metric `task/name` present (tasks may name the same thing differently)."""
    for name in names:
        key = f"{task}/{name}"
        if key in metrics:
            return float(metrics[key])
    return None


def _fmt(value: float | None, pct: bool = False, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f}" if pct else f"{value:.{digits}f}"


def _fim_table(arms: list[str], data: dict[str, dict]) -> list[str]:
    head = (
        "| arm | FIM rate | HumanEval pass@1 (ours / paper) | FIM EM single-line, "
        "HumanEval-Infilling (ours / paper) | held-out L2R bits/byte | middle loss PSM | "
        "middle loss SPM | middle loss prefix-only | held-out single-line EM |"
    )
    lines = [head, "|" + "---|" * 9]
    for arm in arms:
        m = data[arm]["metrics"]
        rate = data[arm]["config"].get("fim", {}).get("rate")
        paper = PAPER_TABLE7.get(arm, (None, None))
        he = _find(m, "humaneval", "pass@1")
        em = _find(m, "humaneval_infill_single", "exact_match")
        mode = data[arm]["config"].get("eval", {}).get("fim_mode", "psm")
        other = "spm" if mode == "psm" else "psm"
        by_mode = {
            mode: _find(m, "heldout_fim", "single/middle_bpb_fim"),
            other: _find(m, "heldout_fim", f"single/middle_bpb_{other}"),
        }
        lines.append(
            f"| {arm} | {rate if rate is not None else '–'} "
            f"| {_fmt(he, pct=True)} / {paper[0] if paper[0] is not None else '–'} "
            f"| {_fmt(em, pct=True)} / {paper[1] if paper[1] is not None else '–'} "
            f"| {_fmt(_find(m, 'heldout_loss', 'bits_per_byte'))} "
            f"| {_fmt(by_mode['psm'])} | {_fmt(by_mode['spm'])} "
            f"| {_fmt(_find(m, 'heldout_fim', 'single/middle_bpb_prefix_only'))} "
            f"| {_fmt(_find(m, 'heldout_fim', 'single/exact_match'), pct=True)} |"
        )
    lines.append("")
    lines.append(
        "Paper columns: the report's Table 7 (14B model). Percentages for pass@1 and exact "
        "match. Middle loss: bits per byte of the masked held-out line, teacher forced, "
        "under a PSM, an SPM and a prefix-only prompt (lower is better)."
    )
    return lines


def _repo_table(arms: list[str], data: dict[str, dict]) -> list[str]:
    head = (
        "| arm | window | next-line EM, cross-file | edit sim., cross-file | EM, in-file "
        "| edit sim., in-file | RepoBench (paper) | SWE-bench Verified (paper) "
        "| held-out bits/byte |"
    )
    lines = [head, "|" + "---|" * 9]
    for arm in arms:
        m = data[arm]["metrics"]
        cfg = data[arm]["config"]
        window = (
            cfg.get("train", {}).get("seq_len")
            if cfg.get("data", {}).get("mode") == "repo"
            else None
        )
        paper = PAPER_TABLE8.get(arm, (None, None))
        lines.append(
            f"| {arm} | {window or '– (no repo FT)'} "
            f"| {_fmt(_find(m, 'repo_completion', 'cross_file_first/exact_match'), pct=True)} "
            f"| {_fmt(_find(m, 'repo_completion', 'cross_file_first/edit_similarity'))} "
            f"| {_fmt(_find(m, 'repo_completion', 'in_file/exact_match'), pct=True)} "
            f"| {_fmt(_find(m, 'repo_completion', 'in_file/edit_similarity'))} "
            f"| {paper[0] if paper[0] is not None else '–'} "
            f"| {paper[1] if paper[1] is not None else '–'} "
            f"| {_fmt(_find(m, 'heldout_loss', 'bits_per_byte'))} |"
        )
    lines.append("")
    lines.append(
        "Ours: RepoBench-style next-line completion on held-out repositories (EM in %, edit "
        "similarity in [0, 1]), with cross-file context first or in-file context only. Paper "
        "columns: the report's Table 8 (14B model, 64K windows, 50B tokens); SWE-bench is not "
        "run by this codebase (it needs the SWE-bench harness and network access)."
    )
    return lines


def _generic_table(arms: list[str], data: dict[str, dict]) -> list[str]:
    keys = sorted({k for arm in arms for k in data[arm]["metrics"]})
    lines = ["| arm | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for arm in arms:
        m = data[arm]["metrics"]
        lines.append(f"| {arm} | " + " | ".join(_fmt(m.get(k), digits=4) for k in keys) + " |")
    return lines


def _plot(path: Path, arms: list[str], data: dict[str, dict], bar_keys: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
    for arm in arms:
        curve = data[arm]["curve"]
        if curve:
            ax1.plot([s for s, _ in curve], [v for _, v in curve], label=arm)
    ax1.set_xlabel("step")
    ax1.set_ylabel("train loss (nats/token)")
    ax1.set_title("Training loss")
    ax1.legend()
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        values = [data[arm]["metrics"].get(k, float("nan")) for k in bar_keys]
        ax2.bar([j + i * width for j in range(len(bar_keys))], values, width, label=arm)
    ax2.set_xticks([j + 0.4 - width / 2 for j in range(len(bar_keys))])
    ax2.set_xticklabels(bar_keys, fontsize=7, rotation=30, ha="right")
    ax2.set_title("Final metrics")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


# report.tables -> (heading, table builder). Chosen by the config, never by the name.
TABLES = {
    "fim_rate": ("Table 7 (FIM rate), ours beside the paper's", _fim_table),
    "repo_ft": ("Table 8 (repository fine-tuning), ours beside the paper's", _repo_table),
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
    for table in config.report.tables:
        if table not in TABLES:
            raise ValueError(
                f"Unknown report.tables entry {table!r}; valid tables: {sorted(TABLES)}."
            )
        heading, builder = TABLES[table]
        lines += [f"## {heading}", ""] + builder(arms, data)
    lines += ["", "## Every final metric", ""] + _generic_table(arms, data)
    lines += ["", "## Training", ""]
    for arm in arms:
        curve = data[arm]["curve"]
        last = f"final train loss {curve[-1][1]:.4f} at step {curve[-1][0]}" if curve else "no log"
        missing = "" if data[arm]["metrics"] else " (not evaluated yet)"
        lines.append(f"- {arm}: {last}{missing}")
    lines += ["", "![loss curves and metrics](report.png)", ""]
    md = experiment_dir / "report.md"
    md.write_text("\n".join(lines), encoding="utf-8")
    all_keys = sorted({k for a in arms for k in data[a]["metrics"]})
    wanted = ("loss", "bits", "bpb", "exact", "pass", "edit")
    preferred = [k for k in all_keys if any(w in k for w in wanted) and "seconds" not in k]
    bar_keys = (preferred or all_keys)[:8]
    png = experiment_dir / "report.png"
    _plot(png, arms, data, bar_keys)
    return md, png
