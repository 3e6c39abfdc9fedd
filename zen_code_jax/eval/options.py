"""A task's own options: a frozen dataclass declared by the task, filled from the config.

The experiment file sets `eval.task_options = {"mbpp": dict(path=...), ...}` (big_vision
style); each task declares what it takes as `Task.options_type`, a frozen dataclass whose
fields all have defaults, so the global `eval` schema never grows a key per task. A string
value (from a command line) is parsed against the field's default type; an unknown option
or a wrong type raises, naming the task's valid options.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from zen_code_jax.config import parse_value


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a task that takes none."""


def option_names(options_type: type) -> list[str]:
    """The option names a task takes, in declaration order."""
    return [f.name for f in dataclasses.fields(options_type)]


def parse_options(options_type: type, raw: Mapping[str, Any] | None, task: str) -> Any:
    """`options_type(**raw)`, checked: unknown keys and wrong types raise ValueError naming
    the task's options; strings are parsed against each field's default's type."""
    if isinstance(raw, ml_collections.ConfigDict):
        raw = raw.to_dict()
    if raw is not None and not isinstance(raw, Mapping):
        raise ValueError(
            f"eval.task_options.{task} must be a dict of options, e.g. "
            f"{{{task!r}: dict(...)}}; got {raw!r}."
        )
    defaults = options_type()
    names = option_names(options_type)
    takes = f"takes {names}" if names else "takes no options"
    unknown = sorted(set(raw or {}) - set(names))
    if unknown:
        raise ValueError(f"eval.task_options.{task}: unknown option(s) {unknown}; {task} {takes}.")
    values: dict[str, Any] = {}
    for name, value in (raw or {}).items():
        key = f"eval.task_options.{task}.{name}"
        default = getattr(defaults, name)
        if isinstance(value, str) and not isinstance(default, str):
            value = parse_value(value, default, key)
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, type(default)) or isinstance(value, bool) != isinstance(
            default, bool
        ):
            raise ValueError(
                f"Bad value {value!r} for {key}: expected a {type(default).__name__} like "
                f"{default!r}."
            )
        values[name] = value
    return dataclasses.replace(defaults, **values)
