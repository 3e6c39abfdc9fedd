"""report.md / report.png from arm logs alone (no training): the Table 7 shape with the
paper's numbers beside ours, and a scale note whose budget comes from the config."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from zen_code_jax.experiment.report import write_report

ROOT = Path(__file__).resolve().parents[1]


def fim_config(arg: str):
    spec = importlib.util.spec_from_file_location(
        "fim_ablation", ROOT / "experiments/fim_ablation.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def write_arm(exp: Path, arm: str, rate: float, bpb: float, psm: float) -> None:
    run = exp / arm
    (run / "eval").mkdir(parents=True)
    (run / "config.json").write_text(
        json.dumps({"fim": {"rate": rate}, "eval": {"fim_mode": "psm"}})
    )
    with (run / "metrics.jsonl").open("w") as f:
        for step in range(1, 4):
            f.write(json.dumps({"step": step, "train/loss": 5.0 - step * rate}) + "\n")
    summary = {
        "heldout_loss": {"step": 3, "bits_per_byte": bpb},
        "heldout_fim": {
            "step": 3,
            "single/middle_bpb_fim": psm,
            "single/middle_bpb_spm": psm - 0.01,
            "single/middle_bpb_prefix_only": 2.4,
            "single/exact_match": 0.0,
        },
        "humaneval": {"step": 3, "pass@1": 0.0},
        "humaneval_infill_single": {"step": 3, "exact_match": 0.02},
    }
    (run / "eval" / "summary.json").write_text(json.dumps(summary))


def test_fim_report_from_logs(tmp_path):
    config = fim_config("cpu,train.steps=100")
    exp = tmp_path / "fim_ablation"
    write_arm(exp, "fim0", 0.0, 2.432, 2.555)
    write_arm(exp, "fim50", 0.5, 2.431, 2.430)
    md, png = write_report(exp, config)
    text = md.read_text()
    # The cpu note states the budget the arms ran with: 100 x 4 x 512 tokens.
    assert "Scale: cpu** (a 7.2M-parameter model, 0.20M tokens per arm)" in text
    assert "| fim0 | 0.0 | 0.0 / " in text and "| 2.432 | 2.555 | 2.545 | 2.400 |" in text
    assert "| fim50 | 0.5 | 0.0 / " in text and "| 2.431 | 2.430 | 2.420 | 2.400 |" in text
    assert "| 2.0 / " in text  # 2% infilling exact match, as a percentage beside the paper's
    assert "fim25" not in text  # arms without a directory are left out
    assert png.stat().st_size > 10_000


def test_a_forked_experiment_file_keeps_the_report_tables(tmp_path):
    """Copy fim_ablation.py to a new name, change one field: the same Table 7 (tables are
    chosen by `report.tables`, never by the experiment's name)."""
    source = (ROOT / "experiments/fim_ablation.py").read_text()
    forked = source.replace('start_config("fim_ablation"', 'start_config("my_fim_fork"')
    forked = forked.replace("c.fim.spm_rate = 0.5", "c.fim.spm_rate = 0.25")
    assert forked.count("my_fim_fork") == 1 and "spm_rate = 0.25" in forked
    path = tmp_path / "my_fim_fork.py"
    path.write_text(forked)
    spec = importlib.util.spec_from_file_location("my_fim_fork", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tables = {}
    for name, config in [("orig", fim_config("cpu")), ("fork", module.get_config("cpu"))]:
        exp = tmp_path / name / config.name
        write_arm(exp, "fim0", 0.0, 2.432, 2.555)
        write_arm(exp, "fim50", 0.5, 2.431, 2.430)
        md, _ = write_report(exp, config)
        text = md.read_text()
        assert "## Table 7" in text
        tables[name] = text.split("\n", 1)[1]  # everything below the title line
    assert tables["fork"] == tables["orig"]
