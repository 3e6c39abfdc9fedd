"""MBPP (Austin et al. 2021) from a user-supplied JSONL file in a published format.

No MBPP data ships offline, so the task's `path` option (`eval.task_options =
{"mbpp": dict(path=...)}`, or `--data`) must point at a file. Both published layouts are
accepted, one JSON object per line:

- original (`mbpp.jsonl`): task_id, text, code, test_list, test_setup_code,
  challenge_test_list;
- sanitized (`sanitized-mbpp.json` rows): source_file, task_id, prompt, code, test_imports,
  test_list.

Prompt (as in the common harnesses): a docstring with the description and the first test,
`'\"\"\"\\n{description}\\n{test_list[0]}\\n\"\"\"\\n'`; the completion is cut at the stop
sequences; the program `test_imports + prompt + completion + test_setup_code + tests` runs in
the sandbox; pass@k as for HumanEval. `code` is the reference solution (canonical_solution).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zen_code_jax.eval.execution import FileOptions, PassAtKTask, python_job, read_jsonl
from zen_code_jax.eval.sandbox import Program

STOP_SEQUENCES: tuple[str, ...] = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```")


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    """One MBPP row (original or sanitized layout) -> our problem dict."""
    desc = row.get("text", row.get("prompt"))
    missing = [k for k in ("task_id", "code", "test_list") if k not in row]
    if desc is None or missing:
        raise ValueError(
            f"MBPP row {row.get('task_id', '?')} lacks {missing or ['text/prompt']}; expected the "
            "published fields task_id, text (or prompt), code, test_list."
        )
    tests = list(row["test_list"])
    if not tests:
        raise ValueError(f"MBPP row {row['task_id']} has an empty test_list")
    return {
        "task_id": f"MBPP/{row['task_id']}",
        "prompt": f'"""\n{desc.strip()}\n{tests[0]}\n"""\n',
        "canonical_solution": row["code"],
        "tests": tests,
        "test_setup_code": row.get("test_setup_code", "") or "",
        "test_imports": "\n".join(row.get("test_imports", []) or []),
    }


def load_problems(path: str | Path) -> list[dict[str, Any]]:
    rows = read_jsonl(path, "The mbpp task", "eval.task_options.mbpp.path")
    return [normalize_row(r) for r in rows]


def build_program(problem: dict[str, Any], completion: str) -> str:
    return (
        (problem["test_imports"] + "\n" if problem["test_imports"] else "")
        + problem["prompt"]
        + completion
        + "\n\n"
        + problem["test_setup_code"]
        + "\n"
        + "\n".join(problem["tests"])
        + "\n"
    )


class MbppTask(PassAtKTask):
    name = "mbpp"
    description = "MBPP from a user-supplied JSONL (option path / --data): pass@k in the sandbox"

    def load(self, options: FileOptions) -> list[dict[str, Any]]:
        return load_problems(options.path)

    def stop(self, problem: dict[str, Any]) -> tuple[str, ...]:
        return STOP_SEQUENCES

    def program(self, problem: dict[str, Any], completion: str) -> Program:
        return python_job(build_program(problem, completion))


MBPP = MbppTask()
score_completions = MBPP.score  # pass@k of {task_id: [completion, ...]} (tests, tools)
TASKS = (MBPP,)
