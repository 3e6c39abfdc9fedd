"""experiments/run.py with a fault injected as a hook: `ZEN_TEST_FAULT=STEP:SIGKILL|SIGTERM`.

    ZEN_TEST_FAULT=4:SIGTERM python tests/fault_run.py --config=... (run.py's flags)

After step STEP's state hooks this process sends itself the signal: SIGKILL dies there
(the resume tests), SIGTERM is a preemption notice the run honours at the next step
boundary. Fault injection is test code, so it lives here and reaches the library only as
a hook (`run_arm(add_hooks=...)`).
"""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    step, kind = os.environ["ZEN_TEST_FAULT"].split(":")
    at, sig = int(step), getattr(signal, kind)

    def fault(info) -> None:
        if info.step == at:
            os.kill(os.getpid(), sig)

    def add_hooks(hooks) -> None:
        hooks.on_state(fault, every=at, name="fault")

    spec = importlib.util.spec_from_file_location("run", ROOT / "experiments" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    run.run(add_hooks=add_hooks)


if __name__ == "__main__":
    main()
