"""Start the launcher for one program, enforce the wall clock and output caps, read the result.

Why threads and no `preexec_fn`: every run is its own `launcher.py` process (started with
`python -I -S`, in a new session, with the spec marshalled on its command line), so the
parent only waits, reads pipes and kills; launching from many threads at once is safe.
See the package docstring for the isolation each program gets.
"""

from __future__ import annotations

import ast
import dataclasses
import marshal
import os
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

from zen_code_jax.eval.sandbox.seccomp import filter_program
from zen_code_jax.eval.sandbox.spec import (
    CRASHED,
    FAILED,
    IPC_SYSCTLS,
    LANGUAGES,
    MSGQUEUE_BYTES,
    PASSED,
    PRELOAD_MODULES,
    TIMEOUT,
    Program,
    SandboxLimits,
    SandboxResult,
    make_token,
)
from zen_code_jax.eval.sandbox.uids import SLOTS, acquire_uid, is_root, release_uid, sweep_uid
from zen_code_jax.eval.sandbox.view import python_view

# The trusted launcher script (stdlib only; runs before the program, partly as root).
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.py")


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
    verdict: bool = False,
    single_process: bool = False,
) -> SandboxResult:
    """Run one untrusted program to completion in the sandbox; never raises for its behaviour.

    `files` are extra files written into the working directory (relative names).
    With `verdict` (Python only; what test harnesses use), exit code 0 counts as passed only
    with the trusted epilogue's verdict: the launcher's epilogue runs when the program's
    top-level code has returned, and the waiting process, outside the program's reach, then
    reports a fresh token that never enters the program's source, argv, environment, files
    or memory. A program that ends early (`os._exit(0)`, `sys.exit()`, an exception) or
    prints a look-alike fails. What an adversarial program can still do: docs/sandbox.md.
    `success_token` is the older, forgeable check (the token must appear on stdout).
    With `single_process`, the program may not create processes (threads still work):
    test harnesses that call the candidate in-process use it against the fork oracle.
    Where the seccomp filter is unavailable (an unknown architecture) the option cannot be
    honoured, and such a program is scored crashed rather than trusted.
    """
    limits = limits or SandboxLimits()
    if language not in LANGUAGES:
        raise ValueError(
            f"Unknown sandbox language {language!r}; supported: {sorted(LANGUAGES)}. "
            "Add an entry to zen_code_jax.eval.sandbox.LANGUAGES for a new interpreter."
        )
    fname, argv_t = LANGUAGES[language]
    if verdict and argv_t is not None:
        raise ValueError(
            f"verdict=True needs the in-process Python epilogue; {language!r} programs are "
            "scored by exit code (pass verdict=False)."
        )
    token = make_token()
    root = is_root()
    uid = acquire_uid() if root else None
    # Under /tmp when root: the launcher re-creates the same path inside its private /tmp.
    workdir = tempfile.mkdtemp(prefix="zcj-sandbox-", dir="/tmp" if root else None)
    try:
        res = _run_in(
            source,
            fname,
            argv_t,
            limits,
            files or {},
            workdir,
            uid,
            namespaces,
            token,
            single_process,
        )
    finally:
        if uid is not None:
            sweep_uid(uid)
        _rmtree(workdir)
        if uid is not None:
            release_uid(uid)
    if res.status == PASSED and single_process and not res.isolation.get("single_process"):
        return dataclasses.replace(
            res,
            status=CRASHED,
            reason="single_process was asked for, but this machine has no seccomp filter "
            "for its architecture (see eval/sandbox/seccomp.py ARCHES)",
        )
    if res.status == PASSED and verdict and not res.verdict:
        return dataclasses.replace(
            res,
            status=FAILED,
            reason="exited with 0 before its top-level code finished (no trusted verdict: "
            "os._exit, sys.exit or a forged pass)",
        )
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
    namespaces: bool,
    token: str,
    single_process: bool,
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
    # The verdict token waits in a pipe only the launcher holds (never argv, env or files).
    secret_r, secret_w = os.pipe()
    os.write(secret_w, token.encode())
    os.close(secret_w)
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
        "secret_fd": secret_r,
        "ipc_sysctls": IPC_SYSCTLS,
        # The launcher picks the second where it could not bound the run's IPC objects.
        "seccomp": filter_program(single_process),
        "seccomp_no_sysv_ipc": filter_program(single_process, sysv_ipc=False),
        "single_process": single_process,
        "view": python_view(tuple(limits.packages)) if argv_t is None else None,
        "limits": {
            "cpu_s": cpu_s,
            "as_bytes": as_bytes,
            "file_bytes": limits.max_file_bytes,
            "open_files": limits.max_open_files,
            "processes": limits.max_processes,
            "msgqueue_bytes": MSGQUEUE_BYTES,
        },
    }
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", LAUNCHER, marshal.dumps(spec).hex()],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=(status_w, secret_r),
        )
    finally:
        os.close(status_w)
        os.close(secret_r)
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
            sweep_uid(uid)
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
    got_verdict = info.get("verdict") == token
    common = dict(
        stdout=stdout, stderr=stderr, wall_s=wall, isolation=isolation, verdict=got_verdict
    )
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
            verdict=p.verdict,
            single_process=p.single_process,
        )

    if workers == 1 or len(jobs) <= 1:
        return [one(p) for p in jobs]
    with ThreadPoolExecutor(max_workers=min(workers, SLOTS)) as ex:
        return list(ex.map(one, jobs))


_lock = threading.Lock()


def isolation_report() -> dict[str, Any]:
    """What isolation a trivial program gets on this machine (for docs and logs)."""
    with _lock:
        r = run_program("print('ok')", limits=SandboxLimits(timeout_s=10))
    return {"status": r.status, **r.isolation}
