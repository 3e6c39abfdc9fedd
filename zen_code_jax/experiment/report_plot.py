"""report.png: what the report's tables are about, as lines against the ablated setting.

One panel of training-loss curves (EMA-smoothed, raw faint behind), then per table in
`config.report.tables` its panels: each metric against the FIM rate (Table 7) or the
repository window (Table 8) as lines with standard-error bars, the paper's values on a
second y axis (a 14B model's percentages beside a 7M model's near-zero ones would
otherwise flatten ours), and for Table 7 the prefix-only minus FIM middle-loss gap per arm,
the one signal the cpu scale has.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from zen_code_jax.experiment.report_stats import ema  # noqa: E402

Series = tuple[str, str, float]  # (metric key, label, scale)


def fim_x(cfg: dict[str, Any]) -> float | None:
    rate = cfg.get("fim", {}).get("rate")
    return None if rate is None else 100.0 * float(rate)


def repo_x(cfg: dict[str, Any]) -> float:
    """The repository window (tokens) an arm fine-tuned on; 0 for no repository FT."""
    if cfg.get("data", {}).get("mode") == "repo":
        return float(cfg.get("train", {}).get("seq_len", 0))
    return 0.0


def _lines(ax: Any, xs: dict[str, float], data: dict[str, dict], series: list[Series]) -> bool:
    """Each metric as a line over the arms (sorted by x) with ±1 SE bars; False if none."""
    drawn = False
    arms = sorted(xs, key=lambda a: xs[a])
    for key, label, scale in series:
        pts = [
            (xs[a], data[a]["metrics"][key], data[a]["se"].get(key))
            for a in arms
            if key in data[a]["metrics"]
        ]
        if not pts:
            continue
        err = [scale * e if e is not None and not math.isnan(e) else 0.0 for _, _, e in pts]
        ax.errorbar(
            [p[0] for p in pts],
            [scale * p[1] for p in pts],
            yerr=err,
            marker="o",
            capsize=3,
            label=label,
        )
        drawn = True
    return drawn


def _paper(ax: Any, xs: dict[str, float], paper: dict[str, tuple], labels: list[str], unit: str):
    """The paper's columns on a second y axis, dashed."""
    arms = sorted((a for a in xs if a in paper), key=lambda a: xs[a])
    if not arms:
        return
    twin = ax.twinx()
    for j, label in enumerate(labels):
        twin.plot(
            [xs[a] for a in arms],
            [paper[a][j] for a in arms],
            ls="--",
            marker="s",
            color=f"C{5 + j}",
            alpha=0.8,
            label=f"paper: {label}",
        )
    twin.set_ylabel(f"paper (14B model), {unit}")
    twin.legend(loc="lower right", fontsize=7)


def _loss_panel(ax: Any, arms: list[str], data: dict[str, dict]) -> None:
    for i, arm in enumerate(arms):
        curve = data[arm]["curve"]
        if not curve:
            continue
        steps, vals = [s for s, _ in curve], [v for _, v in curve]
        ax.plot(steps, vals, color=f"C{i}", alpha=0.2, lw=0.8)
        ax.plot(steps, ema(vals), color=f"C{i}", label=f"{arm} (EMA)")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats/token)")
    ax.set_title("Training loss (EMA, raw faint)")
    ax.legend(fontsize=7)


