"""Pinned one-command evaluation recipes: `python -m zen_code_jax.eval --recipe=NAME --run_dir=RUN`.

A recipe names the tasks of one published convention. The tasks themselves pin what the
convention fixes (decoding, prompt layout, stop words, post-processing:
`infilling.Decoding`), so the same task name means the same number in an experiment config
and on the command line. A flag that would change a pinned setting is refused with the
reason, never silently ignored; `--limit` (a prefix of the tasks, for a quick look) is
allowed and recorded in every record's `decoding`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from zen_code_jax.eval.registry import get_task


@dataclasses.dataclass(frozen=True)
class Recipe:
    tasks: tuple[str, ...]
    description: str


RECIPES: dict[str, Recipe] = {
    "humaneval_fim_qwen": Recipe(
        ("humaneval_fim_qwen",),
        "Qwen2.5-Coder's HumanEval-FIM: single-line exact match, greedy, 64 new tokens",
    ),
    "humaneval_infilling_openai": Recipe(
        ("humaneval_infilling_openai_single", "humaneval_infilling_openai_multi"),
        "OpenAI HumanEval-Infilling single- and multi-line: functional pass@1, greedy",
    ),
    "humaneval_infilling_openai_random_span": Recipe(
        ("humaneval_infilling_openai_random_span", "humaneval_infilling_openai_random_span_light"),
        "OpenAI HumanEval-Infilling random-span (+light): pass@1; needs the official files "
        "in the tasks' dir option (--humaneval_infill_dir)",
    ),
    "humaneval_fim_both": Recipe(
        ("humaneval_fim_qwen", "humaneval_infilling_openai_single"),
        "both single-line FIM metrics: Qwen's exact match and OpenAI's pass@1",
    ),
}

# Command-line flags that set a decoding field (flag -> Decoding field).
DECODING_FLAGS = {
    "temperature": "temperature",
    "max_new_tokens": "max_new_tokens",
    "num_samples": "num_samples",
}


def pinned_conflicts(task_names: Sequence[str], flags: Mapping[str, Any]) -> list[str]:
    """One line per flag in `flags` (flag -> value given) that contradicts a setting pinned
    by one of the tasks; empty when there is no conflict."""
    out = []
    for name in task_names:
        dec = getattr(get_task(name), "decoding", None)
        if dec is None:
            continue
        for flag, value in flags.items():
            field = DECODING_FLAGS.get(flag)
            if field is not None and value is not None:
                out.append(f"--{flag}={value} (task {name} pins {field}={getattr(dec, field)!r})")
    return out


def resolve(recipe: str | None, tasks: Sequence[str], flags: Mapping[str, Any]) -> list[str]:
    """The task names to score: the recipe's, or `tasks`. Raises ValueError naming every
    conflicting flag (a recipe plus --tasks or --data, or a decoding flag for a task whose
    convention pins it)."""
    if recipe is not None:
        if recipe not in RECIPES:
            raise ValueError(f"Unknown recipe {recipe!r}. Valid recipes: {', '.join(RECIPES)}.")
        bad = [f"--{k}" for k in ("tasks", "data") if flags.get(k)]
        if bad:
            raise ValueError(
                f"--recipe={recipe} fixes its tasks {list(RECIPES[recipe].tasks)}; drop "
                f"{' and '.join(bad)} (or run --tasks=... without --recipe)."
            )
        tasks = RECIPES[recipe].tasks
    names = list(tasks)
    conflicts = pinned_conflicts(names, flags)
    if conflicts:
        raise ValueError(
            "These flags contradict a pinned convention (docs/eval.md, 'FIM conventions'): "
            + "; ".join(conflicts)
            + ". Drop them, or use humaneval_infill_single/_multi, whose decoding follows "
            "config.eval."
        )
    return names
