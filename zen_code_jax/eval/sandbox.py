"""Run untrusted generated programs in isolated, resource-limited child processes.

Why this shape: model completions are arbitrary code. The reference HumanEval harnesses run
them in the evaluator's own process tree with no memory limit (and one ships with `exec`
commented out, so everything "passes"). Here every program gets:

- its own session and process group (`start_new_session`), killed as a whole on timeout;
- a wall-clock limit (enforced by the parent) and a CPU-time limit (RLIMIT_CPU);
- an address-space limit (RLIMIT_AS), a file-size limit (RLIMIT_FSIZE), an open-file limit,
  no core dumps, and a process-count limit (RLIMIT_NPROC);
- a fresh temporary working directory, deleted afterwards;
- stdout and stderr read with a byte cap; the program is killed when it exceeds it.

When the evaluator runs as root (CI and the dev machines here) it also:

- drops the program to a dedicated unprivileged uid/gid (one per concurrent slot), because
  RLIMIT_NPROC is not enforced for root and root may write anywhere. The program can then
  write only its working directory and world-writable places (/tmp, /dev/shm);
- puts the program in a new network namespace (only a downed loopback: no network at all)
  and a new PID namespace (when the program's process tree's init dies, the kernel kills
  every process in it, so `setsid()` escapees cannot outlive the run);
- after the run, kills any process still owned by the slot's uid.

Without root it tries an unprivileged user+network namespace (works where the kernel allows
unprivileged user namespaces) and otherwise runs with the rlimits only (best effort); every
result records the isolation it actually got in `SandboxResult.isolation`.

Implementation: the parent starts a small trusted *launcher* (`python -I -S -c LAUNCHER`) in a
new session. The launcher reads the program, pre-imports a list of stdlib modules (the sandbox
uid may not be able to read the interpreter's directory, e.g. a pyenv under /root), unshares
namespaces, forks; the child sets rlimits, drops privileges, asks for SIGKILL when the
launcher dies (PR_SET_PDEATHSIG) and runs the program (in-process for Python, `execve` for
other languages). The launcher reports what it did and how the child ended on a status pipe.
No `preexec_fn` is used, so launching from many threads is safe.
"""

from __future__ import annotations

import ast
import dataclasses
import marshal
import os
import queue
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PASSED, FAILED, TIMEOUT, CRASHED = "passed", "failed", "timeout", "crashed"
STATUSES = (PASSED, FAILED, TIMEOUT, CRASHED)

# Stdlib modules the launcher may import before dropping privileges, so programs can use
# them even when the sandbox uid cannot read the interpreter's library directory. Only
# those the program's source names in an import statement are loaded (startup cost).
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
            "stdout": self.stdout[-max_chars:],
            "stderr": self.stderr[-max_chars:],
        }


