"""Adversarial tests: the host and the evaluation survive hostile programs.

Root-only guarantees (dedicated uid, network/PID namespaces) are asserted when the tests
run as root, which is how CI and the dev machines run them.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from zen_code_jax.eval import sandbox
from zen_code_jax.eval.sandbox import (
    CRASHED,
    FAILED,
    PASSED,
    TIMEOUT,
    Program,
    SandboxLimits,
    run_program,
    run_programs,
)

ROOT = os.geteuid() == 0


def _os_allows_namespaces() -> bool:
    """Probe, independently of the sandbox code, whether this process may create network,
    PID and mount namespaces (root with CAP_SYS_ADMIN). Where it may, the sandbox must."""
    probe = "import ctypes, sys; sys.exit(ctypes.CDLL(None).unshare(0x40000000 | 0x20000000 | 0x20000) != 0)"
    return ROOT and subprocess.run([sys.executable, "-c", probe]).returncode == 0


NS = _os_allows_namespaces()
FAST = SandboxLimits(timeout_s=5.0, cpu_s=1, memory_mb=512)


def assert_host_ok():
    """The evaluator can still fork and exec after the program."""
    assert subprocess.run(["true"], check=False).returncode == 0


def test_correct_program_passes_and_wrong_one_fails():
    ok = run_program("def f(x):\n    return x + 1\nassert f(1) == 2\nprint('done')", limits=FAST)
    assert ok.status == PASSED and ok.stdout.strip() == "done", ok
    bad = run_program("def f(x):\n    return x + 2\nassert f(1) == 2", limits=FAST)
    assert bad.status == FAILED and "AssertionError" in bad.reason, bad
    syn = run_program("def f(:\n", limits=FAST)
    assert syn.status == FAILED and "SyntaxError" in syn.reason, syn


def test_success_token_rejects_early_exit():
    tok = sandbox.make_token()
    early = run_program(f"import os\nos._exit(0)\nprint({tok!r})", limits=FAST, success_token=tok)
    assert early.status == FAILED and "success token" in early.reason
    full = run_program(f"print({tok!r})", limits=FAST, success_token=tok)
    assert full.status == PASSED


def test_infinite_loop_hits_cpu_limit_and_sleep_hits_wall_limit():
    t0 = time.monotonic()
    # A generous wall limit so the CPU limit fires first even on a heavily loaded machine.
    r = run_program("while True:\n    pass", limits=SandboxLimits(timeout_s=60.0, cpu_s=1))
    assert r.status == TIMEOUT and "cpu" in r.reason, r
    s = run_program("import time\ntime.sleep(60)", limits=SandboxLimits(timeout_s=1.0))
    assert s.status == TIMEOUT and "wall" in s.reason, s
    assert time.monotonic() - t0 < 40
    assert_host_ok()


def test_fork_bomb_is_contained():
    src = (
        "import os\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            os.setsid()\n"  # try to escape the process group, too
        "    except OSError:\n"
        "        pass\n"
    )
    t0 = time.monotonic()
    r = run_program(src, limits=SandboxLimits(timeout_s=2.0, cpu_s=2, max_processes=16))
    assert r.status in (TIMEOUT, CRASHED), r
    assert time.monotonic() - t0 < 10
    if ROOT:
        assert r.isolation["uid"] is not None
        time.sleep(0.2)
        assert sandbox.pids_of_uid(r.isolation["uid"]) == []  # nothing survived
    assert_host_ok()


def test_memory_bomb_is_contained():
    r = run_program("x = []\nwhile True:\n    x.append(bytearray(50_000_000))", limits=FAST)
    assert r.status == CRASHED and "memory" in r.reason, r
    big = run_program("x = bytearray(4_000_000_000)", limits=FAST)
    assert big.status == CRASHED and "memory" in big.reason, big
    assert_host_ok()


def test_printing_gigabytes_is_capped():
    limits = SandboxLimits(timeout_s=10.0, max_output_bytes=1 << 16)
    t0 = time.monotonic()
    r = run_program("import sys\nwhile True:\n    sys.stdout.write('x' * 1_000_000)", limits=limits)
    assert r.status == CRASHED and "output limit" in r.reason, r
    assert len(r.stdout) <= 1 << 16
    assert time.monotonic() - t0 < 15
    e = run_program("import sys\nwhile True:\n    sys.stderr.write('y' * 1_000_000)", limits=limits)
    assert e.status == CRASHED and "stderr" in e.reason


def test_file_size_limit_and_workdir_is_fresh_and_deleted():
    r = run_program(
        "import os\nprint(os.getcwd())\nprint(os.listdir('.'))\n"
        "open('big', 'wb').write(b'0' * 10_000_000)",
        limits=SandboxLimits(timeout_s=5.0, max_file_bytes=1 << 20),
    )
    assert r.status in (CRASHED, FAILED) and r.status != PASSED, r
    cwd, listing = r.stdout.splitlines()[:2]
    assert listing == "['program.py']"
    assert not os.path.exists(cwd)


@pytest.mark.skipif(not ROOT, reason="filesystem protection needs root (runs as a dedicated uid)")
def test_cannot_delete_files_outside_workdir():
    # A root-owned directory on the host filesystem, outside the tmp dirs (those are private
    # tmpfs in the sandbox, so a checkout under /tmp would be invisible, not protected).
    d = tempfile.mkdtemp(prefix="zcj-sentinel-", dir="/var/lib")
    os.chmod(d, 0o755)
    sentinel = os.path.join(d, "sentinel.txt")
    with open(sentinel, "w") as f:
        f.write("keep me")
    try:
        r = run_program(f"import os\nos.remove({sentinel!r})", limits=FAST)
        assert r.status == FAILED and "PermissionError" in r.reason, r
        r2 = run_program(f"import shutil\nshutil.rmtree({d!r})", limits=FAST)
        assert r2.status == FAILED and "PermissionError" in r2.reason, r2
        r3 = run_program(f"open({os.path.join(d, 'new')!r}, 'w').write('x')", limits=FAST)
        assert r3.status == FAILED and "PermissionError" in r3.reason, r3
        assert open(sentinel).read() == "keep me"
        assert os.listdir(d) == ["sentinel.txt"]
    finally:
        os.remove(sentinel)
        os.rmdir(d)


@pytest.mark.skipif(not NS, reason="private tmpfs mounts need root with CAP_SYS_ADMIN")
def test_tmp_is_private_and_size_limited():
    host_file = tempfile.NamedTemporaryFile(prefix="zcj-host-", dir="/tmp", delete=False)
    host_file.close()
    try:
        src = (
            "import os\n"
            f"print(os.path.exists({host_file.name!r}), flush=True)\n"
            "for i in range(100):\n"
            "    open(f'/tmp/fill{i}', 'wb').write(b'0' * (1 << 20))\n"
        )
        r = run_program(src, limits=SandboxLimits(timeout_s=20.0, max_disk_mb=8))
        assert r.isolation["mount_ns"] is True
        assert r.stdout.split() == ["False"]  # the host's /tmp is invisible
        assert r.status == FAILED and "No space left" in r.reason, r
        assert not any(n.startswith("fill") for n in os.listdir("/tmp"))
    finally:
        os.remove(host_file.name)


def test_killing_the_parent_does_not_kill_the_evaluator():
    me = os.getpid()
    src = (
        "import os, signal\n"
        f"for target in (os.getppid(), {me}):\n"
        "    try:\n"
        "        os.kill(target, signal.SIGKILL)\n"
        "    except OSError as e:\n"
        "        print('denied', target, e, flush=True)\n"
        "try:\n"
        "    os.killpg(os.getpgid(0), signal.SIGKILL)\n"
        "except OSError:\n"
        "    pass\n"
        "import time\ntime.sleep(0.5)\n"
    )
    results = run_programs([src, "print('after')"], limits=FAST, workers=2)
    assert os.getpid() == me  # we are alive
    assert results[0].status in (PASSED, FAILED, CRASHED)
    assert results[1].status == PASSED  # the evaluation goes on
    if ROOT:
        assert f"denied {me}" in results[0].stdout  # a different uid cannot signal us


def test_network_is_unreachable():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    try:
        # The listener works from the host: the sandboxed failure below is the sandbox's doing.
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        src = (
            "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "print('connected')\n"
        )
        r = run_program(src, limits=FAST)
        if NS:
            assert r.isolation["net_ns"] is True
            assert r.status == FAILED and "connected" not in r.stdout, r
        elif r.isolation.get("net_ns"):
            assert r.status == FAILED
    finally:
        srv.close()


def test_parallel_workers_keep_order_and_isolation():
    progs = [f"assert {i} % 3 != 0\nprint({i})" for i in range(8)]
    rs = run_programs(progs, limits=FAST, workers=2)
    assert [r.status for r in rs] == [FAILED if i % 3 == 0 else PASSED for i in range(8)]
    assert [r.stdout.strip() for r in rs if r.passed] == [str(i) for i in range(8) if i % 3]
    if ROOT:
        assert all(r.isolation["uid"] is not None for r in rs)
    if NS:
        assert all(r.isolation["pid_ns"] and r.isolation["mount_ns"] for r in rs)


def test_other_languages_and_bad_language():
    r = run_program("echo hi; exit 3", language="shell", limits=FAST)
    assert r.status == FAILED and r.stdout.strip() == "hi" and r.exit_code == 3
    with pytest.raises(ValueError, match="supported"):
        run_program("x", language="cobol")
    rs = run_programs([Program("exit 0", language="shell")], limits=FAST)
    assert rs[0].passed


def test_signal_names_in_reasons():
    r = run_program("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", limits=FAST)
    assert r.status == CRASHED and "SIGSEGV" in r.reason, r


def test_rlimits_only_mode_still_scores_correctly():
    """namespaces=False is the fallback where unshare is not allowed."""
    rs = run_programs(
        ["print('x')", "assert False", "while True:\n    pass"],
        limits=SandboxLimits(timeout_s=60.0, cpu_s=1),
        workers=2,
        namespaces=False,
    )
    assert [r.status for r in rs] == [PASSED, FAILED, TIMEOUT]
    assert not rs[0].isolation["net_ns"] and not rs[0].isolation["pid_ns"]


def test_launcher_is_a_stdlib_only_script():
    """The launcher runs isolated (`python -I -S`), partly as root: it may import nothing
    outside the standard library, and no `__future__` (the program's compile inherits it)."""
    import ast

    tree = ast.parse(open(sandbox.LAUNCHER, encoding="utf-8").read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    assert names and names <= set(sys.stdlib_module_names) - {"__future__"}, names


def test_program_sees_the_launcher_globals_it_always_saw():
    """Python programs run in the launcher's namespace as `__main__` (unchanged behaviour:
    e.g. a completion using `sys` without importing it)."""
    r = run_program("print(__name__, __file__, __doc__, sys.argv)", limits=FAST)
    assert r.passed and r.stdout.split() == ["__main__", "program.py", "None", "['program.py']"]


def test_uid_pool_is_built_lazily_and_hands_out_distinct_uids():
    from concurrent.futures import ThreadPoolExecutor

    code = (
        "import zen_code_jax.eval.sandbox as s, zen_code_jax.eval.sandbox.uids as u; "
        "assert u._pool is None, 'built at import'"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    from zen_code_jax.eval.sandbox import uids

    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(lambda _: uids.acquire_uid(), range(32)))
    try:
        assert len(set(got)) == 32
    finally:
        for uid in got:
            uids.release_uid(uid)