def _finish(
    ax: Any,
    xs: dict[str, float],
    xlabel: str,
    ylabel: str,
    title: str,
    drawn: bool,
    ticklabels: dict[float, str] | None = None,
) -> None:
    ticks = sorted(set(xs.values()))
    ax.set_xticks(ticks)
    if ticklabels:
        ax.set_xticklabels([ticklabels[t] for t in ticks], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if drawn:
        ax.legend(fontsize=7, loc="upper left")
    else:
        ax.text(0.5, 0.5, "not evaluated", ha="center", transform=ax.transAxes)


def fim_panels(arms: list[str], data: dict[str, dict], paper: dict) -> list[Callable]:
    xs = {a: fim_x(data[a]["config"]) for a in arms}
    xs = {a: (x if x is not None else float(i)) for i, (a, x) in enumerate(xs.items())}
    label = "FIM rate (%)"

    def bpb(ax):
        series = [("heldout_loss/bits_per_byte", "held-out L2R", 1.0)]
        for name, key in (("PSM", "psm"), ("SPM", "spm")):
            series.append((f"heldout_fim/single/middle_bpb_{key}", f"middle, {name} prompt", 1.0))
        series.append(("heldout_fim/single/middle_bpb_prefix_only", "middle, prefix-only", 1.0))
        _finish(
            ax,
            xs,
            label,
            "bits per byte (lower is better)",
            "Held-out bits/byte vs FIM rate (±1 SE)",
            _lines(ax, xs, data, series),
        )

    def gap(ax):
        series = [(f"heldout_fim/{k}/middle_gap", f"{k}-line", 1.0) for k in ("single", "multi")]
        drawn = _lines(ax, xs, data, series)
        ax.axhline(0.0, color="grey", lw=0.8)
        _finish(
            ax,
            xs,
            label,
            "prefix-only − FIM middle loss (bits/byte)",
            "What the suffix buys: middle-loss gap per arm (±1 SE)",
            drawn,
        )

    def acc(ax):
        series = [
            ("humaneval/pass@1", "HumanEval pass@1", 100.0),
            ("humaneval_fim_qwen/exact_match", "HumanEval-FIM EM (Qwen)", 100.0),
            (
                "humaneval_infilling_openai_single/pass@1",
                "HumanEval-Infilling single pass@1 (OpenAI)",
                100.0,
            ),
            ("heldout_fim/single/exact_match", "held-out single-line EM", 100.0),
        ]
        drawn = _lines(ax, xs, data, series)
        _finish(ax, xs, label, "ours, %", "Table 7 metrics vs FIM rate (±1 SE)", drawn)
        _paper(ax, xs, paper, ["HumanEval pass@1", "single-line FIM EM"], "%")

    return [bpb, gap, acc]


def repo_panels(arms: list[str], data: dict[str, dict], paper: dict) -> list[Callable]:
    # Windows grow by factors of 8 (8K, 64K): evenly spaced ordinal positions, labelled with
    # the arm and its window, keep the short-window arm from sitting on top of the base.
    windows = {a: repo_x(data[a]["config"]) for a in arms}
    order = sorted(arms, key=lambda a: windows[a])
    xs = {a: float(i) for i, a in enumerate(order)}
    names = {xs[a]: f"{a}\n({int(windows[a]) or 'no repo FT'})" for a in order}
    label = "arm (repository window, tokens)"

    def em(ax):
        series = [
            (f"repo_completion/{s}/exact_match", f"next-line EM, {n}", 100.0)
            for s, n in (("cross_file_first", "cross-file"), ("in_file", "in-file"))
        ]
        drawn = _lines(ax, xs, data, series)
        _finish(ax, xs, label, "ours, %", "Table 8 metrics vs window (±1 SE)", drawn, names)
        _paper(
            ax,
            xs,
            {a: (100 * p[0], p[1]) for a, p in paper.items()},
            ["RepoBench (×100)", "SWE-bench Verified"],
            "%",
        )

    def es(ax):
        series = [
            (f"repo_completion/{s}/edit_similarity", f"edit sim., {n}", 1.0)
            for s, n in (("cross_file_first", "cross-file"), ("in_file", "in-file"))
        ]
        _finish(
            ax,
            xs,
            label,
            "edit similarity",
            "Next-line edit similarity (±1 SE)",
            _lines(ax, xs, data, series),
            names,
        )

    def bpb(ax):
        series = [("heldout_loss/bits_per_byte", "held-out L2R", 1.0)]
        _finish(
            ax,
            xs,
            label,
            "bits per byte",
            "Held-out bits/byte vs window (±1 SE)",
            _lines(ax, xs, data, series),
            names,
        )

    return [em, es, bpb]


def difference_panel(arms: list[str], diffs: dict[str, dict], baseline: str) -> Callable:
    """A panel of every other arm's paired difference from the baseline, with its 95%
    interval, for the loss-like metrics (bits/byte, loss, gap; all metrics when none)."""
    others = [a for a in arms if a != baseline]
    keys = sorted({k for a in others for k in diffs.get(a, {})})
    lossy = [k for k in keys if "bits_per_byte" in k or "middle_bpb" in k or "middle_gap" in k]
    keys = (lossy or keys)[:10]

    def panel(ax: Any) -> None:
        if not keys:
            ax.text(0.5, 0.5, "nothing to pair", ha="center", transform=ax.transAxes)
            return
        width = 0.8 / max(1, len(others))
        for i, arm in enumerate(others):
            pts = [(j, diffs[arm][k]) for j, k in enumerate(keys) if k in diffs[arm]]
            ys = [j - 0.4 + width * (i + 0.5) for j, _ in pts]
            vals = [d.value for _, d in pts]
            err = [[d.value - d.low for _, d in pts], [d.high - d.value for _, d in pts]]
            ax.errorbar(vals, ys, xerr=err, fmt="o", capsize=3, color=f"C{i + 1}", label=arm)
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels(keys, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"arm − {baseline} (95% paired-bootstrap interval)")
        ax.set_title(f"Differences from {baseline}, paired over the same units", fontsize=10)
        ax.legend(fontsize=7)

    return panel


def plot(path: Path, arms: list[str], data: dict[str, dict], panels: list[Callable]) -> None:
    """The loss panel, then `panels`, two per row; written atomically."""
    n = 1 + len(panels)
    rows = (n + 1) // 2
    fig, axes = plt.subplots(rows, 2 if n > 1 else 1, figsize=(13, 4.6 * rows), squeeze=False)
    flat = list(axes.flat)
    _loss_panel(flat[0], arms, data)
    for ax, panel in zip(flat[1:], panels):
        panel(ax)
    for ax in flat[n:]:
        ax.axis("off")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