# --------------------------------------------------------------------------------------
# The launcher: trusted code run in the child session before the program.
# --------------------------------------------------------------------------------------
_LAUNCHER = r"""
import marshal, os, resource, sys
# No json/re/signal here: importing them (enum, functools, ...) would cost more CPU than
# most test programs. The spec comes marshalled; reports are Python literals.
spec = marshal.loads(bytes.fromhex(sys.argv[1]))
status_fd = spec["status_fd"]
SIGKILL = 9
def report(**kw):
    try:
        os.write(status_fd, (repr(kw) + "\n").encode())
    except OSError:
        pass
def die(msg):
    report(setup_error=msg)
    os._exit(97)
try:
    os.chdir(spec["workdir"])
    source = None
    if spec["argv"] is None:
        with open(spec["file"], encoding="utf-8", errors="replace") as f:
            source = f.read()
        wanted = set()
        for line in source.splitlines():
            words = line.split("#", 1)[0].split(";", 1)[0].split()
            if len(words) >= 3 and words[0] == "from" and words[2] == "import":
                wanted.add(words[1])
            elif len(words) >= 2 and words[0] == "import":
                for part in " ".join(words[1:]).split(","):
                    if part.split():
                        wanted.add(part.split()[0])
        for name in spec["preload"]:
            if name in wanted:
                try:
                    __import__(name)
                except Exception:
                    pass
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    iso = {"uid": None, "net_ns": False, "pid_ns": False, "mount_ns": False, "user_ns": False}
    is_root = os.geteuid() == 0
    if spec["namespaces"]:
        CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWUSER = 0x40000000, 0x20000000, 0x10000000
        CLONE_NEWNS = 0x00020000
        if is_root:
            for flags, got in (
                (CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID, ("mount_ns", "net_ns", "pid_ns")),
                (CLONE_NEWNET | CLONE_NEWPID, ("net_ns", "pid_ns")),
                (CLONE_NEWNET, ("net_ns",)),
            ):
                if libc.unshare(flags) == 0:
                    for k in got:
                        iso[k] = True
                    break
            if iso.get("mount_ns"):
                # Private, size-limited tmpfs over every world-writable directory; the work
                # dir is re-created inside the new /tmp, so nothing the program writes
                # reaches the host's disk or the host's /dev/shm, and it cannot see them.
                files = {}
                for root, _dirs, names in os.walk("."):
                    for name in names:
                        with open(os.path.join(root, name), "rb") as f:
                            files[os.path.join(root, name)] = f.read()
                mount = libc.mount
                mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                  ctypes.c_ulong, ctypes.c_char_p]
                MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 2, 4, 16384, 1 << 18
                if mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
                    die("mount --make-rprivate / failed")
                sizes = {"/tmp": spec["tmpfs_mb"], "/var/tmp": 1, "/run/lock": 1, "/dev/shm": 1}
                for d, mb in sizes.items():
                    if os.path.isdir(d) and not os.path.islink(d):
                        opts = f"size={mb}m,mode=1777".encode()
                        if mount(b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) != 0:
                            die(f"mounting a tmpfs on {d} failed")
                os.makedirs(spec["workdir"], mode=0o700, exist_ok=True)
                os.chdir(spec["workdir"])
                for name, data in files.items():
                    os.makedirs(os.path.dirname(name), exist_ok=True)
                    with open(name, "wb") as f:
                        f.write(data)
                if spec["uid"] is not None:
                    for root, dirs, names in os.walk("."):
                        for name in [root] + [os.path.join(root, n) for n in dirs + names]:
                            os.chown(name, spec["uid"], spec["gid"])
                iso["tmpfs_mb"] = spec["tmpfs_mb"]
        else:
            uid, gid = os.getuid(), os.getgid()
            if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID) == 0:
                iso["net_ns"] = iso["user_ns"] = iso["pid_ns"] = True
            elif libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
                iso["net_ns"] = iso["user_ns"] = True
            if iso["user_ns"]:
                try:
                    with open("/proc/self/setgroups", "w") as f:
                        f.write("deny")
                    with open("/proc/self/uid_map", "w") as f:
                        f.write(f"{uid} {uid} 1")
                    with open("/proc/self/gid_map", "w") as f:
                        f.write(f"{gid} {gid} 1")
                except OSError:
                    pass
    if spec["uid"] is not None and is_root:
        iso["uid"] = spec["uid"]
    report(isolation=iso)
    launcher_pid = os.getpid()
    pid = os.fork()
except BaseException as e:
    die(f"{type(e).__name__}: {e}")

def wait_status(child):
    while True:
        try:
            return os.waitpid(child, 0)[1]
        except InterruptedError:
            continue

def report_status(st):
    if os.WIFEXITED(st):
        report(exit=os.WEXITSTATUS(st))
    else:
        report(signal=os.WTERMSIG(st))

def run_child(parent_pid):
    try:
        os.close(status_fd)
        lim = spec["limits"]
        R = resource
        R.setrlimit(R.RLIMIT_CORE, (0, 0))
        R.setrlimit(R.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
        R.setrlimit(R.RLIMIT_FSIZE, (lim["file_bytes"], lim["file_bytes"]))
        R.setrlimit(R.RLIMIT_NOFILE, (lim["open_files"], lim["open_files"]))
        if iso["uid"] is None and not is_root:
            # Best effort without root: RLIMIT_NPROC counts all of this user's processes,
            # so allow what exists now plus the program's share.
            try:
                mine = 0
                for name in os.listdir("/proc"):
                    if name.isdigit():
                        try:
                            mine += os.stat("/proc/" + name).st_uid == os.getuid()
                        except OSError:
                            pass
                cap = mine + lim["processes"]
                R.setrlimit(R.RLIMIT_NPROC, (cap, cap))
            except (OSError, ValueError):
                pass
        if iso["uid"] is not None:
            R.setrlimit(R.RLIMIT_NPROC, (lim["processes"], lim["processes"]))
            os.setgroups([])
            os.setgid(spec["gid"])
            os.setuid(spec["uid"])
        libc.prctl(1, SIGKILL)  # PR_SET_PDEATHSIG (after setuid, which clears it)
        if os.getppid() != parent_pid:
            os._exit(98)
        R.setrlimit(R.RLIMIT_AS, (lim["as_bytes"], lim["as_bytes"]))
    except BaseException as e:
        sys.stderr.write(f"sandbox setup failed: {type(e).__name__}: {e}\n")
        os._exit(97)
    if spec["argv"] is not None:
        try:
            os.execve(spec["argv"][0], spec["argv"], spec["env"])
        except BaseException as e:
            sys.stderr.write(f"sandbox exec failed: {type(e).__name__}: {e}\n")
            os._exit(97)

if pid == 0 and iso["pid_ns"]:
    # PID 1 of the new namespace: a mini-init (PID 1 ignores signals it has no handler
    # for, e.g. RLIMIT_CPU's SIGXCPU, so the program must not be PID 1). When it dies the
    # kernel kills everything left in the namespace.
    libc.prctl(1, SIGKILL)  # (it shares the launcher's process group, too)
    init_pid = os.getpid()
    try:
        pid = os.fork()
    except BaseException as e:
        die(f"fork in init: {type(e).__name__}: {e}")
    if pid != 0:
        report_status(wait_status(pid))
        os._exit(0)
    run_child(init_pid)
elif pid == 0:
    run_child(launcher_pid)

if pid == 0:
    del spec, report, die, libc, ctypes, marshal, resource, wait_status, report_status, run_child
    sys.argv = ["program.py"]
    __name__ = "__main__"
    __file__ = "program.py"
    exec(compile(source, "program.py", "exec"))
    sys.exit(0)

st = wait_status(pid)
if not iso["pid_ns"]:
    report_status(st)
elif not (os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0):
    report(init_failed=st)
os._exit(0)
"""


