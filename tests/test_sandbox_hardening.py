"""The second round of sandbox attacks (issue 18): shared kernel objects, pinned memory,
nested user namespaces and the fork oracle. Each test here scored the attack a success
(or left the object behind) on the sandbox before the hardening.

Namespace-dependent guarantees are asserted where this process may create namespaces
(root with CAP_SYS_ADMIN: how CI and the dev machines run the tests).
"""

import ctypes
import os

import pytest

from zen_code_jax.eval import humaneval
from zen_code_jax.eval.sandbox import PASSED, Program, SandboxLimits, run_program, run_programs

ROOT = os.geteuid() == 0
LIMITS = SandboxLimits(timeout_s=30.0, memory_mb=512)
LIBC = ctypes.CDLL(None, use_errno=True)
# Per test process, so concurrent test runs never see each other's objects.
KEY = 0x5A430000 | (os.getpid() & 0xFFFF)
MQ_NAME = f"/zcj-test-{os.getpid()}".encode()
ISSUE_KEY = 0x5A434A77  # the issue's minimal repro


def _host_shm() -> dict[int, tuple[int, int]]:
    """The host's SysV shm segments: id -> (key, owner uid)."""
    with open("/proc/sysvipc/shm") as f:
        rows = [r.split() for r in f.read().splitlines()[1:] if r.split()]
    return {int(r[1]): (int(r[0]) & 0xFFFFFFFF, int(r[7])) for r in rows}


def _host_shm_keys() -> set[int]:
    return {key for key, _uid in _host_shm().values()}


def _host_remove_ipc(key: int) -> None:
    """Remove what a run left in the host's IPC namespace (so a failing test cleans up)."""
    for get, ctl, args in (
        (LIBC.shmget, LIBC.shmctl, (0, 0)),
        (LIBC.msgget, LIBC.msgctl, (0,)),
        (LIBC.semget, LIBC.semctl, (0, 0)),
    ):
        ident = get(key, *args)
        if ident >= 0:
            ctl(ident, 0, None) if ctl is not LIBC.semctl else ctl(ident, 0, 0)  # IPC_RMID


@pytest.fixture
def host_ipc_cleanup():
    before = set(_host_shm())
    yield
    # Private segments a sandboxed program (a slot uid, or nobody) left on the host.
    for i, (key, uid) in _host_shm().items():
        if i not in before and key == 0 and (uid == 65534 or uid >= 1_900_000):
            LIBC.shmctl(i, 0, None)
    for key in (KEY, ISSUE_KEY):
        _host_remove_ipc(key)
    LIBC.mq_unlink(MQ_NAME)


def test_the_issues_shm_repro_does_not_outlive_the_run(host_ipc_cleanup):
    first = run_program(
        f"import ctypes;print(ctypes.CDLL(None).shmget({ISSUE_KEY},64<<20,0o1666))", limits=LIMITS
    )
    second = run_program(
        f"import ctypes;print(ctypes.CDLL(None).shmget({ISSUE_KEY},0,0))", limits=LIMITS
    )
    assert first.status == PASSED and second.status == PASSED, (first, second)
    assert second.stdout.strip() == "-1", (first.stdout, second.stdout)
    assert ISSUE_KEY not in _host_shm_keys()
    if ROOT:
        assert first.isolation["ipc_ns"] is True


CREATE_IPC = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
KEY, NAME = {key}, {name!r}
shm = libc.shmget(KEY, 1 << 16, 0o1666)
msg = libc.msgget(KEY, 0o1666)
sem = libc.semget(KEY, 4, 0o1666)
mq = libc.mq_open(NAME, os.O_CREAT | os.O_RDWR, 0o666, None)
print(shm, msg, sem, mq)
assert min(shm, msg, sem, mq) >= 0, ctypes.get_errno()
"""

OPEN_IPC = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
KEY, NAME = {key}, {name!r}
print(libc.shmget(KEY, 0, 0), libc.msgget(KEY, 0), libc.semget(KEY, 0, 0),
      libc.mq_open(NAME, os.O_RDWR))
"""


def test_sysv_and_posix_ipc_objects_die_with_the_run(host_ipc_cleanup):
    made = run_program(CREATE_IPC.format(key=KEY, name=MQ_NAME), limits=LIMITS)
    if made.isolation.get("sysv_ipc", True):
        assert made.status == PASSED, made  # a program may use IPC within its run
    if ROOT:
        assert made.isolation["ipc_ns"] and made.isolation["sysv_ipc"], made
    later = run_program(OPEN_IPC.format(key=KEY, name=MQ_NAME), limits=LIMITS)
    assert later.status == PASSED, later
    assert later.stdout.split() == ["-1"] * 4, (made.stdout, later.stdout)
    # ... and nothing of it is left on the host.
    assert KEY not in _host_shm_keys()
    assert LIBC.msgget(KEY, 0) == -1 and LIBC.semget(KEY, 0, 0) == -1
    assert LIBC.mq_open(MQ_NAME, os.O_RDWR) == -1


