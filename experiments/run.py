"""The one entry point: run an experiment file's arms, evaluate them, write the report.

    python experiments/run.py --config=experiments/fim_ablation.py            # cpu scale
    python experiments/run.py --config=experiments/fim_ablation.py:smoke      # seconds
    python experiments/run.py --config=experiments/fim_ablation.py:gpu,train.steps=500
    python experiments/run.py --config=experiments/fim_ablation.py --config.train.steps=50
    python experiments/run.py --config=experiments/fim_ablation.py --arm=fim50 --mode=train
    python experiments/run.py --config=experiments/fim_ablation.py --mode=report

Modes: `all` (default: train + evaluate each arm; with no --arm also the report),
`train` (train only), `eval` (evaluate the arms' newest checkpoints), `report` (rebuild
report.md / report.png from the arms' logs). Each arm lives in WORKDIR/<name>/<arm>/;
rerunning the same command resumes from the newest checkpoint.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import time
from pathlib import Path
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment file and optional ARG: experiments/X.py[:SCALE,key=value,...].",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", "./runs", "Root of run directories and the data cache.")
_ARM = flags.DEFINE_string("arm", "", "Run only this arm (default: every arm, then the report).")
_MODE = flags.DEFINE_enum("mode", "all", ["all", "train", "eval", "report"], "What to do.")


class UsageError(Exception):
    """A mistake in the command line; printed without a traceback."""


def load_experiment_module(path: str) -> Any:
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
            "`def get_config(arg: str = '') -> ConfigDict` returning a config built from "
            "zen_code_jax.config.base_config(); see experiments/fim_ablation.py."
        )
    return module


def validate_argv(argv: list[str]) -> None:
    """Check --config and every --config.* override before absl parses them.

    config_flags reports these with tracebacks; here each gets a one-line error with the
    fix (valid keys, the expected type, the valid scales).
    """
    from zen_code_jax.config import apply_overrides

    config_arg = None
    overrides: dict[str, str] = {}
    for i, a in enumerate(argv[1:], start=1):
        m = re.match(r"--config(\.[^=]+)?(?:=(.*))?$", a)
        if not m:
            continue
        value = m.group(2)
        if value is None:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if m.group(1):
            overrides[m.group(1)[1:]] = value
        else:
            config_arg = value
    if config_arg is None:
        raise UsageError(
            "Missing --config. Example: python experiments/run.py "
            "--config=experiments/fim_ablation.py"
        )
    path, _, arg = config_arg.partition(":")
    module = load_experiment_module(path)
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except ValueError as e:
        raise UsageError(f"--config={config_arg}: {e}") from None
    try:
        apply_overrides(config, overrides)
    except ValueError as e:
        message = str(e).replace("Unknown config key '", "Unknown override '--config.")
        raise UsageError(message) from None


def enable_compilation_cache(path: Path) -> None:
    """Reuse compiled steps across arms and reruns (same program = same executable).

    Arms of an ablation differ in data, not in shapes, so every arm after the first skips
    XLA compilation. JAX_COMPILATION_CACHE_DIR, when set, takes precedence.
    """
    import os

    import jax

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def experiment_dir(config: Any) -> Path:
    return Path(_WORKDIR.value) / config.name


def _tokens_per_s_guess(config: Any) -> float:
    """A rough throughput for the plan: the peak FLOP/s at a typical MFU for the backend."""
    import jax

    from zen_code_jax.config import model_config_from
    from zen_code_jax.train import flops

    platform = jax.devices()[0].platform
    # Typical MFU against flops.peak_flops_per_device (cpu: measured ~0.3 for cpu_small).
    mfu = {"cpu": 0.3, "gpu": 0.35, "tpu": 0.4}.get(platform, 0.1)
    ndev = 1 if platform == "cpu" else jax.device_count()
    peak = flops.peak_flops_per_device(float(config.train.peak_flops_per_device))
    per_token = flops.flops_per_token(model_config_from(config.model), int(config.train.seq_len))
    return peak * ndev * mfu / per_token


def print_plan(config: Any, arms: list[str]) -> None:
    from zen_code_jax.config import arm_config
    from zen_code_jax.train.loop import plan_line

    print("=" * 80)
    print(f"Experiment {config.name!r} at scale {config.scale!r}; resolved config:")
    print(config)
    print(f"Plan ({len(arms)} arm(s), run dirs under {experiment_dir(config)}):")
    for arm in arms:
        cfg = arm_config(config, arm if arm in config.arms else "")
        overrides = dict(config.arms[arm]) if arm in config.arms else {}
        print(plan_line(cfg, arm, _tokens_per_s_guess(cfg)) + f"  {overrides or ''}")
    print("=" * 80, flush=True)


def run_arm(config: Any, arm: str, mode: str, dataset_fn: Any) -> dict[str, Any]:
    from zen_code_jax.config import arm_config
    from zen_code_jax.train.loop import evaluate_checkpoint, train_arm

    cfg = arm_config(config, arm if arm in config.arms else "")
    cfg.arm = arm
    run_dir = experiment_dir(config) / arm
    init = str(cfg.train.init_checkpoint)
    if init.startswith("arm:") and mode in ("all", "train"):
        dep = experiment_dir(config) / init[4:]
        if not (dep / "checkpoints").is_dir():
            raise UsageError(
                f"Arm {arm!r} starts from arm {init[4:]!r} (train.init_checkpoint={init!r}), "
                f"which has no checkpoint in {dep}. Run --arm={init[4:]} first, or run "
                "without --arm to run every arm in order."
            )
    if mode == "eval":
        return evaluate_checkpoint(cfg, run_dir, workdir=_WORKDIR.value, dataset_fn=dataset_fn)
    return train_arm(
        cfg, run_dir, workdir=_WORKDIR.value, dataset_fn=dataset_fn, run_eval=(mode == "all")
    )


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise UsageError(f"Unexpected arguments {argv[1:]}; flags look like --name=value.")
    from zen_code_jax.config import arm_names
    from zen_code_jax.report import write_report
    from zen_code_jax.train.checkpoint import CheckpointError
    from zen_code_jax.train.loop import NonFiniteError

    if not flags.FLAGS["verbosity"].present:  # library INFO logs drown the progress line
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    # Multi-host (TPU pods, SLURM, ZEN_* env; see launch/): before anything touches devices.
    from zen_code_jax.parallel import multihost

    multihost.initialize()
    primary = multihost.is_primary()
    enable_compilation_cache(Path(_WORKDIR.value) / "cache" / "jax")
    path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":", 1)[0]
    module = load_experiment_module(path)
    dataset_fn = getattr(module, "make_dataset", None)
    all_arms = arm_names(config)
    if _ARM.value and _ARM.value not in all_arms:
        raise UsageError(
            f"Unknown --arm={_ARM.value!r}. Arms of {config.name!r}: {all_arms}; leave --arm "
            "out to run them all."
        )
    arms = [_ARM.value] if _ARM.value else all_arms
    mode = _MODE.value
    if mode != "report" and primary:
        print_plan(config, arms)
    t0 = time.time()
    if mode in ("all", "train", "eval"):
        for arm in arms:
            if mode == "eval" and not primary:
                continue  # scoring a checkpoint runs on process 0 alone (one host's devices)
            try:
                result = run_arm(config, arm, mode, dataset_fn)
            except NonFiniteError as e:
                print(f"ERROR: {e}", file=sys.stderr, flush=True)
                return 3
            except CheckpointError as e:
                raise UsageError(str(e)) from None
            if result.get("status") == "preempted":
                print("Preempted: state saved; rerun the same command to resume.", flush=True)
                return 0
            if primary:
                print(f"[{arm}] finished in {time.time() - t0:.0f}s: {result.get('metrics')}")
    if not primary:
        return 0
    if mode == "report" or (mode in ("all", "eval") and not _ARM.value):
        md, png = write_report(experiment_dir(config), config)
        print(f"Report: {md} and {png}")
    return 0


def _entry(argv: list[str]) -> None:
    try:
        code = main(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    try:
        validate_argv(sys.argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    app.run(_entry)
