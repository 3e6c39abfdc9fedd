"""Trust in sandbox verdicts: programs see the whole stdlib (and only the listed packages),
and a completion cannot forge a pass.

The stdlib tests run as root (the evaluator root, the program a dedicated uid) and as an
ordinary user (the evaluator itself unprivileged: when the tests run as root, a helper
switches to `nobody` in a mount namespace where the interpreter is readable, as it always
is for the user who runs it).
"""

import json
import os
import subprocess
import sys

import pytest

from zen_code_jax.eval import humaneval
from zen_code_jax.eval.sandbox import (
    FAILED,
    PASSED,
    Program,
    SandboxLimits,
    make_token,
    run_program,
    run_programs,
)
from zen_code_jax.eval.sandbox.view import python_view

ROOT = os.geteuid() == 0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMITS = SandboxLimits(timeout_s=60.0, memory_mb=2048)
# Importing these has effects outside the interpreter (antigravity opens a web browser).
SIDE_EFFECTS = {"antigravity"}

PROBE = """
import importlib, json, sys
bad = {}
for name in NAMES:
    try:
        importlib.import_module(name)
    except BaseException as e:
        bad[name] = f"{type(e).__name__}: {e}"
print(json.dumps(bad))
"""


@pytest.fixture(scope="module")
def parent_stdlib():
    """Stdlib modules that import in a fresh `python -I -S` (what the sandbox runs)."""
    names = sorted(set(sys.stdlib_module_names) - SIDE_EFFECTS)
    src = f"NAMES = {names!r}\n" + PROBE
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", src], capture_output=True, text=True, check=True
    )
    bad = json.loads(out.stdout.strip().splitlines()[-1])
    return [n for n in names if n not in bad], len(sys.stdlib_module_names)


def _sandbox_failures(res):
    assert res.status == PASSED, res
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_every_stdlib_module_imports_in_the_sandbox(parent_stdlib):
    names, total = parent_stdlib
    res = run_program(f"NAMES = {names!r}\n" + PROBE, limits=LIMITS, verdict=True)
    assert _sandbox_failures(res) == {}
    if ROOT:
        assert res.isolation["uid"] is not None  # the program ran as an unprivileged uid
    print(f"stdlib coverage (root evaluator): {len(names)}/{len(names)} of the {total} names")


AS_USER = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
assert libc.unshare(0x00020000) == 0, "unshare(CLONE_NEWNS)"
assert libc.mount(None, b"/", None, 16384 | (1 << 18), None) == 0
# The interpreter's directories, readable (as they are for whoever runs it), each under an
# otherwise empty TOP (the first directory others may not traverse).
fds = {path: os.open(path, os.O_PATH) for path in PATHS}
for top in TOPS:
    assert libc.mount(b"tmpfs", top.encode(), b"tmpfs", 0, b"mode=0755,size=1m") == 0
