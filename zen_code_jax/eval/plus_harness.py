"""The EvalPlus test harness as it runs inside the sandbox (stdlib only; numpy only where a
tolerance comparison needs it). `eval/plus.py` embeds this file's text in every program, so
it must stay self-contained: no imports of our own modules.

What it reproduces of the official `evalplus` 0.3.1 harness (the rules, not its code):
- expected outputs come from the canonical solution, run on a deep copy of each input, all
  inputs in one namespace (state carries over, as in evalplus's `trusted_exec`); for the
  MBPP+ tasks whose output is not comparable only `output is not None` is kept;
- the candidate (`prompt + completion`, or a whole `solution`) is exec'd in a fresh
  namespace (`__name__` is then `builtins`, so a `__main__` block does not run) after the
  destructive builtins and `os`/`shutil`/`subprocess` functions are set to None; stdout
  and stderr are swallowed and stdin raises on read (`input()` fails);
- each input runs under its own wall-clock limit (SIGALRM; going over is a failure) and the
  run stops at the first failing input (evalplus's default fast check);
- comparison: `out == expected`, then the special oracles (MBPP+ set equality, not-None,
  `sum_div`, `surface_Area`, `digit_distance_nums`, `are_equivalent`; HumanEval+
  `find_zero` by its residual, recording the pass 0.3.1 forgets); a float or all-float
  expected value makes the tolerance 1e-6 when the task's `atol` is 0, and the tolerance
  then stays in force for the later inputs (evalplus updates the same variable); with a
  tolerance, a non-equal output must have the expected type (and length) and be
  `numpy.allclose(out, exp, rtol=1e-7, atol=atol)`.
The verdict of a candidate run is the sandbox's trusted one: the top-level code returns only
when every input passed. The last stdout line is diagnostics (`{"fail_index": i}`), never
the verdict.
"""

import base64
import builtins
import contextlib
import copy
import faulthandler
import io
import json
import math
import os
import pickle
import signal
import sys
import time

SET_EQUAL_ENTRY_POINTS = (
    "similar_elements",
    "find_char_long",
    "common_in_nested_lists",
    "extract_singly",
    "larg_nnum",
    "intersection_array",
    "find_dissimilar",
    "Diff",
)
NOT_NONE_ENTRY_POINTS = ("check_str", "text_match_three", "text_starta_endb")
_DISABLED = {
    "builtins": ("exit", "quit", "open", "help"),
    "os": (
        "kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid",
        "fork", "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink",
        "fchmod", "fchown", "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown",
        "getcwd", "chdir",
    ),
    "shutil": ("rmtree", "move", "chown"),
    "subprocess": ("Popen",),
}  # fmt: skip
_BLOCKED_MODULES = ("ipdb", "joblib", "resource", "psutil", "tkinter")


class TestTimeout(Exception):
    """One input ran past its time limit."""


class _NoInput(io.StringIO):
    """Swallows writes; reading raises (so `input()` and `sys.stdin.read()` fail)."""

    def read(self, *args, **kwargs):
        raise OSError("stdin is not readable in the EvalPlus harness")

    readline = readlines = read

    def readable(self, *args, **kwargs):
        return False


@contextlib.contextmanager
def _quiet():
    sink = _NoInput()
    old_in = sys.stdin
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        sys.stdin = sink
        try:
            yield
        finally:
            sys.stdin = old_in


@contextlib.contextmanager
def _time_limit(seconds):
    def on_alarm(signum, frame):
        raise TestTimeout(f"input ran past its {seconds:.3g} s limit")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _guard():
    faulthandler.disable()
    os.environ["OMP_NUM_THREADS"] = "1"  # before os.putenv goes
    modules = {"builtins": builtins, "os": os}
    import shutil
    import subprocess

    modules.update(shutil=shutil, subprocess=subprocess)
    for mod, names in _DISABLED.items():
        for name in names:
            setattr(modules[mod], name, None)
    for name in _BLOCKED_MODULES:
        sys.modules[name] = None


