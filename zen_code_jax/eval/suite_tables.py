"""The paper's Tables 4, 5 and 6 from a run's summaries, beside the paper's numbers.

Each row names the task and summary metric it shows (`RowSpec`); a cell says what it shows
(`Cell.note`: the task, and for HumanEval-Infilling whether the official file or the
derived tasks gave it) or why it is empty ("not run: <why>"). Our values are scaled to the
paper's units (percent, RepoBench a fraction) and carry the task's own standard errors
(`Task.standard_errors`), on the same scale.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from zen_code_jax.eval import paper
from zen_code_jax.eval.stats import mean_se, per_problem_mean

Summaries = Mapping[str, Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class RowSpec:
    """A paper row and where our number comes from: `task`'s summary `metric` × `scale`."""

    benchmark: str
    task: str
    metric: str
    scale: float = 100.0


@dataclasses.dataclass(frozen=True)
class Cell:
    """One row of a table: ours (None when not run) ± se, the paper's Zen-Code value, and
    the note (the source, or "not run: why")."""

    benchmark: str
    task: str
    metric: str
    ours: float | None
    se: float | None
    paper: float | None
    note: str


@dataclasses.dataclass(frozen=True)
class Table:
    label: str
    title: str
    rows: tuple[Cell, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "title": self.title,
            "paper_model": paper.ZEN,
            "rows": [dataclasses.asdict(c) for c in self.rows],
        }


TABLE4 = (
    RowSpec("HumanEval (pass@1)", "humaneval", "pass@1"),
    RowSpec("HumanEval+ (pass@1)", "humaneval_plus", "plus_pass@1"),
    RowSpec("MBPP (pass@1)", "mbpp", "pass@1"),
    RowSpec("MBPP+ (pass@1)", "mbpp_plus", "plus_pass@1"),
    RowSpec("LiveCodeBench (3-month)", "livecodebench", "pass@1"),
    RowSpec("SWE-bench Verified", "swebench", "resolved"),
    RowSpec("RepoBench (retrieval)", "repobench", "exact_match", scale=1.0),
)
# Table 5 row -> the MultiPL-E language codes in task ids (MultiPL-E/<code>/<name>).
LANGUAGES = {
    "Python": ("py", "python"),
    "JavaScript": ("js", "javascript"),
    "TypeScript": ("ts",),
    "Java": ("java",),
    "C++": ("cpp",),
    "Rust": ("rs",),
    "Go": ("go",),
    "Ruby": ("rb",),
    "PHP": ("php",),
    "Shell": ("sh",),
}
# Table 6 row -> (official-file task, its metric), (derived task, its metric).
TABLE6 = {
    "Single-line (exact match)": (
        ("humaneval_infilling_openai_single", "exact_match"),
        ("humaneval_infill_single", "exact_match"),
    ),
    "Multi-line (exact match)": (
        ("humaneval_infilling_openai_multi", "exact_match"),
        ("humaneval_infill_multi", "exact_match"),
    ),
    "Single-line (functional)": (
        ("humaneval_infilling_openai_single", "pass@1"),
        ("humaneval_infill_single", "functional"),
    ),
    "Multi-line (functional)": (
        ("humaneval_infilling_openai_multi", "pass@1"),
        ("humaneval_infill_multi", "functional"),
    ),
}
# Rows the paper does not print, for the two official files with no derived version.
TABLE6_EXTRA = tuple(
    RowSpec(f"{title} ({what})", f"humaneval_infilling_openai_{task}", metric)
    for title, task in (("Random-span", "random_span"), ("Random-span-light", "random_span_light"))
    for what, metric in (("exact match", "exact_match"), ("functional", "pass@1"))
)
SWEBENCH_NOTE = (
    "predictions in eval/swebench.jsonl; resolution needs the official SWE-bench harness "
    "(Docker; docs/eval.md), not run here"
)


