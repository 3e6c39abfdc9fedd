"""zen_code_jax.eval: sandboxed execution, pass@k, benchmark tasks and held-out metrics.

See docs/eval.md. Entry points: `python -m zen_code_jax.eval` (export / score a run),
`runner.run_tasks(ctx, names, run_dir, step=...)` (score an engine),
`runner.score_checkpoint(run_dir, names)` (restore a run's checkpoint, then score it),
`registry.get_task(name)`, `sandbox.run_programs(...)`. Tasks build on `base` (EvalContext,
Task, TaskResult); the registry imports task modules by name, so nothing imports it back.
"""

from zen_code_jax.eval.passk import estimate_pass_at_k, mean_pass_at_k, pass_at_k
from zen_code_jax.eval.sandbox import (
    Program,
    SandboxLimits,
    SandboxResult,
    run_program,
    run_programs,
)

__all__ = [
    "Program",
    "SandboxLimits",
    "SandboxResult",
    "estimate_pass_at_k",
    "mean_pass_at_k",
    "pass_at_k",
    "run_program",
    "run_programs",
]
