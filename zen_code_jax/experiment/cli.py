"""Command-line plumbing of `experiments/run.py`, so the entry point itself stays short.

The experiment file is executed once per run: `run_app` loads it, builds the config from
its ARG, checks every `--config.*` override with a one-line error (valid keys, expected
type, valid scales) instead of a traceback, and hands the config to absl as a config-dict
flag, so `--config.group.field=value` keeps working.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections
from absl import app
from ml_collections import config_flags

from zen_code_jax.config import (
    OPEN_GROUPS,
    apply_overrides,
    arm_config,
    arm_names,
    config_from_dict,
    config_to_dict,
)
from zen_code_jax.eval.registry import check_task_options
from zen_code_jax.resolve import parse_checkpoint
from zen_code_jax.rundir import RunDir

_LOADED: dict[str, Any] = {}


class UsageError(Exception):
    """A mistake in the command line; printed without a traceback."""


def load_experiment_module(path: str) -> ModuleType:
    """Import an experiment file by path (it need not be on sys.path)."""
    file = Path(path)
    if not file.exists():
        raise UsageError(
            f"--config={path}: no such file. Give the path to an experiment file, e.g. "
            "--config=experiments/fim_ablation.py (relative to where you run the command)."
        )
    spec = importlib.util.spec_from_file_location(f"experiment_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    if not callable(getattr(module, "get_config", None)):
        raise UsageError(
            f"{path} has no get_config(arg) function. An experiment file must define "
            "`def get_config(arg: str = '') -> ConfigDict`; see experiments/fim_ablation.py."
        )
    return module


def _split_argv(argv: list[str]) -> tuple[str, dict[str, str], list[str]]:
    """(the --config value, the --config.* overrides, argv without the --config value)."""
    config_arg, overrides, rest = None, {}, [argv[0]]
    skip = False
    for i, a in enumerate(argv[1:], start=1):
        if skip:
            skip = False
            continue
        m = re.match(r"--config(\.[^=]+)?(?:=(.*))?$", a)
        if not m:
            rest.append(a)
            continue
        value = m.group(2)
        if value is None:
            value = argv[i + 1] if i + 1 < len(argv) else ""
            skip = True
        if m.group(1):
            overrides[m.group(1)[1:]] = value
            rest.append(f"--config{m.group(1)}={value}")
        else:
            config_arg = value
    if config_arg is None:
        raise UsageError(
            "Missing --config. Example: python experiments/run.py "
            "--config=experiments/fim_ablation.py"
        )
    return config_arg, overrides, rest


def load_config(argv: list[str]) -> tuple[ml_collections.ConfigDict, list[str]]:
    """Load the experiment file once, build and check its config; returns (config, argv
    for absl without the --config value)."""
    config_arg, overrides, rest = _split_argv(argv)
    path, _, arg = config_arg.partition(":")
    module = load_experiment_module(path)
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except ValueError as e:
        raise UsageError(f"--config={config_arg}: {e}") from None
    try:
        checked = config_from_dict(config_to_dict(config))
        apply_overrides(checked, overrides)
    except ValueError as e:
        message = str(e).replace("Unknown config key '", "Unknown override '--config.")
        raise UsageError(message) from None
    try:
        check_task_options(checked.eval)  # before training, not after it
    except ValueError as e:
        raise UsageError(f"--config={config_arg}: {e}") from None
    # absl sets only keys that exist: create those below an open group (a task's options).
    below_open = tuple(g + "." for g in OPEN_GROUPS)
    apply_overrides(config, {k: v for k, v in overrides.items() if k.startswith(below_open)})
    _LOADED["module"] = module
    return config, rest


def loaded_experiment() -> ModuleType:
    """The experiment file's module (for an optional `make_dataset`)."""
    return _LOADED["module"]


def run_app(main: Callable[[list[str]], int]) -> None:
    """Parse the command line (one-line errors for usage mistakes) and run `main`."""
    try:
        config, argv = load_config(sys.argv)
        _LOADED["flag"] = config_flags.DEFINE_config_dict(
            "config", config, lock_config=True, sys_argv=argv
        )
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    def entry(args: list[str]) -> None:
        try:
            code = main(args)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        sys.exit(code)

    app.run(entry, argv=argv)


def config_value() -> ml_collections.ConfigDict:
    """The experiment's config after the command line's --config.* overrides."""
    return _LOADED["flag"].value


def select_arms(config: ml_collections.ConfigDict, arm: str) -> list[str]:
    all_arms = arm_names(config)
    if arm and arm not in all_arms:
        raise UsageError(
            f"Unknown --arm={arm!r}. Arms of {config.name!r}: {all_arms}; leave --arm out to "
            "run them all."
        )
    return [arm] if arm else all_arms


def arm_setup(
    config: ml_collections.ConfigDict, arm: str, workdir: Path, mode: str
) -> tuple[ml_collections.ConfigDict, RunDir]:
    """The arm's resolved config and run directory; checks an `arm:` init dependency."""
    cfg = arm_config(config, arm if arm in config.arms else "")
    cfg.arm = arm
    run_dir = RunDir.of(workdir, config.name, arm)
    init = str(cfg.train.init_checkpoint)
    dep = parse_checkpoint(init, run_dir=run_dir) if init.startswith("arm:") else None
    if dep is not None and mode in ("all", "train") and not dep.has_checkpoint():
        raise UsageError(
            f"Arm {arm!r} starts from arm {dep.arm!r} (train.init_checkpoint={init!r}), "
            f"which has no checkpoint in {dep.path}. Run --arm={dep.arm} first, or run "
            "without --arm to run every arm in order."
        )
    return cfg, run_dir