# --------------------------------------------------------------------------------------
# Dedicated uids: one per concurrent slot, so RLIMIT_NPROC and the post-run sweep never
# touch another run (or another evaluator process: the base depends on our pid).
# --------------------------------------------------------------------------------------
_SLOTS = 256
_UID_BASE = 1_900_000 + (os.getpid() % 4000) * _SLOTS
_slot_queue: queue.SimpleQueue[int] = queue.SimpleQueue()
for _i in range(_SLOTS):
    _slot_queue.put(_i)


def _is_root() -> bool:
    return os.geteuid() == 0


def _pids_of_uid(uid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    out.append(int(name))
            except OSError:
                pass
    return out


def _sweep_uid(uid: int, rounds: int = 50) -> int:
    """SIGKILL every process owned by `uid` (a dedicated sandbox uid); returns survivors."""
    pids: list[int] = []
    for _ in range(rounds):
        pids = _pids_of_uid(uid)
        if not pids:
            return 0
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.002)
    return len(pids)


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _rmtree(path: str) -> None:
    def onerror(func: Any, p: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)


def _resolve_argv(argv: list[str]) -> list[str]:
    exe = shutil.which(argv[0])
    if exe is None:
        raise FileNotFoundError(
            f"Interpreter {argv[0]!r} for this sandbox language is not installed; install it "
            "(e.g. apt-get install nodejs) or evaluate another language."
        )
    return [exe, *argv[1:]]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def run_program(
    source: str,
    *,
    language: str = "python",
    limits: SandboxLimits | None = None,
    files: dict[str, str] | None = None,
    namespaces: bool = True,
    success_token: str | None = None,
) -> SandboxResult:
    """Run one untrusted program to completion in the sandbox; never raises for its behaviour.

    `files` are extra files written into the working directory (relative names). With
    `success_token`, exit code 0 counts as passed only if the token appears on stdout: the
    harness prints it after the tests, so a program that exits early (`os._exit(0)`,
    `sys.exit()` in the completion) before the tests ran fails instead of "passing".
    """
    limits = limits or SandboxLimits()
    if language not in LANGUAGES:
        raise ValueError(
            f"Unknown sandbox language {language!r}; supported: {sorted(LANGUAGES)}. "
            "Add an entry to zen_code_jax.eval.sandbox.LANGUAGES for a new interpreter."
        )
    fname, argv_t = LANGUAGES[language]
    root = _is_root()
    slot = _slot_queue.get() if root else None
    uid = _UID_BASE + slot if slot is not None else None
    # Under /tmp when root: the launcher re-creates the same path inside its private /tmp.
    workdir = tempfile.mkdtemp(prefix="zcj-sandbox-", dir="/tmp" if root else None)
    try:
        res = _run_in(
            source, fname, argv_t, limits, files or {}, workdir, uid, namespaces=namespaces
        )
    finally:
        if uid is not None:
            _sweep_uid(uid)
        _rmtree(workdir)
        if slot is not None:
            _slot_queue.put(slot)
    if res.status == PASSED and success_token is not None and success_token not in res.stdout:
        return dataclasses.replace(
            res, status=FAILED, reason="exited with 0 before the tests finished (no success token)"
        )
    return res


