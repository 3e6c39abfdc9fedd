"""The report suite (`--suite=report`): the paper's Tables 4-6 for a run and an HF directory.

A tiny random Qwen2 HF directory (tests/test_hf.py's builders, offline) is scored with
`--limit` on the tasks whose data is available (humaneval, the derived HumanEval-Infilling
tasks, mbpp from the fixture file); the others must appear as "not run" with their reason.
The paper's numbers (eval/paper.py) are checked against the LaTeX tables
(tests/fixtures/paper_tables.tex, a verbatim excerpt of the whitepaper), so a typo fails.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from test_eval_tasks import write_official

from zen_code_jax.config import base_config
from zen_code_jax.eval import infilling, paper
from zen_code_jax.eval.__main__ import main
from zen_code_jax.eval.registry import SUITES, check_task_options
from zen_code_jax.eval.suite import plan_suite
from zen_code_jax.hf.transfer import import_hf

FIXTURES = Path(__file__).parent / "fixtures"
TEX = FIXTURES / "paper_tables.tex"
PAPER_SOURCE = Path(
    os.environ.get("ZEN_CODE_PAPER", "/work/shared/reference/zen-code_whitepaper.tex")
)
TINY = ["--limit=2", "--max_new_tokens=4"]


# ------------------------------------------------------------------ the paper's numbers
def _plain(cell: str) -> str:
    """A LaTeX cell as plain text: \\textbf{x} -> x, $+$ -> +, '\\ ' -> ' ', \\% dropped."""
    cell = re.sub(r"\\textbf\{([^}]*)\}", r"\1", cell)
    return cell.replace("$", "").replace("\\ ", " ").replace("\\%", "").strip()


def parse_tex_tables(text: str) -> dict[str, dict[tuple[str, str], float]]:
    """{label: {(row, column header): value}} of every tabular with a \\label."""
    out = {}
    for block in re.findall(r"\\begin\{table\}.*?\\end\{table\}", text, re.S):
        label = re.search(r"\\label\{([^}]*)\}", block).group(1)
        lines = [ln.strip() for ln in block.splitlines() if ln.strip().endswith("\\\\")]
        header = [_plain(c) for c in lines[0].rstrip("\\").split("&")]
        cells = {}
        for ln in lines[1:]:
            row = [_plain(c) for c in ln.rstrip("\\").split("&")]
            for col, value in zip(header[1:], row[1:], strict=True):
                cells[(row[0], col)] = float(value)
        out[label] = cells
    return out


def test_paper_numbers_match_the_tex():
    tex = parse_tex_tables(TEX.read_text(encoding="utf-8"))
    assert set(tex) == {paper.BENCHMARKS, paper.MULTILINGUAL, paper.FIM, paper.SWEBENCH}
    ours = {(r.table, r.benchmark, r.model): r.value for r in paper.PAPER}
    theirs = {(t, b, m): v for t, cells in tex.items() for (b, m), v in cells.items()}
    assert ours == theirs  # every printed number, no more, no less
    # A few cells by name, so the parser itself is pinned too.
    assert paper.paper_value(paper.BENCHMARKS, "HumanEval+ (pass@1)") == 82.4
    assert paper.paper_value(paper.BENCHMARKS, "RepoBench (retrieval)") == 0.834
    assert paper.paper_value(paper.MULTILINGUAL, "C++") == 70.8
    assert paper.paper_value(paper.FIM, "Multi-line (functional)") == 74.6
    assert paper.paper_value(paper.FIM, "Multi-line (functional)", "Competitor (15B)") == 71.3


@pytest.mark.skipif(not PAPER_SOURCE.is_file(), reason="the whitepaper's .tex is not here")
def test_the_fixture_is_a_verbatim_excerpt_of_the_paper():
    assert TEX.read_text(encoding="utf-8") in PAPER_SOURCE.read_text(encoding="utf-8")


# ------------------------------------------------------------------------------ the plan
def test_plan_runs_tasks_with_data_and_says_why_not_for_the_others(monkeypatch, tmp_path):
    c = base_config()
    c.eval.suite = "report"
    check_task_options(c.eval)
    plan = plan_suite(c.eval, c.eval.suite)
    assert plan.run == ("humaneval", "humaneval_infill_single", "humaneval_infill_multi")
    assert plan.skipped["mbpp_plus"] == (
        "no data: set eval.task_options.mbpp_plus.path (or --data_dir)"
    )
    c.eval.task_options = {"humaneval_infilling_openai_single": {"dir": str(tmp_path)}}
    plan = plan_suite(c.eval)
    assert "humaneval_infilling_openai_single" in plan.run
    assert plan.skipped["humaneval_infill_single"].startswith("superseded by")
    assert "humaneval_infill_multi" in plan.run  # the multi-line official dir is not set
    monkeypatch.setitem(SUITES, "report", SUITES["report"] + ("no_such_task",))
    assert plan_suite(c.eval).skipped["no_such_task"].startswith("unavailable:")
    c.eval.suite = "nope"
    with pytest.raises(ValueError, match="valid suites: report"):
        check_task_options(c.eval)


# ------------------------------------------------------------------ end to end, tiny model
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import shutil

    from test_hf import build_hf_model, build_tokenizer_json

    root = tmp_path_factory.mktemp("suite_hf")
    build_tokenizer_json(root / "tok")
    d = root / "model"
    build_hf_model(d, tied=True)
    shutil.copy(root / "tok" / "tokenizer.json", d / "tokenizer.json")
    return d


def _rows(doc: dict, label: str) -> dict[str, dict]:
    table = next(t for t in doc["tables"] if t["label"] == label)
    return {r["benchmark"]: r for r in table["rows"]}


def _check_outputs(out: Path) -> dict:
    for name in ("tables.md", "tables.json", "tables.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    doc = json.loads((out / "tables.json").read_text())
    assert [t["label"] for t in doc["tables"]] == [paper.BENCHMARKS, paper.MULTILINGUAL, paper.FIM]
    md = (out / "tables.md").read_text()
    assert "HumanEval+ (pass@1) | not run | 82.4 | not run: no data" in md
    return doc


def test_suite_report_for_an_hf_dir(hf_dir, tmp_path, capsys):
    out = tmp_path / "report"
    mbpp = FIXTURES / "mbpp_small.jsonl"
    argv = ["--hf_dir", str(hf_dir), "--suite=report", "--out_dir", str(out), *TINY]
    assert main([*argv, f"--set=eval.task_options.mbpp.path={mbpp}"]) == 0
    summaries = json.loads(capsys.readouterr().out)
    assert set(summaries) == {
        "humaneval",
        "mbpp",
        "humaneval_infill_single",
        "humaneval_infill_multi",
    }
    doc = _check_outputs(out)
    assert doc["checkpoint"] == str(hf_dir)
    t4 = _rows(doc, paper.BENCHMARKS)
    he = t4["HumanEval (pass@1)"]
    assert he["ours"] == pytest.approx(100 * summaries["humaneval"]["pass@1"])
    assert he["paper"] == 87.2 and he["se"] is not None and he["task"] == "humaneval"
    assert t4["MBPP (pass@1)"]["ours"] == pytest.approx(100 * summaries["mbpp"]["pass@1"])
    assert t4["MBPP+ (pass@1)"]["ours"] is None
    assert t4["MBPP+ (pass@1)"]["note"] == (
        "not run: no data: set eval.task_options.mbpp_plus.path (or --data_dir)"
    )
    assert t4["RepoBench (retrieval)"]["note"].startswith("not run: ")
    assert t4["MultiPL-E (avg 12 langs)"]["ours"] is None
    t5 = _rows(doc, paper.MULTILINGUAL)
    assert t5["Python"]["note"] == "humaneval pass@1 (Python)"  # no MultiPL-E file given
    assert t5["Rust"]["note"].startswith("not run: no data: set eval.task_options.multipl_e")
    t6 = _rows(doc, paper.FIM)
    em = t6["Single-line (exact match)"]
    assert em["task"] == "humaneval_infill_single" and "derived from HumanEval" in em["note"]
    single = summaries["humaneval_infill_single"]
    assert em["ours"] == pytest.approx(100 * single["exact_match"]) and em["paper"] == 82.3
    fn = t6["Multi-line (functional)"]
    assert fn["ours"] == pytest.approx(100 * summaries["humaneval_infill_multi"]["functional"])
    assert t6["Random-span (functional)"]["note"].startswith("not run: no data")


def test_suite_report_for_a_run_dir_with_official_infilling_files(hf_dir, tmp_path, capsys):
    run = tmp_path / "exp" / "arm"
    import_hf(hf_dir, run)
    data = tmp_path / "data"
    data.mkdir()
    for bench, kind in (("single-line", infilling.SINGLE), ("multi-line", infilling.MULTI)):
        write_official(data, bench, infilling.load_infilling(kind))
    argv = ["--run_dir", str(run), "--suite=report", "--data_dir", str(data), *TINY]
    assert main(argv) == 0
    summaries = json.loads(capsys.readouterr().out)
    assert set(summaries) == {
        "humaneval",
        "humaneval_infilling_openai_single",
        "humaneval_infilling_openai_multi",
    }
    doc = _check_outputs(run / "eval" / "report")
    assert doc["skipped"]["humaneval_infill_single"].startswith("superseded by")
    t6 = _rows(doc, paper.FIM)
    for bench, task, metric in (
        ("Single-line (exact match)", "humaneval_infilling_openai_single", "exact_match"),
        ("Multi-line (exact match)", "humaneval_infilling_openai_multi", "exact_match"),
        ("Single-line (functional)", "humaneval_infilling_openai_single", "pass@1"),
        ("Multi-line (functional)", "humaneval_infilling_openai_multi", "pass@1"),
    ):
        cell = t6[bench]
        assert (cell["task"], cell["metric"]) == (task, metric)
        assert cell["note"].endswith("(official file)")
        assert cell["ours"] == pytest.approx(100 * summaries[task][metric])
        assert cell["se"] is not None
    assert (run / "eval" / "humaneval_infilling_openai_multi.jsonl").is_file()


def test_suite_refuses_mixed_or_missing_arguments(hf_dir, tmp_path):
    with pytest.raises(SystemExit, match="runs its own task list"):
        main(["--run_dir", str(tmp_path), "--suite=report", "--tasks=humaneval"])
    with pytest.raises(SystemExit, match="--out_dir"):
        main(["--hf_dir", str(hf_dir), "--suite=report"])
    with pytest.raises(SystemExit, match="valid suites: report"):
        main(["--run_dir", str(tmp_path), "--suite=nope"])


def test_an_experiment_selects_the_suite_by_config(hf_dir, tmp_path):
    """`eval.suite = "report"` in a config: the arm's evaluate step scores the suite's tasks
    that have data (beside `eval.tasks`) and writes the tables into RUN/eval/report/."""
    from zen_code_jax.experiment.evaluate import evaluate
    from zen_code_jax.resolve import load_model
    from zen_code_jax.rundir import RunDir
    from zen_code_jax.tracking import SummaryWriter

    run = tmp_path / "exp" / "arm"
    import_hf(hf_dir, run)
    loaded = load_model(str(run))
    config = loaded.config
    config.eval.tasks = ()
    config.eval.suite = "report"
    config.eval.limit = 1
    config.eval.max_new_tokens = 4
    check_task_options(config.eval)
    writer = SummaryWriter(run)
    try:
        metrics = evaluate(
            RunDir(run),
            config,
            params=loaded.params,
            model_cfg=loaded.model_cfg,
            tokenizer=loaded.tokenizer,
            corpus=None,
            writer=writer,
            step=0,
        )
    finally:
        writer.close()
    assert {k.split("/")[0] for k in metrics} == {
        "humaneval",
        "humaneval_infill_single",
        "humaneval_infill_multi",
    }
    doc = _check_outputs(run / "eval" / "report")
    he = _rows(doc, paper.BENCHMARKS)["HumanEval (pass@1)"]
    assert he["ours"] == pytest.approx(100 * metrics["humaneval/pass@1"])