for path, fd in fds.items():
    os.makedirs(path, exist_ok=True)
    src = f"/proc/self/fd/{fd}".encode()
    assert libc.mount(src, path.encode(), None, 4096 | 16384, None) == 0
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
os.environ.update(HOME="/tmp", TMPDIR="/tmp", PYTHONPATH=REPO)
os.execv(PYTHON, [PYTHON, "-c", CODE])
"""


def _closed_top(path):
    cur = ""
    for part in os.path.realpath(path).split(os.sep)[1:]:
        cur += os.sep + part
        if not os.stat(cur).st_mode & 0o001:
            return cur
    return None


def interpreter_dirs(python: str) -> list[str]:
    """What an interpreter needs readable: its prefix, its base prefix (a venv's
    `bin/python` links to a base interpreter elsewhere, e.g. a pyenv under /root) and the
    directory of the binary the link resolves to."""
    out = subprocess.run(
        [
            python,
            "-c",
            "import json, os, sys; print(json.dumps([sys.prefix, sys.base_prefix, "
            "os.path.dirname(os.path.realpath(sys.executable))]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted({os.path.realpath(p) for p in json.loads(out)})


def run_as_ordinary_user(code, python=sys.executable):
    """Run Python `code` with `python` as an unprivileged evaluator; returns its stdout."""
    if not ROOT:
        return subprocess.run(
            [python, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    tops, paths = set(), []
    for d in interpreter_dirs(python):
        top = _closed_top(d)
        if top is not None:
            tops.add(top)
            paths.append(d)
    helper = (
        f"TOPS={sorted(tops)!r}\nPATHS={paths!r}\nREPO={REPO!r}\nCODE={code!r}\n"
        f"PYTHON={python!r}\n" + AS_USER
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", helper], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_every_stdlib_module_imports_for_an_ordinary_user_too(parent_stdlib):
    names, total = parent_stdlib
    code = (
        "import json, os\n"
        "from zen_code_jax.eval.sandbox import run_program, SandboxLimits\n"
        f"src = {('NAMES = ' + repr(names) + chr(10) + PROBE)!r}\n"
        "r = run_program(src, limits=SandboxLimits(timeout_s=60.0, memory_mb=2048), verdict=True)\n"
        "six = run_program('import pytest', limits=SandboxLimits(timeout_s=20.0))\n"
        "print(json.dumps([os.geteuid(), r.status, r.reason, r.stdout, r.isolation, six.status]))\n"
    )
    euid, status, reason, stdout, iso, unlisted = json.loads(run_as_ordinary_user(code))
    assert euid != 0
    assert status == PASSED, reason
    assert json.loads(stdout.strip().splitlines()[-1]) == {}
    assert unlisted == FAILED  # an unlisted site-package stays out for this user too
    print(f"stdlib coverage (ordinary user): {len(names)}/{len(names)}, isolation {iso}")


def test_only_listed_site_packages_import():
    import numpy
    import pytest as pt

    probe = (
        "import importlib, os, sys\n"
        "for name in ('numpy', 'pytest', '_pytest'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "        print(name, 'ok')\n"
        "    except ImportError:\n"
        "        print(name, 'missing')\n"
        f"print('file', os.path.exists({pt.__file__!r}))\n"
    )
    none = run_program(probe, limits=LIMITS, verdict=True)
    listed = run_program(probe, limits=SandboxLimits(timeout_s=60.0, packages=("numpy",)))
    assert none.passed and listed.passed, (none, listed)
    assert none.stdout.split("\n")[:3] == ["numpy missing", "pytest missing", "_pytest missing"]
    assert listed.stdout.split("\n")[:3] == ["numpy ok", "pytest missing", "_pytest missing"]
    if none.isolation.get("python_view"):
        # Not even by absolute path: the site directory holds only what was listed.
        assert "file False" in none.stdout and "file False" in listed.stdout
        site = os.path.dirname(os.path.dirname(numpy.__file__))
        ls = run_program(
            f"import os\nprint(sorted(os.listdir({site!r})))",
            limits=SandboxLimits(timeout_s=20.0, packages=("numpy",)),
        )
        shown = eval(ls.stdout)
        assert shown and all(n.startswith("numpy") for n in shown), shown
    with pytest.raises(ValueError, match="sandbox_packages"):
        python_view(("no_such_package_zcj",))


def test_the_view_is_read_only_and_hides_the_interpreters_home():
    std = os.path.dirname(os.__file__)
    src = (
        "import os\n"
        f"for p in ({std!r}, os.path.dirname({std!r})):\n"
        "    try:\n"
        "        open(os.path.join(p, 'zcj_probe'), 'w')\n"
        "        print('wrote', p)\n"
        "    except OSError as e:\n"
        "        print('denied', type(e).__name__)\n"
    )
    r = run_program(src, limits=LIMITS)
    assert r.passed and "wrote" not in r.stdout, r
    assert not os.path.exists(os.path.join(std, "zcj_probe"))
    top = _closed_top(sys.prefix)
    if top and r.isolation.get("python_view"):
        ls = run_program(f"import os\nprint(os.listdir({top!r}))", limits=LIMITS)
        first = os.path.relpath(os.path.realpath(sys.prefix), top).split(os.sep)[0]
        assert eval(ls.stdout) == [first], ls  # only the way to the interpreter


# ------------------------------------------------------------------------- forged passes
FORGES = {
    # The token's old home: a literal printed by the program's last line.
    "read program.py": (
        "import os, re\n"
        "src = open('program.py').read()\n"
        "for t in set(re.findall(r'__ZCJ_[A-Za-z0-9_]+__', src)):\n"
        "    print(t)\n"
        "print(src.splitlines()[-1])\n"
    ),
    "read __file__": ("import os\nprint(open(__file__).read())\n"),
    "code object constants": (
        "import sys\n"
        "f = sys._getframe()\n"
        "while f is not None:\n"
        "    for c in f.f_code.co_consts:\n"
        "        print(c)\n"
        "    f = f.f_back\n"
    ),
    "/proc/self/cmdline and environ": (
        "for p in ('/proc/self/cmdline', '/proc/self/environ'):\n"
        "    try:\n"
        "        print(open(p, 'rb').read().decode(errors='replace'))\n"
        "    except OSError as e:\n"
        "        print('denied', e)\n"
    ),
    "parents' cmdline (the launcher's spec)": (
        "import os\n"
        "for pid in {os.getppid(), 1} | {int(p) for p in os.listdir('/proc') if p.isdigit()}:\n"
        "    try:\n"
        "        print(open(f'/proc/{pid}/cmdline', 'rb').read().decode(errors='replace'))\n"
        "    except OSError:\n"
        "        pass\n"
    ),
    "read every open fd": (
        "import os\n"
        "for fd in range(3, 256):\n"
        "    try:\n"
        "        os.set_blocking(fd, False)\n"
        "        print(os.read(fd, 4096))\n"
        "    except OSError:\n"
        "        pass\n"
    ),
    "write look-alike verdicts to every fd": (
        "import os\n"
        "line = repr({'verdict': '__ZCJ_TESTS_DONE_0000000000000000__'}) + '\\n'\n"
        "print(line)\n"
        "for fd in range(3, 256):\n"
        "    try:\n"
        "        os.write(fd, line.encode() + os.urandom(16))\n"
        "    except OSError:\n"
        "        pass\n"
    ),
    "scan the heap for the token": (
        "import gc\n"
        "for o in gc.get_objects():\n"
        "    for v in (o.values() if isinstance(o, dict) else ()):\n"
        "        if isinstance(v, str) and '__ZCJ' in v:\n"
        "            print(v)\n"
    ),
    "launcher memory and fds via /proc": (
        "import os\n"
        "for what in ('mem', 'environ', 'fd/4', 'fd/5'):\n"
        "    try:\n"
        "        print(open(f'/proc/{os.getppid()}/{what}', 'rb').read(64))\n"
        "    except OSError as e:\n"
        "        print('denied', e)\n"
    ),
}
EXITS = {"os._exit(0)": "os._exit(0)", "sys.exit(0)": "sys.exit(0)"}


def _forging_completions():
    """Each route as a function body (runs when the tests call it) and as module-level code
    the completion's dedent reaches (runs before the tests), ending in an early exit."""
    out = {}
    for name, code in FORGES.items():
        for how, exit_ in EXITS.items():
            body = "import os, sys\n" + code + "sys.stdout.flush()\n" + exit_ + "\n"
            indented = "".join("    " + ln + "\n" for ln in body.splitlines())
            out[f"{name} + {how} (in the function)"] = indented
            out[f"{name} + {how} (module level)"] = "    pass\n" + body
    out["raise SystemExit(0)"] = "    raise SystemExit(0)\n"
    out["kill the launcher, then os._exit(0)"] = (
        "    import os, signal\n"
        "    try:\n"
        "        os.kill(os.getppid(), signal.SIGKILL)\n"
        "    except OSError:\n"
        "        pass\n"
        "    os._exit(0)\n"
    )
    return out


