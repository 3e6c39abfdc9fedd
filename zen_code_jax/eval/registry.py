"""Find evaluation tasks by name.

Each task module exposes its task objects in a module-level `TASKS` tuple and imports only
`zen_code_jax.eval.base` (never this module), so there is no import cycle. This module maps
each task name to the module defining it and imports that module on first use: asking for
one task loads only its module, and a typo fails with the list of valid names before any
module is imported.

Adding a task is one module (a `Task` subclass with its `options_type`, `data_option` and,
when its unit is not a problem, `standard_errors`, listed in the module's `TASKS`) plus one
line in `TASK_MODULES` below.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from typing import Any

from zen_code_jax.eval.base import Task
from zen_code_jax.eval.options import parse_options

# task name -> module that defines it (in its `TASKS` tuple).
TASK_MODULES: dict[str, str] = {
    "crosscodeeval": "zen_code_jax.eval.crosscodeeval",
    "decode_speed": "zen_code_jax.eval.decode_speed",
    "heldout_fim": "zen_code_jax.eval.heldout",
    "heldout_loss": "zen_code_jax.eval.heldout",
    "humaneval": "zen_code_jax.eval.humaneval",
    "humaneval_infill_single": "zen_code_jax.eval.infilling",
    "humaneval_infill_multi": "zen_code_jax.eval.infilling",
    "humaneval_fim_qwen": "zen_code_jax.eval.infilling",
    "humaneval_infilling_openai_single": "zen_code_jax.eval.infilling",
    "humaneval_infilling_openai_multi": "zen_code_jax.eval.infilling",
    "humaneval_infilling_openai_random_span": "zen_code_jax.eval.infilling",
    "humaneval_infilling_openai_random_span_light": "zen_code_jax.eval.infilling",
    "humaneval_plus": "zen_code_jax.eval.plus",
    "livecodebench": "zen_code_jax.eval.livecodebench",
    "mbpp": "zen_code_jax.eval.mbpp",
    "mbpp_plus": "zen_code_jax.eval.plus",
    "multipl_e": "zen_code_jax.eval.multipl_e",
    "repo_completion": "zen_code_jax.eval.repo_completion",
    "repobench": "zen_code_jax.eval.repobench",
    "swebench": "zen_code_jax.eval.swebench",
}

# Named task lists (`eval.suite`, the eval CLI's `--suite`): what a suite may run. A name
# not (yet) in TASK_MODULES is allowed here; the suite reports it "not run: unavailable".
SUITES: dict[str, tuple[str, ...]] = {
    # The paper's Tables 4, 5 and 6 (eval/suite.py lays them out beside eval/paper.py).
    "report": (
        "humaneval",
        "humaneval_plus",
        "mbpp",
        "mbpp_plus",
        "livecodebench",
        "swebench",
        "repobench",
        "multipl_e",
        "humaneval_infill_single",
        "humaneval_infill_multi",
        "humaneval_infilling_openai_single",
        "humaneval_infilling_openai_multi",
        "humaneval_infilling_openai_random_span",
        "humaneval_infilling_openai_random_span_light",
    ),
}

_cache: dict[str, Task] = {}
_lock = threading.Lock()


def task_names() -> list[str]:
    """Every built-in task's name, sorted."""
    return sorted(TASK_MODULES)


def get_task(name: str) -> Task:
    """The task called `name`; unknown names raise with the valid ones listed."""
    if name not in TASK_MODULES:
        raise ValueError(f"Unknown eval task {name!r}. Valid tasks: {', '.join(task_names())}.")
    with _lock:
        if name not in _cache:
            module = importlib.import_module(TASK_MODULES[name])
            for task in getattr(module, "TASKS", ()):
                if task.name in TASK_MODULES and TASK_MODULES[task.name] == module.__name__:
                    _cache.setdefault(task.name, task)
            if name not in _cache:
                raise RuntimeError(
                    f"{module.__name__} has no task {name!r} in its TASKS tuple; add it there "
                    "or fix zen_code_jax.eval.registry.TASK_MODULES."
                )
        return _cache[name]


def registry() -> dict[str, Task]:
    """name -> task, for every built-in task (imports every task module)."""
    return {name: get_task(name) for name in task_names()}


def check_task_options(eval_cfg: Mapping[str, Any]) -> None:
    """Check `eval.tasks` and `eval.task_options` before any work: every task named exists
    and every task's options parse against its `options_type` (ValueError naming the valid
    tasks or options otherwise), and `eval.suite` names a suite."""
    suite = str(eval_cfg.get("suite", "") or "")
    if suite and suite not in SUITES:
        raise ValueError(f"eval.suite={suite!r} is not a suite; valid suites: {', '.join(SUITES)}.")
    for name in eval_cfg.get("tasks", ()):
        get_task(name)
    for name, raw in dict(eval_cfg.get("task_options", None) or {}).items():
        if name not in TASK_MODULES:
            raise ValueError(
                f"eval.task_options names an unknown task {name!r}. Valid tasks: "
                f"{', '.join(task_names())}."
            )
        task = get_task(name)
        parse_options(task.options_type, raw, task.name)


def data_overrides(names: list[str], data: str) -> dict[str, str]:
    """The dotted overrides that point each task in `names` at `data` through its own
    `data_option` (what the eval CLI's `--data` does); a task without one raises."""
    if not names:
        raise ValueError("--data=PATH needs --tasks naming the tasks it feeds.")
    out = {}
    for name in names:
        task = get_task(name)
        if task.data_option is None:
            takes = [n for n in task_names() if get_task(n).data_option is not None]
            raise ValueError(
                f"--data: task {name} reads no data file; tasks that take --data: "
                f"{', '.join(takes)}. Score {name} in a separate command without --data."
            )
        out[f"eval.task_options.{name}.{task.data_option}"] = data
    return out