def _is_floats(x):
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.ndarray):
        return x.dtype == np.float64 or x.dtype == np.float32
    return False


def _poly(xs, x):
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def _pyramid_area(base_edge, height):
    slant = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 4 * (base_edge * slant) / 2)


def _digit_distance(a, b):
    sa, sb = str(a), str(b)
    width = max(len(sa), len(sb))
    return sum(abs(int(x) - int(y)) for x, y in zip(sa.zfill(width), sb.zfill(width)))


def expected_outputs(spec):
    """Outputs and seconds per input of the canonical solution (trusted code)."""
    namespace = {}
    with _quiet():
        exec(spec["canonical"], namespace)
    fn = namespace[spec["entry_point"]]
    outs, times = [], []
    for inp in spec["inputs"]:
        inp = copy.deepcopy(inp)
        with _quiet():
            t0 = time.time()
            outs.append(fn(*inp))
            times.append(time.time() - t0)
    if spec["entry_point"] in NOT_NONE_ENTRY_POINTS and spec["dataset"] == "mbpp":
        outs = [o is not None for o in outs]
    return outs, times


def _matches(spec, inp, out, exp, atol):
    """(passed, atol for the next inputs): evalplus's comparison of one output."""
    entry, dataset = spec["entry_point"], spec["dataset"]
    same = out == exp
    if dataset == "mbpp":
        if entry == "are_equivalent":
            same = same or True
        elif entry == "sum_div":
            same = same or out == 0
        elif entry == "surface_Area":
            same = same or abs(out - _pyramid_area(*inp)) <= atol
        elif entry == "digit_distance_nums":
            same = same or out == _digit_distance(*inp)
        elif entry in SET_EQUAL_ENTRY_POINTS:
            same = set(out) == set(exp)
        elif entry in NOT_NONE_ENTRY_POINTS:
            same = out == exp if isinstance(out, bool) else exp == (out is not None)
    if dataset == "humaneval" and entry == "find_zero":
        return abs(_poly(*inp, out)) <= atol, atol
    if atol == 0 and _is_floats(exp):
        atol = 1e-6
    if not same and atol != 0:
        if type(out) is not type(exp):
            return False, atol
        if isinstance(exp, (list, tuple)) and len(out) != len(exp):
            return False, atol
        import numpy  # imported before the guard when a tolerance can arise

        return bool(numpy.allclose(out, exp, rtol=1e-07, atol=atol)), atol
    if not same:
        return False, atol
    return True, atol


def check(spec):
    """Index of the first failing input, or None when all pass."""
    expected, _ = expected_outputs(spec)
    atol = spec["atol"]
    if atol != 0 or any(_is_floats(e) for e in expected):
        import numpy  # noqa: F401  (the guard blocks nothing numpy needs, but import it first)
    _guard()
    namespace = {}
    try:
        with _quiet():
            exec(spec["code"], namespace)
        fn = namespace[spec["entry_point"]]
    except BaseException:
        return -1
    for i, inp in enumerate(spec["inputs"]):
        try:
            with _time_limit(spec["time_limits"][i]):
                with _quiet():
                    out = fn(*inp)
            ok, atol = _matches(spec, inp, out, expected[i], atol)
            if not ok:
                return i
        except BaseException:
            return i
    return None


def main(payload):
    """Run the spec (base64 pickle). mode "times": print the canonical's seconds per input
    as JSON; mode "check": return normally only when every input passes."""
    spec = pickle.loads(base64.b64decode(payload))
    stdout = sys.stdout
    if spec["mode"] == "times":
        _, times = expected_outputs(spec)
        print(json.dumps({"times": times}), file=stdout, flush=True)
        return
    failed = check(spec)
    if failed is not None:
        print(json.dumps({"fail_index": failed}), file=stdout, flush=True)
        raise SystemExit(1)