class _Inputs:
    """What every cell reads: summaries, standard errors, records, skip reasons."""

    def __init__(self, summaries: Summaries, ses: Summaries, records: Mapping, skipped: Mapping):
        self.summaries, self.ses, self.records, self.skipped = summaries, ses, records, skipped

    def why_not(self, task: str) -> str:
        return "not run: " + self.skipped.get(task, f"{task} was not scored")

    def cell(self, table: str, spec: RowSpec, note: str = "") -> Cell:
        value = paper.paper_value(table, spec.benchmark)
        base = Cell(spec.benchmark, spec.task, spec.metric, None, None, value, "")
        if spec.task not in self.summaries:
            return dataclasses.replace(base, note=self.why_not(spec.task))
        if spec.task == "swebench":
            return dataclasses.replace(base, note=SWEBENCH_NOTE)
        metrics = self.summaries[spec.task]
        if spec.metric not in metrics:
            return dataclasses.replace(
                base, note=f"not run: {spec.task} reports no {spec.metric} metric"
            )
        se = self.ses.get(spec.task, {}).get(spec.metric)
        return dataclasses.replace(
            base,
            ours=float(metrics[spec.metric]) * spec.scale,
            se=None if se is None or math.isnan(se) else float(se) * spec.scale,
            note=note or f"{spec.task} {spec.metric}",
        )


def _language_code(record: Mapping[str, Any]) -> str:
    """The MultiPL-E code of a multipl_e record (task ids are MultiPL-E/<code>/<name>)."""
    parts = str(record.get("task_id", "")).split("/")
    return parts[1] if len(parts) > 2 else ""


def _language_cells(inp: _Inputs) -> list[Cell]:
    """Table 5: pass@1 per language from multipl_e's records (Python falls back to
    HumanEval, the paper's Python number)."""
    recs = inp.records.get("multipl_e", [])
    out = []
    for lang, codes in LANGUAGES.items():
        value = paper.paper_value(paper.MULTILINGUAL, lang)
        mine = [r for r in recs if _language_code(r) in codes]
        if mine:
            means = per_problem_mean(mine, "passed")
            se = mean_se(means)
            out.append(
                Cell(
                    lang,
                    "multipl_e",
                    "pass@1",
                    100.0 * sum(means) / len(means),
                    None if math.isnan(se) else 100.0 * se,
                    value,
                    f"multipl_e {codes[0]} ({len(means)} problem{'s' if len(means) != 1 else ''})",
                )
            )
        elif lang == "Python" and "humaneval" in inp.summaries:
            spec = RowSpec(lang, "humaneval", "pass@1")
            out.append(inp.cell(paper.MULTILINGUAL, spec, note="humaneval pass@1 (Python)"))
        elif "multipl_e" not in inp.summaries:
            out.append(
                Cell(lang, "multipl_e", "pass@1", None, None, value, inp.why_not("multipl_e"))
            )
        else:
            note = f"not run: no {'/'.join(codes)} problems in the MultiPL-E file scored"
            out.append(Cell(lang, "multipl_e", "pass@1", None, None, value, note))
    return out


def _average_cell(inp: _Inputs, languages: Sequence[Cell]) -> Cell:
    """Table 4's MultiPL-E row: the mean over the languages scored (the paper: 12)."""
    name = "MultiPL-E (avg 12 langs)"
    value = paper.paper_value(paper.BENCHMARKS, name)
    ran = [c for c in languages if c.ours is not None and c.task == "multipl_e"]
    if not ran:
        return Cell(name, "multipl_e", "pass@1", None, None, value, inp.why_not("multipl_e"))
    ses = [c.se for c in ran if c.se is not None]
    se = math.sqrt(sum(s * s for s in ses)) / len(ran) if len(ses) == len(ran) else None
    ours = sum(c.ours for c in ran if c.ours is not None) / len(ran)
    note = f"multipl_e mean over {len(ran)} languages ({', '.join(c.benchmark for c in ran)})"
    return Cell(name, "multipl_e", "pass@1", ours, se, value, note)


def _fim_cells(inp: _Inputs) -> list[Cell]:
    """Table 6: the official-file task when it ran, else the derived one, labelled so."""
    out = []
    for bench, ((official, om), (derived, dm)) in TABLE6.items():
        if official in inp.summaries:
            spec, note = RowSpec(bench, official, om), f"{official} {om} (official file)"
        elif derived in inp.summaries:
            spec, note = RowSpec(bench, derived, dm), f"{derived} {dm} (derived from HumanEval)"
        else:
            value = paper.paper_value(paper.FIM, bench)
            why = f"{inp.why_not(official)}; {derived}: {inp.why_not(derived)[9:]}"
            out.append(Cell(bench, official, om, None, None, value, why))
            continue
        out.append(inp.cell(paper.FIM, spec, note))
    out.extend(inp.cell(paper.FIM, s, f"{s.task} {s.metric} (official file)") for s in TABLE6_EXTRA)
    return out


