"""What a sandbox run is made of: limits, results, programs, statuses and languages.

Kept apart from the process machinery (`run.py`) so tasks can describe jobs and read
results without caring how they are run.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

PASSED, FAILED, TIMEOUT, CRASHED = "passed", "failed", "timeout", "crashed"
STATUSES = (PASSED, FAILED, TIMEOUT, CRASHED)

# Fallback only (no mount namespace, so no view of the interpreter, see view.py): stdlib
# modules the launcher imports before dropping privileges, so programs can use them even
# when the sandbox uid cannot read the interpreter's library directory. Only those the
# program's source names in an import statement are loaded (startup cost).
PRELOAD_MODULES: tuple[str, ...] = (
    "abc",
    "array",
    "ast",
    "bisect",
    "builtins",
    "cmath",
    "collections",
    "collections.abc",
    "copy",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "io",
    "itertools",
    "json",
    "math",
    "numbers",
    "operator",
    "pathlib",
    "random",
    "re",
    "shutil",
    "signal",
    "socket",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "sys",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "traceback",
    "typing",
    "unicodedata",
    "unittest",
)

# What kernel objects of a run's own IPC namespace may hold: they sit outside the address
# space (RLIMIT_AS), so each kind gets a small cap of its own, like the 1 MiB /dev/shm.
# Written to the namespace's /proc/sys files by the launcher (they die with the run).
IPC_SHM_BYTES = 1 << 20  # SysV shared memory, all segments together
IPC_SYSCTLS: dict[str, int | str] = {
    "kernel/shmmax": IPC_SHM_BYTES,
    "kernel/shmall": IPC_SHM_BYTES // 4096,  # pages
    "kernel/shmmni": 16,  # segments
    "kernel/msgmni": 16,  # SysV message queues (16 KiB each, msgmnb's default)
    "kernel/sem": "32 512 32 16",  # per array, in all, per semop, arrays
    "fs/mqueue/queues_max": 16,  # POSIX message queues
}
MSGQUEUE_BYTES = 1 << 20  # RLIMIT_MSGQUEUE: POSIX message queue bytes of the program's uid

# language -> (file name, argv template or None for in-process Python)
LANGUAGES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "python": ("program.py", None),
    "javascript": ("program.js", ("node", "{file}")),
    "shell": ("program.sh", ("bash", "{file}")),
    "perl": ("program.pl", ("perl", "{file}")),
}


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one program. Defaults suit HumanEval-style unit tests."""

    timeout_s: float = 10.0  # wall clock, enforced by the parent
    cpu_s: int | None = None  # RLIMIT_CPU; None = ceil(timeout_s)
    memory_mb: int = 1024  # RLIMIT_AS (virtual address space)
    max_processes: int = 16  # RLIMIT_NPROC for the sandbox uid (root mode only)
    max_output_bytes: int = 1 << 20  # per stream; the program is killed past this
    max_file_bytes: int = 16 << 20  # RLIMIT_FSIZE
    max_open_files: int = 256  # RLIMIT_NOFILE
    max_disk_mb: int = 64  # size of the private /tmp tmpfs holding the work dir (root mode)
    # Import names of site-packages the program may import (eval.sandbox_packages), each
    # with its distribution's files; their own dependencies must be listed too.
    packages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.memory_mb <= 0 or self.max_processes <= 0:
            raise ValueError(
                f"SandboxLimits need positive timeout_s, memory_mb and max_processes, got {self}; "
                "pass values > 0."
            )


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """How one program ended: status is one of passed, failed, timeout, crashed."""

    status: str
    reason: str
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    isolation: dict[str, Any] = dataclasses.field(default_factory=dict)
    verdict: bool = False  # the trusted epilogue ran (Python: top-level code returned)

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def to_dict(self, max_chars: int = 2000) -> dict[str, Any]:
        """A JSON-friendly summary (output truncated) for per-sample records."""
        return {
            "status": self.status,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "wall_s": round(self.wall_s, 4),
            "verdict": self.verdict,
            "stdout": self.stdout[-max_chars:],
            "stderr": self.stderr[-max_chars:],
        }


@dataclasses.dataclass(frozen=True)
class Program:
    """One job for `run_programs`."""

    source: str
    language: str = "python"
    files: dict[str, str] | None = None
    success_token: str | None = None  # legacy stdout check; prefer verdict=True
    # Python only: passed needs the trusted epilogue's verdict (the program's top-level
    # code returned) on top of exit code 0. See run_program.
    verdict: bool = False
    # The program may not create processes (fork, vfork, clone without CLONE_THREAD fail
    # with EPERM; threads work): closes the fork oracle for harnesses that test in-process.
    single_process: bool = False


def make_token() -> str:
    """A fresh random token (the verdict token, or a legacy stdout success token)."""
    return "__ZCJ_TESTS_DONE_" + secrets.token_hex(8) + "__"