SHM_256 = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmdt.argtypes = [ctypes.c_void_p]
for n in range(8):  # 8 x 32 MiB, each detached again: no longer in the address space
    i = libc.shmget(0, 32 << 20, 0o1600)
    assert i >= 0, ("shmget", n, ctypes.get_errno())
    a = libc.shmat(i, None, 0)
    ctypes.memset(a, 1, 32 << 20)
    libc.shmdt(a)
print("held 256 MiB of SysV shm")
"""


def test_sysv_shared_memory_is_capped_within_a_run(host_ipc_cleanup):
    """Detached SysV shm is outside RLIMIT_AS; the run's IPC namespace caps it."""
    before = set(_host_shm())
    try:
        res = run_program(SHM_256, limits=SandboxLimits(timeout_s=30.0, memory_mb=128))
    finally:  # without an IPC namespace the segments would stay on the host: remove them
        left = {i for i, (key, uid) in _host_shm().items() if i not in before and key == 0}
        for i in left:
            LIBC.shmctl(i, 0, None)
    assert res.status != PASSED, res
    assert left == set()


MEMFD_768 = """
import os
fds = []
for i in range(48):  # 48 x 16 MiB = 768 MiB, under RLIMIT_FSIZE per file
    fd = os.memfd_create(f"m{i}")
    os.posix_fallocate(fd, 0, 16 << 20)
    fds.append(fd)
print("holding", 16 * len(fds), "MiB in memfd files")
"""


def test_memfd_files_count_against_the_memory_limit():
    res = run_program(MEMFD_768, limits=LIMITS)
    assert res.status != PASSED, res
    # A legitimate program using 300 MiB of lists under the same limit still passes.
    ok = run_program(
        "a = [[i] * 1000 for i in range(37000)]\nprint(sum(len(x) for x in a))", limits=LIMITS
    )
    assert ok.status == PASSED and ok.stdout.strip() == "37000000", ok


USERNS = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
libc.prctl(4, 1)  # PR_SET_DUMPABLE: our /proc/self/*_map become ours to write
uid, gid = os.getuid(), os.getgid()
assert libc.unshare(0x10000000 | 0x00020000) == 0, ("unshare", ctypes.get_errno())
with open("/proc/self/setgroups", "w") as f:
    f.write("deny")
with open("/proc/self/uid_map", "w") as f:
    f.write(f"0 {uid} 1")
with open("/proc/self/gid_map", "w") as f:
    f.write(f"0 {gid} 1")
os.makedirs("big", exist_ok=True)
assert libc.mount(b"tmpfs", b"big", b"tmpfs", 0, b"size=256m") == 0, ctypes.get_errno()
chunk = b"x" * (1 << 20)
for i in range(6):  # 6 x 16 MiB = 96 MiB, past the 64 MiB /tmp quota
    with open(f"big/f{i}", "wb") as f:
        for _ in range(16):
            f.write(chunk)
print("wrote 96 MiB")
"""


def test_no_new_user_namespace_inside_the_sandbox():
    res = run_program(USERNS, limits=SandboxLimits(timeout_s=30.0, memory_mb=512))
    assert res.status != PASSED, res
    assert "unshare" in res.stderr, res  # refused at the unshare, not later
    clone = run_program(
        "import ctypes, os\n"
        "r = ctypes.CDLL(None, use_errno=True).unshare(0x10000000)\n"
        "assert r == 0, ctypes.get_errno()\n",
        limits=LIMITS,
    )
    assert clone.status != PASSED, clone


# A wrong HumanEval/0 solution that asks a forked child: the child answers True and lets
# the test line run; if the assertion fails the child dies with status 1, if it passes the
# child exits 0 at its next call. The parent returns what the child's exit status says.
FORK_ORACLE = """    import os
    g = has_close_elements.__globals__
    if g.get("_oracle_child"):
        os._exit(0)
    pid = os.fork()
    if pid == 0:
        g["_oracle_child"] = True
        os.closerange(3, 4096)  # the epilogue's pipe: a child must not hand in a verdict
        return True
    _, st = os.waitpid(pid, 0)
    return os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0
