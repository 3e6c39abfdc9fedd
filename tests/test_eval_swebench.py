"""SWE-bench predictions: instances with retrieved context (oracle `text` format), diff
extraction from model output, strict application to the files the prompt shows (checked
against `git apply --check` on the same files), the official predictions format written as
the task's records, and the task end to end with a fake engine."""

import json
import shutil
import subprocess

import pytest

from zen_code_jax.config import base_config
from zen_code_jax.eval import patches, swebench
from zen_code_jax.eval.base import EvalContext
from zen_code_jax.eval.registry import get_task
from zen_code_jax.eval.runner import run_tasks

CALC = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"
README = "Calc\n====\n\nA calculator.\n"


def numbered(content: str) -> str:
    return "\n".join(f"{i} {line}" for i, line in enumerate(content.split("\n"), 1))


def oracle_text(issue: str, files: dict[str, str]) -> str:
    """A prompt laid out as princeton-nlp/SWE-bench_oracle's `text` (style-3)."""
    code = "\n".join(
        f"[start of {p}]\n{numbered(c)}\n[end of {p}]" for p, c in sorted(files.items())
    )
    return (
        "You will be provided with a partial code base and an issue statement explaining a "
        f"problem to resolve.\n<issue>\n{issue}\n</issue>\n\n<code>\n{code}\n</code>\n\n"
        "Here is an example of a patch file.\n<patch>\n--- a/file.py\n+++ b/file.py\n"
        "@@ -1 +1 @@\n-x\n+y\n</patch>\n\nI need you to solve the provided issue by "
        "generating a single patch file.\nRespond below:\n"
    )


GOOD = (
    "diff --git a/calc/core.py b/calc/core.py\n--- a/calc/core.py\n+++ b/calc/core.py\n"
    "@@ -1,3 +1,3 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n \n"
)
STALE = (  # context that is not in the file
    "--- a/calc/core.py\n+++ b/calc/core.py\n@@ -1,2 +1,2 @@\n def add(x, y):\n"
    "-    return x - y\n+    return x + y\n"
)
ELSEWHERE = "--- a/calc/other.py\n+++ b/calc/other.py\n@@ -1 +1 @@\n-a = 1\n+a = 2\n"
NEWFILE = "--- /dev/null\n+++ b/calc/new.py\n@@ -0,0 +1,2 @@\n+def sub(a, b):\n+    return a - b\n"


def instance(iid: str, files: dict[str, str]) -> dict:
    return {
        "instance_id": iid,
        "repo": "calc/calc",
        "base_commit": "0" * 40,
        "problem_statement": "add subtracts",
        "text": oracle_text(f"add subtracts ({iid})", files),
    }


INSTANCES = [
    instance("calc__calc-1", {"calc/core.py": CALC, "README.md": README}),
    instance("calc__calc-2", {"calc/core.py": CALC}),
    instance("calc__calc-3", {"calc/core.py": CALC}),
    instance("calc__calc-4", {"calc/core.py": CALC}),
    instance("calc__calc-5", {"calc/core.py": CALC}),
]
OUTPUTS = {
    "calc__calc-1": f"I will fix it.\n<patch>\n{GOOD}",  # </patch> cut by the stop
    "calc__calc-2": f"```diff\n{STALE}```\n",
    "calc__calc-3": ELSEWHERE,
    "calc__calc-4": "The bug is in add; it should add.",
    "calc__calc-5": f"```\n{NEWFILE}```",
}


@pytest.fixture
def data(tmp_path):
    f = tmp_path / "swe.jsonl"
    f.write_text("".join(json.dumps(i) + "\n" for i in INSTANCES))
    return f


def test_given_files_are_parsed_without_line_numbers():
    files = swebench.given_files(INSTANCES[0]["text"])
    assert files == {"README.md": README, "calc/core.py": CALC}
    partial = "[start of a.py]\n1 x\n...\n40 y\n[end of a.py]"
    assert swebench.given_files(partial) == {"a.py": None}


def test_diff_extraction_prefers_tagged_then_fenced_then_raw():
    assert patches.extract_diff(OUTPUTS["calc__calc-1"]) == GOOD
    assert patches.extract_diff(OUTPUTS["calc__calc-2"]) == STALE
    assert patches.extract_diff("text\n" + ELSEWHERE) == ELSEWHERE
    assert patches.extract_diff("```python\nprint(1)\n```\n" + ELSEWHERE) == ELSEWHERE
    assert patches.extract_diff(OUTPUTS["calc__calc-4"]) == ""
    assert patches.extract_diff("--- Fix below ---\n" + ELSEWHERE) == ELSEWHERE  # not a header


def test_patches_apply_exactly_and_report_why_not():
    (f,) = patches.parse_patch(GOOD)
    assert f.path == "calc/core.py" and f.hunks[0].counts_ok
    assert patches.apply_file(CALC, f) == CALC.replace("a - b", "a + b")
    with pytest.raises(ValueError, match="does not match"):
        patches.apply_file(CALC, patches.parse_patch(STALE)[0])
    # hunks found away from their stated line (as git apply allows), blank context kept
    moved = GOOD.replace("@@ -1,3 +1,3 @@", "@@ -3,3 +3,3 @@").replace("\n \n", "\n\n")
    assert patches.apply_file("# header\n\n" + CALC, patches.parse_patch(moved)[0]) == (
        "# header\n\n" + CALC.replace("a - b", "a + b")
    )
    for bad, msg in [
        ("", "no ---"),
        ("@@ -1 +1 @@\n-a\n+b\n", "before any"),
        ("--- a/x\n+++ b/x\n", "without hunks"),
        ("--- a/x\n+++ b/x\n@@ -1 +1 @@\n a\n", "changes nothing"),
    ]:
        with pytest.raises(ValueError, match=msg):
            patches.parse_patch(bad)