@pytest.fixture(scope="module")
def he0():
    return humaneval.load_problems()[0]


def test_no_forge_route_scores_a_pass(he0):
    comps = _forging_completions()
    res = humaneval.score_completions(
        [he0],
        {he0["task_id"]: list(comps.values())},
        limits=LIMITS,
        workers=2,
        ks=(1,),
        truncate=False,  # a model can avoid the stop words; every route must run whole
    )
    got = {name: (r["status"], r["reason"]) for name, r in zip(comps, res.records)}
    assert [n for n, (s, _) in got.items() if s == PASSED] == []
    assert res.metrics["pass@1"] == 0.0
    # Each forgery ran to its exit: it failed for want of the verdict, not by accident.
    odd = {n: r for n, (_, r) in got.items() if "no trusted verdict" not in r}
    assert odd == {}
    canonical = humaneval.score_completions(
        [he0], {he0["task_id"]: [he0["canonical_solution"]]}, limits=LIMITS, ks=(1,)
    )
    assert canonical.metrics["pass@1"] == 1.0


def test_the_same_routes_forged_the_old_stdout_token(he0):
    """The routes are real: against the old harness (token printed by the program's last
    line, checked on stdout) the file, constants and __file__ routes all 'passed'."""
    routes = ["read program.py", "read __file__", "code object constants"]
    jobs = []
    for name in routes:
        body = "import os, sys\n" + FORGES[name] + "sys.stdout.flush()\nos._exit(0)\n"
        comp = "".join("    " + ln + "\n" for ln in body.splitlines())
        tok = make_token()
        src = humaneval.build_program(he0, comp) + f"\nprint({tok!r})\n"
        jobs.append(Program(src, success_token=tok))
    rs = run_programs(jobs, limits=LIMITS, workers=2)
    assert [r.status for r in rs] == [PASSED] * len(routes), [r.reason for r in rs]


