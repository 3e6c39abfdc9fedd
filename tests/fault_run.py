"""experiments/run.py with a fault injected as a hook: `ZEN_TEST_FAULT=STEP:SIGKILL|SIGTERM`.

    ZEN_TEST_FAULT=4:SIGTERM python tests/fault_run.py --config=... (run.py's flags)

After step STEP's state hooks this process sends itself the signal: SIGKILL dies there
(the resume tests), SIGTERM is a preemption notice the run honours at a step boundary.
In a multi-process run that notice travels asynchronously (jax's preemption sync manager,
through the coordination service); on a loaded machine it once reached the other host only
5 steps later, past the point the test needs. So after SIGTERM this process pauses
`SIGTERM_SETTLE_S`, far longer than the notice takes; the other hosts cannot run ahead
meanwhile (every step is a collective), so the agreed step follows STEP closely. Fault
injection is test code, so it lives here and reaches the library only as a hook
(`run_arm(add_hooks=...)`).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIGTERM_SETTLE_S = 3.0  # >> the coordination service's notice latency (ms when idle)


def main() -> None:
    step, kind = os.environ["ZEN_TEST_FAULT"].split(":")
    at, sig = int(step), getattr(signal, kind)

    def fault(info) -> None:
        if info.step == at:
            os.kill(os.getpid(), sig)
            if sig == signal.SIGTERM:
                time.sleep(SIGTERM_SETTLE_S)

    def add_hooks(hooks) -> None:
        hooks.on_state(fault, every=at, name="fault")

    spec = importlib.util.spec_from_file_location("run", ROOT / "experiments" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    run.run(add_hooks=add_hooks)


if __name__ == "__main__":
    main()