def test_scored_records_are_official_predictions():
    res = swebench.score(INSTANCES, OUTPUTS, "zen/fim50")
    by = {r["instance_id"]: r for r in res.records}
    assert [(by[i]["well_formed"], by[i]["applies"]) for i in sorted(by)] == [
        (True, True),
        (True, False),
        (True, None),  # touches no file the prompt shows
        (False, None),
        (True, None),  # creates a file: the prompt shows no file it touches
    ]
    exists = NEWFILE.replace("calc/new.py", "calc/core.py")
    assert patches.check_patch(patches.parse_patch(exists), {"calc/core.py": CALC})[0] is False
    assert "does not match" in by["calc__calc-2"]["apply_error"]
    assert by["calc__calc-1"]["model_patch"] == GOOD
    assert by["calc__calc-4"]["model_patch"] == ""
    assert all(r["model_name_or_path"] == "zen/fim50" for r in res.records)
    assert res.metrics == {
        "well_formed": 0.8,
        "applies": 0.2,
        "checked": 0.4,
        "num_instances": 5.0,
    }


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_applies_agrees_with_git_apply_check(tmp_path):
    files = {"calc/core.py": CALC, "README.md": README}
    moved = GOOD.replace("@@ -1,3 +1,3 @@", "@@ -2,3 +2,3 @@")
    wrong_sign = GOOD.replace("-    return a - b", "-    return a * b")
    exists = NEWFILE.replace("calc/new.py", "calc/core.py")
    for diff in (GOOD, STALE, NEWFILE, exists, moved, wrong_sign):
        repo = tmp_path / str(abs(hash(diff)))
        for p, c in files.items():
            (repo / p).parent.mkdir(parents=True, exist_ok=True)
            (repo / p).write_text(c)
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        (repo / "p.diff").write_text(diff)
        git_ok = (
            subprocess.run(["git", "apply", "--check", "p.diff"], cwd=repo, capture_output=True)
        ).returncode == 0
        ours, _, _ = patches.check_patch(patches.parse_patch(diff), files)
        # None (no shown file touched: unknown) is "not refuted"; here the shown files are
        # the whole repository, so git's answer must equal "not refuted".
        assert (ours is not False) is git_ok, (diff, git_ok)


class FakeEngine:
    def __init__(self):
        self.calls = []

    def generate(self, prompts, *, max_new_tokens, temperature, top_p, stop, seed):
        self.calls.append((len(prompts), max_new_tokens, temperature, tuple(stop)))
        by_text = {i["text"]: i["instance_id"] for i in INSTANCES}
        return [OUTPUTS[by_text[p]] for p in prompts]


class CharTokenizer:
    def encode(self, text):
        return list(range(len(text)))


def config(data, **opts):
    c = base_config()
    c.name = "zen"
    c.eval.num_samples = 3  # ignored: greedy, one prediction per instance
    c.eval.temperature = 0.8  # ignored: greedy
    c.eval.task_options = {"swebench": dict(path=str(data), max_new_tokens=512, **opts)}
    return c


def test_task_writes_predictions_in_the_run_dir(data, tmp_path):
    c = config(data, model_name="zen-code-1b")
    engine = FakeEngine()
    run_dir = tmp_path / "run"
    summaries = run_tasks(EvalContext(config=c, engine=engine), ["swebench"], run_dir)
    assert engine.calls == [(5, 512, 0.0, ("</patch>",))]
    assert summaries["swebench"]["applies"] == pytest.approx(0.2)
    preds = [
        json.loads(x) for x in (run_dir / "eval" / "swebench.jsonl").read_text().split("\n") if x
    ]
    assert [p["instance_id"] for p in preds] == [i["instance_id"] for i in INSTANCES]
    assert {p["model_name_or_path"] for p in preds} == {"zen-code-1b"}
    assert preds[0]["model_patch"] == GOOD
    se = get_task("swebench").standard_errors(preds, c.eval)
    assert 0 < se["applies"] < 0.5 and 0 < se["well_formed"] < 0.5


def test_a_prompt_longer_than_the_context_is_skipped(data):
    c = config(data)
    c.eval.context_tokens = len(INSTANCES[0]["text"]) + 512 - 1  # the longest one misses
    engine = FakeEngine()
    task = get_task("swebench")
    res = task.evaluate(EvalContext(config=c, engine=engine, tokenizer=CharTokenizer()))
    assert engine.calls[0][0] == 4
    first = res.records[0]
    assert first["skipped"] and first["model_patch"] == "" and not first["well_formed"]
    assert first["model_name_or_path"] == "zen"
    assert res.metrics["skipped"] == pytest.approx(0.2)


def test_missing_text_field_names_the_fix(tmp_path):
    f = tmp_path / "bare.json"
    f.write_text(json.dumps([{"instance_id": "x", "problem_statement": "p"}]))
    with pytest.raises(ValueError, match="SWE-bench_oracle"):
        swebench.load_instances(str(f))