def build_tables(
    summaries: Summaries,
    ses: Summaries,
    records: Mapping[str, list[dict[str, Any]]],
    skipped: Mapping[str, str],
    eval_cfg: Mapping[str, Any] | None = None,
) -> list[Table]:
    """Tables 4, 5 and 6 from the scored tasks' summaries, SEs and records."""
    inp = _Inputs(summaries, ses, records, skipped)
    languages = _language_cells(inp)
    t4 = [inp.cell(paper.BENCHMARKS, s) for s in TABLE4] + [_average_cell(inp, languages)]
    return [
        Table(paper.BENCHMARKS, "Table 4: code generation", tuple(t4)),
        Table(paper.MULTILINGUAL, "Table 5: MultiPL-E pass@1 by language", tuple(languages)),
        Table(paper.FIM, "Table 6: HumanEval-Infilling", tuple(_fim_cells(inp))),
    ]


def _fmt(x: float | None, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def render_markdown(tables: Sequence[Table], doc: Mapping[str, Any]) -> str:
    """The tables in the paper's layout: our column (± SE), the paper's Zen-Code column
    and where each of our numbers comes from (or why it is missing)."""
    lines = [
        f"# The paper's tables for {doc['checkpoint']} (step {doc['step']})",
        "",
        f"Suite `{doc['suite']}`. Ours: this checkpoint, ± one standard error (the task's "
        f"own). Paper: the whitepaper's {paper.ZEN} column.",
        "",
    ]
    for t in tables:
        lines += [f"## {t.title} (`{t.label}`)", ""]
        first = {paper.MULTILINGUAL: "Language", paper.FIM: "Metric"}.get(t.label, "Benchmark")
        lines += [f"| {first} | Ours | Paper | Source |"]
        lines += ["|---|---:|---:|---|"]
        for c in t.rows:
            digits = 3 if (c.paper is not None and c.paper < 1) else 1
            ours = "not run" if c.ours is None else _fmt(c.ours, digits)
            if c.se is not None:
                ours += f" ± {_fmt(c.se, digits)}"
            note = c.note.replace("|", "/")
            lines.append(f"| {c.benchmark} | {ours} | {_fmt(c.paper, digits)} | {note} |")
        lines.append("")
    if doc.get("skipped"):
        lines += ["## Not run", ""]
        lines += [f"- `{name}`: {why}" for name, why in doc["skipped"].items()]
        lines.append("")
    return "\n".join(lines)


def render_plot(tables: Sequence[Table], path: Path) -> None:
    """Bars of ours (with SE error bars) beside the paper's per benchmark, one panel per
    table; fractions (RepoBench) are shown × 100 so every panel is in percent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(tables), 1, figsize=(11, 4 * len(tables)), squeeze=False)
    for ax, t in zip(axes[:, 0], tables):
        scale = [100.0 if (c.paper is not None and c.paper < 1) else 1.0 for c in t.rows]
        x = list(range(len(t.rows)))
        ours = [0.0 if c.ours is None else c.ours * s for c, s in zip(t.rows, scale)]
        err = [0.0 if c.se is None else c.se * s for c, s in zip(t.rows, scale)]
        ref = [0.0 if c.paper is None else c.paper * s for c, s in zip(t.rows, scale)]
        ax.bar([i - 0.2 for i in x], ours, 0.4, yerr=err, capsize=3, label="ours")
        ax.bar([i + 0.2 for i in x], ref, 0.4, label=f"paper {paper.ZEN}")
        for i, c in enumerate(t.rows):
            if c.ours is None:
                ax.text(i - 0.2, 1, "not run", rotation=90, ha="center", va="bottom", fontsize=7)
        labels = [c.benchmark + (" ×100" if s != 1.0 else "") for c, s in zip(t.rows, scale)]
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("%")
        ax.set_title(f"{t.title} ({t.label})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