"""


def test_the_fork_oracle_fails_under_a_single_process_harness():
    he0 = humaneval.load_problems()[0]
    lim = SandboxLimits(timeout_s=60.0)
    res = humaneval.score_completions(
        [he0], {he0["task_id"]: [FORK_ORACLE]}, limits=lim, workers=1, ks=(1,), truncate=False
    )
    (rec,) = res.records
    assert not rec["passed"], rec
    # The same completion run as an ordinary multi-process program shows the oracle works.
    src = humaneval.build_program(he0, FORK_ORACLE)
    free = run_program(src, limits=lim, verdict=True)
    assert free.status == PASSED, free


def test_canonical_solutions_pass_under_a_single_process_harness():
    probs = humaneval.load_problems()
    comps = {p["task_id"]: [p["canonical_solution"]] for p in probs}
    res = humaneval.score_completions(
        probs, comps, limits=SandboxLimits(timeout_s=60.0), workers=2, ks=(1,), truncate=False
    )
    failed = {r["task_id"]: r["reason"] for r in res.records if not r["passed"]}
    assert failed == {}
    assert all(r["passed"] for r in res.records)


SPAWNS = """
import os, subprocess, threading
out = []
t = threading.Thread(target=lambda: out.append(1))
t.start()
t.join()
assert out == [1]  # threads still work


def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


for f in (fork, lambda: subprocess.run(["true"])):
    try:
        f()
    except OSError as e:
        print("refused", e.errno)
    else:
        print("allowed")
"""


def test_single_process_refuses_fork_and_subprocess_but_allows_threads():
    jobs = [Program(SPAWNS, single_process=True), Program(SPAWNS)]
    one, free = run_programs(jobs, limits=LIMITS)
    assert one.status == PASSED, one
    assert one.stdout.split() == ["refused", "1", "refused", "1"], one
    assert one.isolation.get("single_process") is True
    assert free.status == PASSED and free.stdout.split() == ["allowed", "allowed"], free


def test_without_an_ipc_namespace_sysv_ipc_is_refused(host_ipc_cleanup):
    """Rlimits-only mode: no namespace to hold SysV objects, so the filter refuses them
    (they would stay on the host after the run)."""
    res = run_program(CREATE_IPC.format(key=KEY, name=MQ_NAME), limits=LIMITS, namespaces=False)
    assert res.status != PASSED and res.isolation["sysv_ipc"] is False, res
    assert KEY not in _host_shm_keys()
    assert LIBC.msgget(KEY, 0) == -1 and LIBC.semget(KEY, 0, 0) == -1


ATTACKS = {
    "memfd": MEMFD_768,
    "userns": USERNS,
    "shm": SHM_256,
    "create": CREATE_IPC.format(key=KEY, name=MQ_NAME),
    "open": OPEN_IPC.format(key=KEY, name=MQ_NAME),
}
AS_USER_ATTACKS = (
    "import json\n"
    "from zen_code_jax.eval.sandbox import Program, SandboxLimits, run_program, run_programs\n"
    "L = SandboxLimits(timeout_s=30.0, memory_mb=512)\n"
    "out = {}\n"
    f"for name, src in {ATTACKS!r}.items():\n"
    "    r = run_program(src, limits=L)\n"
    "    out[name] = [r.status, r.stdout.strip(), r.isolation]\n"
    f"(one,) = run_programs([Program({SPAWNS!r}, single_process=True)], limits=L)\n"
    "out['spawns'] = [one.status, one.stdout.strip(), one.isolation]\n"
    "print(json.dumps(out))\n"
)


def test_the_attacks_fail_for_an_ordinary_user_evaluator_too(host_ipc_cleanup):
    import json

    from test_sandbox_trust import run_as_ordinary_user

    out = json.loads(run_as_ordinary_user(AS_USER_ATTACKS).strip().splitlines()[-1])
    for name in ("memfd", "userns", "shm"):
        assert out[name][0] != PASSED, (name, out[name])
    # SysV objects are refused (no IPC limits in an unprivileged namespace) or die with the
    # run; the POSIX queue dies with the run's IPC namespace.
    assert out["open"][0] == PASSED and out["open"][1].split() == ["-1"] * 4, out
    assert out["spawns"][1].split() == ["refused", "1", "refused", "1"], out["spawns"]
    assert KEY not in _host_shm_keys() and LIBC.mq_open(MQ_NAME, os.O_RDWR) == -1


def test_the_filter_is_built_per_architecture_and_option():
    from zen_code_jax.eval.sandbox.seccomp import filter_program

    assert filter_program(machine="riscv64") is None  # no table: no filter, recorded
    for machine in ("x86_64", "aarch64"):
        base = filter_program(machine=machine)
        one = filter_program(True, machine=machine)
        no_ipc = filter_program(sysv_ipc=False, machine=machine)
        assert len(base) % 8 == 0 and len(base) // 8 < 256
        assert len(one) > len(base) and len(no_ipc) == len(base) + 3 * 2 * 8
    # aarch64 has no fork/vfork numbers: only the clone check grows.
    assert (
        len(filter_program(True, machine="x86_64")) - len(filter_program(machine="x86_64")) == 6 * 8
    )
    assert (
        len(filter_program(True, machine="aarch64")) - len(filter_program(machine="aarch64"))
        == 2 * 8
    )
