"""Run untrusted generated programs in isolated, resource-limited child processes.

Why this shape: model completions are arbitrary code. The reference HumanEval harnesses run
them in the evaluator's own process tree with no memory limit (and one ships with `exec`
commented out, so everything "passes"). Here every program gets:

- its own session and process group (`start_new_session`), killed as a whole on timeout;
- a wall-clock limit (enforced by the parent) and a CPU-time limit (RLIMIT_CPU);
- an address-space limit (RLIMIT_AS), a file-size limit (RLIMIT_FSIZE), an open-file limit,
  no core dumps, and a process-count limit (RLIMIT_NPROC);
- a fresh temporary working directory, deleted afterwards;
- the whole standard library (read-only) and only the opted-in site-packages;
- stdout and stderr read with a byte cap; the program is killed when it exceeds it.

When the evaluator runs as root (CI and the dev machines here) it also:

- drops the program to a dedicated unprivileged uid/gid (one per concurrent slot), because
  RLIMIT_NPROC is not enforced for root and root may write anywhere. The program can then
  write only its working directory and world-writable places (/tmp, /dev/shm);
- puts the program in a new network namespace (only a downed loopback: no network at all)
  and a new PID namespace (when the program's process tree's init dies, the kernel kills
  every process in it, so `setsid()` escapees cannot outlive the run);
- gives it an IPC namespace of its own with small object limits (SysV shm, message queues,
  semaphores and POSIX mqueues die with the run; no other run sees them);
- after the run, kills any process still owned by the slot's uid.

Always (it needs no privilege), a seccomp filter (`seccomp.py`) refuses with EPERM what
would escape the limits: `memfd_create` (memory RLIMIT_AS does not count), new namespaces
and mounts (a user namespace would let the program mount a tmpfs past its disk quota);
with `Program.single_process` also new processes (the fork oracle; threads still work).

Without root it tries an unprivileged user+network namespace (works where the kernel allows
unprivileged user namespaces) and otherwise runs with the rlimits only (best effort); every
result records the isolation it actually got in `SandboxResult.isolation`.

Implementation: the parent (`run.py`) starts the small trusted launcher (`launcher.py`, run as
`python -I -S launcher.py SPEC`, stdlib only) in a new session. The launcher unshares
namespaces, builds the program's read-only view of the interpreter (`view.py`: the whole
stdlib, only the site-packages listed in `SandboxLimits.packages`, nothing else of the
interpreter's home), forks; the child sets rlimits, drops privileges, asks for SIGKILL when
the launcher dies (PR_SET_PDEATHSIG) and runs the program (in-process for Python, `execve`
for other languages). The launcher reports what it did, how the child ended and, for
Python, the trusted verdict (the program's top-level code returned; a token the program
never sees) on a status pipe. No `preexec_fn` is used, so launching from many threads is
safe. The dedicated uids (`uids.py`) are allocated lazily, on the first root-mode run. What
programs and results look like is in `spec.py`.
"""

from zen_code_jax.eval.sandbox.run import LAUNCHER, isolation_report, run_program, run_programs
from zen_code_jax.eval.sandbox.spec import (
    CRASHED,
    FAILED,
    LANGUAGES,
    PASSED,
    PRELOAD_MODULES,
    STATUSES,
    TIMEOUT,
    Program,
    SandboxLimits,
    SandboxResult,
    make_token,
)
from zen_code_jax.eval.sandbox.uids import SLOTS, pids_of_uid

__all__ = [
    "CRASHED",
    "FAILED",
    "LANGUAGES",
    "LAUNCHER",
    "PASSED",
    "PRELOAD_MODULES",
    "SLOTS",
    "STATUSES",
    "TIMEOUT",
    "Program",
    "SandboxLimits",
    "SandboxResult",
    "isolation_report",
    "make_token",
    "pids_of_uid",
    "run_program",
    "run_programs",
]
