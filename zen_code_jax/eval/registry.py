"""Find evaluation tasks by name.

Each task module exposes its task objects in a module-level `TASKS` tuple and imports only
`zen_code_jax.eval.base` (never this module), so there is no import cycle. This module maps
each task name to the module defining it and imports that module on first use: asking for
one task loads only its module, and a typo fails with the list of valid names before any
module is imported.
"""

from __future__ import annotations

import importlib
import threading

from zen_code_jax.eval.base import Task

# task name -> module that defines it (in its `TASKS` tuple).
TASK_MODULES: dict[str, str] = {
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
    "mbpp": "zen_code_jax.eval.mbpp",
    "multipl_e": "zen_code_jax.eval.multipl_e",
    "repo_completion": "zen_code_jax.eval.repo_completion",
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