def _run_in(
    source: str,
    fname: str,
    argv_t: tuple[str, ...] | None,
    limits: SandboxLimits,
    files: dict[str, str],
    workdir: str,
    uid: int | None,
    *,
    namespaces: bool,
) -> SandboxResult:
    path = os.path.join(workdir, fname)
    with open(path, "w", encoding="utf-8") as f:
        f.write(source)
    for rel, content in files.items():
        p = os.path.normpath(os.path.join(workdir, rel))
        if not p.startswith(workdir + os.sep):
            raise ValueError(
                f"sandbox file {rel!r} escapes the working directory; use a relative name"
            )
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w", encoding="utf-8") as f:
            f.write(content)
    if uid is not None:
        for dirpath, _dirnames, filenames in os.walk(workdir):
            os.chown(dirpath, uid, uid)
            for n in filenames:
                os.chown(os.path.join(dirpath, n), uid, uid)
        os.chmod(workdir, 0o700)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    cpu_s = limits.cpu_s if limits.cpu_s is not None else max(1, int(-(-limits.timeout_s // 1)))
    as_bytes = limits.memory_mb << 20
    status_r, status_w = os.pipe()
    spec = {
        "workdir": workdir,
        "file": path,
        "argv": _resolve_argv([a.format(file=path) for a in argv_t]) if argv_t else None,
        "env": env,
        "preload": list(PRELOAD_MODULES),
        "namespaces": namespaces,
        "tmpfs_mb": limits.max_disk_mb,
        "uid": uid,
        "gid": uid,
        "status_fd": status_w,
        "limits": {
            "cpu_s": cpu_s,
            "as_bytes": as_bytes,
            "file_bytes": limits.max_file_bytes,
            "open_files": limits.max_open_files,
            "processes": limits.max_processes,
        },
    }
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER, marshal.dumps(spec).hex()],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=(status_w,),
        )
    finally:
        os.close(status_w)
    out = {"stdout": bytearray(), "stderr": bytearray()}
    overflow = None
    timed_out = False
    deadline = t0 + limits.timeout_s
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    exited_at = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 0.5:
                break  # launcher gone but a stray process still holds the pipes
            for key, _ in sel.select(min(deadline - now, 0.1)):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                buf = out[key.data]
                buf += data
                if len(buf) > limits.max_output_bytes:
                    del buf[limits.max_output_bytes :]
                    overflow = key.data
            if overflow:
                break
    finally:
        sel.close()
        _killpg(proc.pid)  # the launcher is not reaped yet, so its pgid cannot be reused
        if uid is not None:
            _sweep_uid(uid)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    wall = time.monotonic() - t0
    status_lines = b""
    os.set_blocking(status_r, False)
    try:
        while True:
            chunk = os.read(status_r, 65536)
            if not chunk:
                break
            status_lines += chunk
    except BlockingIOError:
        pass
    finally:
        os.close(status_r)
    info: dict[str, Any] = {}
    for line in status_lines.decode(errors="replace").splitlines():
        try:
            info.update(ast.literal_eval(line))
        except (ValueError, SyntaxError, TypeError):
            pass
    stdout = out["stdout"].decode("utf-8", errors="replace")
    stderr = out["stderr"].decode("utf-8", errors="replace")
    isolation = dict(info.get("isolation") or {})
    isolation["root"] = uid is not None
    common = dict(stdout=stdout, stderr=stderr, wall_s=wall, isolation=isolation)
    if overflow:
        return SandboxResult(
            CRASHED,
            f"output limit exceeded ({overflow} > {limits.max_output_bytes} bytes)",
            **common,
        )
    if timed_out:
        return SandboxResult(TIMEOUT, f"wall time limit ({limits.timeout_s:g}s) exceeded", **common)
    if "setup_error" in info:
        return SandboxResult(CRASHED, f"sandbox setup failed: {info['setup_error']}", **common)
    if "exit" in info:
        code = int(info["exit"])
        if code == 0:
            return SandboxResult(PASSED, "exit code 0", exit_code=0, **common)
        last = _last_line(stderr)
        if code == 97 and last.startswith("sandbox "):
            return SandboxResult(CRASHED, last, exit_code=code, **common)
        if "MemoryError" in last:
            return SandboxResult(
                CRASHED, f"memory limit ({limits.memory_mb} MB): {last}", exit_code=code, **common
            )
        return SandboxResult(FAILED, last or f"exit code {code}", exit_code=code, **common)
    if "signal" in info:
        sig = int(info["signal"])
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXCPU:
            return SandboxResult(
                TIMEOUT, f"cpu time limit ({cpu_s}s) exceeded", signal=sig, **common
            )
        return SandboxResult(CRASHED, f"killed by {name}", signal=sig, **common)
    rc = proc.returncode
    return SandboxResult(
        CRASHED,
        f"sandbox launcher ended without a report (return code {rc}); the program killed it",
        exit_code=rc,
        **common,
    )


@dataclasses.dataclass(frozen=True)
class Program:
    """One job for `run_programs`."""

    source: str
    language: str = "python"
    files: dict[str, str] | None = None
    success_token: str | None = None


def run_programs(
    programs: Sequence[Program | str],
    *,
    limits: SandboxLimits | None = None,
    workers: int = 2,
    namespaces: bool = True,
) -> list[SandboxResult]:
    """Run many programs in parallel worker threads (each launches its own sandbox).

    Results are in input order. Threads suffice: the work happens in child processes.
    """
    jobs = [p if isinstance(p, Program) else Program(p) for p in programs]
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    def one(p: Program) -> SandboxResult:
        return run_program(
            p.source,
            language=p.language,
            limits=limits,
            files=p.files,
            namespaces=namespaces,
            success_token=p.success_token,
        )

    if workers == 1 or len(jobs) <= 1:
        return [one(p) for p in jobs]
    with ThreadPoolExecutor(max_workers=min(workers, _SLOTS)) as ex:
        return list(ex.map(one, jobs))


def make_token() -> str:
    """A fresh random success token (see run_program)."""
    return "__ZCJ_TESTS_DONE_" + secrets.token_hex(8) + "__"


_lock = threading.Lock()


def isolation_report() -> dict[str, Any]:
    """What isolation a trivial program gets on this machine (for docs and logs)."""
    with _lock:
        r = run_program("print('ok')", limits=SandboxLimits(timeout_s=10))
    return {"status": r.status, **r.isolation}
