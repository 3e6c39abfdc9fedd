"""MultiPL-E (Cassano et al. 2022) from a user-supplied JSONL in the published format.

Each line is one translated problem: name, language, prompt, tests, stop_tokens (and
doctests, original, prompt_terminology, which we ignore). The program
`prompt + completion + "\\n" + tests` runs in the sandbox with the language's interpreter
(see `sandbox.LANGUAGES`); a test suite passes when the program exits 0. MultiPL-E ships no
reference solutions; a row may carry an extra `canonical_solution` field (our fixtures do,
so tests can check that a correct program passes). Options
(`eval.task_options = {"multipl_e": dict(path=..., languages=("js",))}`): `path` (or `--data`)
and `languages`, the MultiPL-E codes to keep (empty: every row).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from zen_code_jax.eval.execution import PassAtKTask, read_jsonl
from zen_code_jax.eval.sandbox import LANGUAGES, Program

# MultiPL-E language codes -> sandbox languages.
LANGUAGE_CODES = {
    "py": "python",
    "python": "python",
    "js": "javascript",
    "javascript": "javascript",
    "sh": "shell",
    "pl": "perl",
}


@dataclasses.dataclass(frozen=True)
class MultiplEOptions:
    """`path`: the JSONL (published format); `languages`: codes to keep (empty: all)."""

    path: str = ""
    languages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bad = [code for code in self.languages if code not in LANGUAGE_CODES]
        if bad:
            raise ValueError(
                f"eval.task_options.multipl_e.languages: unknown codes {bad}; "
                f"supported: {sorted(LANGUAGE_CODES)}."
            )


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in ("name", "language", "prompt", "tests") if k not in row]
    if missing:
        raise ValueError(
            f"MultiPL-E row {row.get('name', '?')} lacks {missing}; expected the published "
            "fields name, language, prompt, tests, stop_tokens."
        )
    lang = LANGUAGE_CODES.get(row["language"])
    if lang is None or lang not in LANGUAGES:
        raise ValueError(
            f"MultiPL-E language {row['language']!r} has no sandbox interpreter; supported: "
            f"{sorted(LANGUAGE_CODES)}. Add it to sandbox.LANGUAGES and LANGUAGE_CODES."
        )
    return {
        "task_id": f"MultiPL-E/{row['language']}/{row['name']}",
        "language": lang,
        "prompt": row["prompt"],
        "tests": row["tests"],
        "stop_tokens": list(row.get("stop_tokens") or []),
        "canonical_solution": row.get("canonical_solution"),
    }


def load_problems(path: str | Path) -> list[dict[str, Any]]:
    rows = read_jsonl(path, "The multipl_e task", "eval.task_options.multipl_e.path")
    return [normalize_row(r) for r in rows]


def build_program(problem: dict[str, Any], completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["tests"] + "\n"


class MultiplETask(PassAtKTask):
    name = "multipl_e"
    description = "MultiPL-E from a user-supplied JSONL (option path / --data): pass@k"
    options_type = MultiplEOptions

    def load(self, options: MultiplEOptions) -> list[dict[str, Any]]:
        probs = load_problems(options.path)
        if options.languages:
            keep = {LANGUAGE_CODES[code] for code in options.languages}
            probs = [p for p in probs if p["language"] in keep]
        return probs

    def stop(self, problem: dict[str, Any]) -> tuple[str, ...]:
        return tuple(problem["stop_tokens"])  # stop tokens differ per language

    def program(self, problem: dict[str, Any], completion: str) -> Program:
        return Program(build_program(problem, completion), language=problem["language"])


MULTIPL_E = MultiplETask()
score_completions = MULTIPL_E.score  # pass@k of {task_id: [completion, ...]} (tests, tools)
TASKS = (MULTIPL_E,)