def test_known_residual_reaching_into_the_harness_memory(he0):
    """Pinned limitation (docs/sandbox.md): in-process code that walks the interpreter's frames
    to the launcher and calls its epilogue itself forges the verdict. If this starts failing,
    the harness got stronger: update the docs."""
    comp = (
        "    import sys, os\n"
        "    f = sys._getframe()\n"
        "    while f is not None and 'epilogue' not in f.f_globals:\n"
        "        f = f.f_back\n"
        "    f.f_globals['epilogue']()\n"
        "    os._exit(0)\n"
    )
    res = humaneval.score_completions(
        [he0], {he0["task_id"]: [comp]}, limits=LIMITS, workers=1, ks=(1,)
    )
    assert res.records[0]["status"] == PASSED, res.records[0]


def test_verdict_needs_top_level_code_to_return():
    ok = run_program("x = 1\n", limits=LIMITS, verdict=True)
    assert ok.passed and ok.verdict
    for src in ("import os\nos._exit(0)", "import sys\nsys.exit(0)", "raise SystemExit"):
        r = run_program(src, limits=LIMITS, verdict=True)
        assert r.status == FAILED and not r.verdict and "verdict" in r.reason, (src, r)
    late = run_program(
        "import atexit, os\natexit.register(os._exit, 3)", limits=LIMITS, verdict=True
    )
    assert late.status == FAILED and late.verdict and late.exit_code == 3  # exit 0 still needed
    with pytest.raises(ValueError, match="verdict"):
        run_program("exit 0", language="shell", verdict=True)


def test_no_forge_route_scores_a_pass_for_an_ordinary_user_either():
    """Same uid as the launcher here: it must still be unreadable (not dumpable)."""
    comps = {n: c for n, c in _forging_completions().items() if "os._exit(0) (module" in n}
    code = (
        "import json\n"
        "from zen_code_jax.eval import humaneval\n"
        "from zen_code_jax.eval.sandbox import SandboxLimits\n"
        "he0 = humaneval.load_problems()[0]\n"
        f"res = humaneval.score_completions([he0], {{he0['task_id']: {list(comps.values())!r}}},"
        " limits=SandboxLimits(timeout_s=60.0), workers=2, ks=(1,), truncate=False)\n"
        "print(json.dumps([r['reason'] for r in res.records]))\n"
    )
    reasons = json.loads(run_as_ordinary_user(code).strip().splitlines()[-1])
    assert len(reasons) == len(comps)
    assert all("no trusted verdict" in r for r in reasons), dict(zip(comps, reasons))


def test_eval_config_carries_the_package_list():
    from zen_code_jax.config import apply_overrides, base_config
    from zen_code_jax.eval.base import EvalContext

    c = base_config()
    assert EvalContext(config=c).sandbox_limits().packages == ()
    apply_overrides(c, {"eval.sandbox_packages": '("numpy",)'})
    assert EvalContext(config=c).sandbox_limits().packages == ("numpy",)


VENV_PROBE = (
    "import json, os, sys\n"
    "from zen_code_jax.eval.sandbox import run_program, SandboxLimits\n"
    "r = run_program('import csv, decimal, json, sqlite3\\nprint(42)', "
    "limits=SandboxLimits(timeout_s=60.0), verdict=True)\n"
    "print(json.dumps([os.geteuid(), sys.prefix, r.status, r.reason, r.stdout]))\n"
)


def test_a_venv_python_runs_sandboxed_programs_as_root_and_as_an_ordinary_user():
    """`python3 -m venv`: bin/python links to a base interpreter outside the venv (here a
    pyenv under /root, which an ordinary user can reach only because it is theirs)."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="zcj-venv-")
    try:
        os.chmod(d, 0o755)
        venv = os.path.join(d, "v")
        cmd = [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", venv]
        subprocess.run(cmd, check=True)
        py = os.path.join(venv, "bin", "python")
        assert os.path.islink(py)
        env = dict(os.environ, PYTHONPATH=REPO)
        out = subprocess.run([py, "-c", VENV_PROBE], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        _euid, prefix, status, reason, stdout = json.loads(out.stdout.splitlines()[-1])
        assert prefix == venv and status == PASSED and stdout.strip() == "42", reason
        line = run_as_ordinary_user(VENV_PROBE, python=py).strip().splitlines()[-1]
        euid, prefix, status, reason, stdout = json.loads(line)
        assert euid != 0 and prefix == venv
        assert status == PASSED and stdout.strip() == "42", reason
    finally:
        shutil.rmtree(d, ignore_errors=True)
