"""Adding an evaluation task is one module plus one registry line: a toy task
(tests/toy_task.py) with its own option, its own data option and its own standard error
runs through `run_tasks`, has its options checked, and its standard error and derived
metric reach the report's statistics; no other file names it."""

import json
import math

import pytest

from zen_code_jax.config import base_config
from zen_code_jax.eval import registry
from zen_code_jax.eval.__main__ import main as cli_main
from zen_code_jax.eval.base import EvalContext
from zen_code_jax.eval.runner import run_tasks
from zen_code_jax.experiment import report, report_stats


class Doubler:
    """Repeats even-length prompts twice, returns odd-length ones unchanged."""

    def generate(self, prompts, **kw):
        return [p * 2 if len(p) % 2 == 0 else p for p in prompts]


@pytest.fixture
def toy(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.TASK_MODULES, "toy_echo", "toy_task")  # the one line
    monkeypatch.setattr(registry, "_cache", dict(registry._cache))
    data = tmp_path / "toy.txt"
    data.write_text("ab\nabc\ncd\nxyz\n")
    return data


def test_a_new_task_is_one_module_plus_one_registry_line(toy, tmp_path, capsys):
    c = base_config()
    c.eval.num_samples = 2
    # "2": a command-line string, parsed against the option's type (int).
    c.eval.task_options = {"toy_echo": {"path": str(toy), "repeats": "2"}}
    run = tmp_path / "exp" / "toy"
    ctx = EvalContext(config=c, engine=Doubler())
    summaries = run_tasks(ctx, ["toy_echo"], run, step=3, log=lambda s: None)
    assert summaries["toy_echo"]["hit_rate"] == 0.5  # "ab", "cd" hit; twice each
    records = [json.loads(x) for x in (run / "eval" / "toy_echo.jsonl").read_text().splitlines()]
    assert len(records) == 8
    # The task's own standard error (binomial over samples, not the default bootstrap over
    # problems, which would give 0.25 +- noise here) is what the report uses.
    own = math.sqrt(0.5 * 0.5 / 8)
    assert report_stats.task_standard_errors("toy_echo", records, c.eval.to_dict()) == {
        "hit_rate": own
    }
    arm = report._load_arm(run)  # what report.md is built from
    assert arm["se"]["toy_echo/hit_rate"] == own
    assert arm["metrics"]["toy_echo/hit_rate"] == 0.5
    assert arm["metrics"]["toy_echo/miss_rate"] == 0.5  # its derived metric

    # With repeats=1 nothing doubled hits, odd-length lines do: the option is read.
    c.eval.task_options = {"toy_echo": {"path": str(toy), "repeats": 1}}
    assert run_tasks(ctx, ["toy_echo"], run, log=lambda s: None)["toy_echo"]["hit_rate"] == 0.5
    c.eval.task_options.toy_echo.path = str(tmp_path / "three.txt")
    (tmp_path / "three.txt").write_text("abc\nxyz\nq\n")
    assert run_tasks(ctx, ["toy_echo"], run, log=lambda s: None)["toy_echo"]["hit_rate"] == 1.0

    # Its options are checked before any work, naming the valid ones.
    for bad, message in (
        ({"bogus": 1}, r"unknown option\(s\) \['bogus'\]; toy_echo takes \['path', 'repeats'\]"),
        ({"repeats": "two"}, "Cannot parse 'two' for eval.task_options.toy_echo.repeats"),
        ({"repeats": 1.5}, "expected a int like 1"),
        ({"repeats": 0}, "repeats must be >= 1"),
    ):
        c.eval.task_options = {"toy_echo": {"path": str(toy), **bad}}
        with pytest.raises(ValueError, match=message):
            run_tasks(ctx, ["humaneval"], tmp_path / "never", log=lambda s: None)
        assert not (tmp_path / "never").exists()  # nothing ran
    c.eval.task_options = {"toy_echoo": {}}
    with pytest.raises(ValueError, match="unknown task 'toy_echoo'. Valid tasks: .*toy_echo"):
        run_tasks(ctx, ["toy_echo"], run, log=lambda s: None)

    # --data sets the task's own data option; a task without one refuses it.
    assert registry.data_overrides(["toy_echo"], "F") == {"eval.task_options.toy_echo.path": "F"}
    cli_main(["--export=toy_echo", f"--data={toy}"])
    assert [json.loads(x)["prompt"] for x in capsys.readouterr().out.splitlines()] == [
        "ab",
        "abc",
        "cd",
        "xyz",
    ]
    with pytest.raises(SystemExit, match="task humaneval reads no data file; .*toy_echo"):
        cli_main(["--export=humaneval", f"--data={toy}"])
    with pytest.raises(ValueError, match="--data=PATH needs --tasks"):
        registry.data_overrides([], "F")
