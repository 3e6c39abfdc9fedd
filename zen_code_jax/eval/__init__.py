"""zen_code_jax.eval: sandboxed execution, pass@k, benchmark tasks and held-out metrics.

See docs/eval.md. Entry points: `python -m zen_code_jax.eval` (export / score a run),
`runner.evaluate_run(run_dir, tasks)`, `tasks.get_task(name)`, `sandbox.run_programs(...)`.
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
