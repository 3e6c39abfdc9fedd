"""The one entry point: run an experiment file's arms, evaluate them, write the report.

    python experiments/run.py --config=experiments/fim_ablation.py            # cpu scale
    python experiments/run.py --config=experiments/fim_ablation.py:smoke      # seconds
    python experiments/run.py --config=experiments/fim_ablation.py:gpu,train.steps=500
    python experiments/run.py --config=experiments/fim_ablation.py --config.train.steps=50
    python experiments/run.py --config=experiments/fim_ablation.py --arm=fim50 --mode=train
    python experiments/run.py --config=experiments/fim_ablation.py --mode=report

Modes: `all` (default: train + evaluate each arm; with no --arm also the report), `train`,
`eval` (the arms' newest checkpoints, zero training steps), `report` (report.md /
report.png from the arms' logs). Each arm lives in WORKDIR/<name>/<arm>/ (`--workdir`,
default ./runs); rerunning the same command resumes from the newest checkpoint. Every
command records its wall time per phase in WORKDIR/<name>/timings.json and prints it last
(`zen_code_jax.experiment.phases`).
Kept short on purpose: the work is in `zen_code_jax.experiment`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from absl import flags, logging

from zen_code_jax.checkpoint import CheckpointError
from zen_code_jax.experiment import cli
from zen_code_jax.experiment.arm import run_arm
from zen_code_jax.experiment.forecast import print_plan
from zen_code_jax.experiment.phases import RunTimer
from zen_code_jax.experiment.report import write_report
from zen_code_jax.experiment.report_phases import command_table
from zen_code_jax.parallel import multihost
from zen_code_jax.parallel.compilation_cache import enable_compilation_cache
from zen_code_jax.train.standard_hooks import NonFiniteError

# --config=experiments/X.py[:SCALE,key=value,...] and --config.group.field=value: cli.run_app.
_WORKDIR = flags.DEFINE_string("workdir", "./runs", "Root of run directories and the data cache.")
_ARM = flags.DEFINE_string("arm", "", "Run only this arm (default: every arm, then the report).")
_MODE = flags.DEFINE_enum("mode", "all", ["all", "train", "eval", "report"], "What to do.")


def main(argv: list[str], add_hooks: Any = None) -> int:
    if len(argv) > 1:
        raise cli.UsageError(f"Unexpected arguments {argv[1:]}; flags look like --name=value.")
    if not flags.FLAGS["verbosity"].present:  # library INFO logs drown the progress line
        logging.set_verbosity(logging.WARNING)
    config, workdir, mode = cli.config_value(), Path(_WORKDIR.value), _MODE.value
    multihost.initialize()  # before anything touches devices (TPU pods, SLURM; launch/)
    primary = multihost.is_primary()
    enable_compilation_cache(workdir / "cache" / "jax")
    module = cli.loaded_experiment()
    arms = cli.select_arms(config, _ARM.value)
    timer = RunTimer(workdir / config.name, mode=mode, arm=_ARM.value, write=primary)
    if mode != "report" and primary:
        print_plan(config, arms, workdir / config.name)
    timer.startup_done()
    for arm in arms if mode in ("all", "train", "eval") else []:
        cfg, run_dir = cli.arm_setup(config, arm, workdir, mode)
        try:
            result = run_arm(
                cfg,
                run_dir,
                workdir=workdir,
                dataset_fn=getattr(module, "make_dataset", None),
                steps=0 if mode == "eval" else None,
                run_eval=mode != "train",
                add_hooks=add_hooks,
            )
        except NonFiniteError as e:
            print(f"ERROR: {e}", file=sys.stderr, flush=True)
            return 3
        except CheckpointError as e:
            raise cli.UsageError(str(e)) from None
        timer.arm_done(arm, result.phases)
        if result.status == "preempted":
            timer.finish()
            print("Preempted: state saved; rerun the same command to resume.", flush=True)
            return 0
        if primary:
            print(f"[{arm}] finished in {result.phases.total_s():.0f}s: {result.metrics}")
    if primary and (mode == "report" or (mode in ("all", "eval") and not _ARM.value)):
        with timer.report():
            md, png = write_report(workdir / config.name, config)
        print(f"Report: {md} and {png}")
    invocation = timer.finish()
    if primary:
        print("\n".join(command_table(invocation, workdir / config.name)), flush=True)
    return 0


def run(add_hooks: Any = None) -> None:
    """Check the command line, then run `main` under absl (`add_hooks`: tests' faults)."""
    cli.run_app(lambda argv: main(argv, add_hooks))


if __name__ == "__main__":
    run()
