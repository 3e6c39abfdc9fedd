"""The tables of `experiment.phases`' record: the run's closing table and report.md's
"Wall time per phase" section (arms as columns, phases as rows, seconds).

Per-task evaluation seconds come from each arm's `eval/summary.json` (`eval_seconds`) and
tokenizer training from the prepared corpus's `manifest.json`, where those facts live.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from zen_code_jax.experiment.phases import TIMINGS_JSON, ArmPhases, Invocation, Timings
from zen_code_jax.rundir import RunDir


def _tokenizer_s(p: ArmPhases) -> float | None:
    """Tokenizer training seconds from the corpus manifest, when this arm built it."""
    if not p.corpus_built or not p.corpus_dir:
        return None
    manifest = Path(p.corpus_dir) / "manifest.json"
    try:
        value = json.loads(manifest.read_text(encoding="utf-8"))["timings"]["tokenizer_s"]
    except (OSError, KeyError, ValueError, TypeError):
        return None
    return float(value)


def _task_seconds(run_dir: Path) -> dict[str, float]:
    """{task: eval_seconds} from the arm's eval/summary.json (the one place they live)."""
    out = {}
    for task, values in RunDir(run_dir).read_summary().items():
        if isinstance(values.get("eval_seconds"), int | float):
            out[task] = float(values["eval_seconds"])
    return out


Row = tuple[str, list[float | None]]


def phase_rows(
    arms: Mapping[str, ArmPhases], experiment_dir: str | Path, *, with_tasks: bool = True
) -> list[Row]:
    """The table's rows: (label, one value per arm, then their sum; None = no value)."""
    names = list(arms)
    tasks: dict[str, dict[str, float]] = {}
    if with_tasks:
        tasks = {a: _task_seconds(Path(experiment_dir) / a) for a in names}
    task_names = sorted({t for a in names for t in tasks.get(a, {})})

    def row(label: str, values: list[float | None]) -> Row:
        known = [v for v in values if v is not None]
        return label, values + [sum(known) if known else None]

    def per_arm(field: str) -> Row:
        return [getattr(arms[a], field) for a in names]

    rows = [
        row("corpus preparation", per_arm("prepare_s")),
        row("  of which tokenizer training", [_tokenizer_s(arms[a]) for a in names]),
        row("set-up (data, state, hooks)", per_arm("setup_s")),
        row("compile (first train step)", per_arm("compile_s")),
        row("training (later steps)", per_arm("train_s")),
        row("checkpoint saves", per_arm("checkpoint_s")),
        row("periodic held-out loss", per_arm("heldout_s")),
        row("checkpoint wait, close", per_arm("checkpoint_wait_s")),
        row("evaluation", per_arm("eval_s")),
    ]
    for t in task_names:
        rows.append(row(f"  {t}", [tasks[a].get(t) for a in names]))
    if task_names:
        other = []
        for a in names:
            spent = sum(tasks[a].values())
            rest = arms[a].eval_s - spent if tasks[a] and arms[a].evaluated else None
            # Negative only when summary.json holds a later, separate evaluation.
            other.append(rest if rest is not None and rest >= 0 else None)
        rows.append(row("  other (engine, summaries)", other))
    rows.append(row("arm total", [arms[a].total_s() for a in names]))
    rows.append(row("  jax compilation (inside the rows above)", per_arm("jax_compile_s")))
    rows.append(row("steps run", [float(arms[a].steps) for a in names]))
    return rows


def _cell(v: float | None, label: str) -> str:
    if v is None:
        return "–"
    return f"{v:.0f}" if label == "steps run" else f"{v:.1f}"


def render_markdown(rows: Sequence[Row], arms: Sequence[str]) -> list[str]:
    lines = ["| phase | " + " | ".join(arms) + " | all arms |"]
    lines.append("|---|" + "---:|" * (len(arms) + 1))
    for label, values in rows:
        shown = label.strip() if not label.startswith("  ") else "↳ " + label.strip()
        lines.append(f"| {shown} | " + " | ".join(_cell(v, label) for v in values) + " |")
    return lines


def render_text(rows: Sequence[Row], arms: Sequence[str]) -> list[str]:
    width = max(len(label) for label, _ in rows)
    cols = [max(8, len(a)) for a in [*arms, "all arms"]]
    head = " " * width + "  " + "  ".join(a.rjust(w) for a, w in zip([*arms, "all arms"], cols))
    out = [head]
    for label, values in rows:
        cells = "  ".join(_cell(v, label).rjust(w) for v, w in zip(values, cols))
        out.append(f"{label.ljust(width)}  {cells}")
    return out


def report_section(experiment_dir: str | Path, arms: Sequence[str]) -> list[str]:
    """report.md's "Wall time per phase" section from timings.json ([] when absent).

    Only commands that ran arms count, so `--mode=report` rebuilds the same report; the
    report's own seconds (written after this table) are in timings.json and the run's
    last lines."""
    try:
        timings = Timings.read(Path(experiment_dir) / TIMINGS_JSON)
    except ValueError as e:
        return ["## Wall time per phase (seconds)", "", f"Not shown: {e}"]
    ran = [i for i in timings.invocations if i.arms]
    if not ran:
        return []
    phases, startup = timings.combined(arms)
    rows = phase_rows(phases, experiment_dir)
    total = startup + sum(p.total_s() for p in phases.values())
    lines = ["## Wall time per phase (seconds)", ""]
    lines += render_markdown(rows, list(arms))
    # Only what is final once the arms are done: report.md is written before the command
    # finishes (its total and end load come after), and a rebuild must reproduce it.
    loads = ", ".join(f"{i.load_start:.1f}" for i in ran)
    lines += [
        "",
        f"Start-up (imports, config, plan) {startup:.1f} s; total {total:.1f} s over "
        f"{len(ran)} command(s) that ran arms, on {ran[-1].cpus} CPU(s) with 1-minute load "
        f"{loads} at the start. Evaluation per task is `eval_seconds` of each arm's "
        "eval/summary.json. A resumed or repeated command adds its preparation, set-up, "
        "compile and training seconds; evaluation is the newest. Every command, the report "
        "phase included, is in timings.json (docs/experiments.md).",
    ]
    return lines


def command_table(inv: Invocation, experiment_dir: str | Path) -> list[str]:
    """One command's table (its own arms, start-up, report, total), printed at its end."""
    arms = list(inv.arms)
    lines = ["Wall time per phase (seconds):"]
    if arms:
        lines += render_text(phase_rows(inv.arms, experiment_dir), arms)
    unattributed = inv.total_s - inv.attributed_s()
    lines.append(
        f"start-up {inv.startup_s:.1f}, report {inv.report_s:.1f}, not in a phase "
        f"{unattributed:.1f}, total {inv.total_s:.1f} "
        f"(load {inv.load_start:.1f}→{inv.load_end:.1f} on {inv.cpus} CPUs); "
        f"{Path(experiment_dir) / TIMINGS_JSON}"
    )
    return lines
