"""The LiveCodeBench test harness that runs *inside* the sandbox (stdlib only, no imports of
our own): `livecodebench.py` sends this file's text, followed by a call of `main()`, as the
program, with the candidate in `solution.py`, the tests in `tests.json` and the settings in
`settings.json` (written by the task, never by the candidate).

It follows LiveCodeBench's grading rules (lcb_runner/evaluation/testing_util.py):

- every test must pass; grading stops at the first failure (wrong answer, time limit,
  runtime error); each test has its own time limit (`timeout_s`, LiveCodeBench's 6 s);
- the candidate runs after a prelude of star imports of common stdlib modules
  (`STAR_IMPORTS`, as LiveCodeBench's `import_string`: LeetCode starter code names `List`
  and `Optional` without importing them) and a recursion limit of 50000;
- functional (LeetCode) problems: each input line is one JSON argument, the expected output
  is JSON, the method is `Solution().<func_name>` (a bare function when there is no
  `class Solution`), a tuple result counts as a list, and the verdict is `result ==
  expected`;
- stdin/stdout problems: the output and the expected output are stripped, split into lines,
  each line stripped; the line counts must agree and each line must match exactly or, token
  by token, as equal decimal numbers (`decimal.Decimal`, so 0.50 == 0.5 but 0.333 != 0.3333;
  today's lcb_runner) or, with `numbers="allclose"`, as floats within numpy.allclose's
  default tolerance (lcb_runner's earlier, APPS-derived grader).

Where we differ from lcb_runner, on the lenient side, because the candidate runs as a program
rather than as a function built from its source: each stdin test executes the program anew
with `__name__ == "__main__"` and its input on the real file descriptor 0 (so `input()`,
`sys.stdin.readline`, `sys.stdin.buffer` and `open(0)` all read it), and `sys.exit()` ends
the test normally; lcb_runner wraps the program in a function (so `global` statements can
fail) and patches `sys.stdin` with a StringIO (no `.buffer`).

The harness deletes its input files before the candidate runs (no reading the expected
outputs from disk). What stays possible, as with every in-process harness (HumanEval's
included): a hostile candidate can introspect the harness's memory (`sys._getframe`, `gc`)
for the tests, or patch the comparison; docs/sandbox.md lists such test-gaming residuals.

The verdict is the sandbox's trusted one: `main()` returns only when every test passed and
raises SystemExit(1) otherwise; the last stderr line (`LCB_RESULT {...}`) says why, for the
records (diagnostics only: the candidate can print too).
"""

import gc
import io
import json
import os
import signal
import sys
from decimal import Decimal, InvalidOperation

STAR_IMPORTS = (
    "string",
    "re",
    "datetime",
    "collections",
    "heapq",
    "bisect",
    "copy",
    "math",
    "random",
    "statistics",
    "itertools",
    "functools",
    "operator",
    "io",
    "sys",
    "json",
    "builtins",
    "typing",
)
PLAIN_IMPORTS = STAR_IMPORTS[:-2]  # every module but builtins and typing, imported by name
RESULT_TAG = "LCB_RESULT"
INPUT_FILES = ("settings.json", "tests.json", "solution.py")


class TestTimeout(BaseException):
    """Raised by the per-test alarm (a BaseException, so `except Exception` in the candidate
    does not swallow it)."""


def prelude() -> str:
    """The imports every candidate runs after, as LiveCodeBench's grader does."""
    lines = [f"from {m} import *" for m in STAR_IMPORTS]
    lines += [f"import {m}" for m in PLAIN_IMPORTS]
    lines.append("sys.setrecursionlimit(50000)")
    return "\n".join(lines) + "\n"


def lines_of(text: str) -> list[str]:
    """Stripped lines of stripped text (LiveCodeBench's `get_stripped_lines`)."""
    return [line.strip() for line in text.strip().split("\n")]


def decimals(line: str) -> list[Decimal] | None:
    """The whitespace-separated tokens of `line` as decimals, None if one is not a number."""
    try:
        return [Decimal(tok) for tok in line.split()]
    except (InvalidOperation, ValueError):
        return None


def close_floats(line: str, expected: str) -> bool:
    """Token-wise float closeness, |a - b| <= 1e-8 + 1e-5 * |b| (numpy.allclose's defaults,
    as lcb_runner's earlier grader compared outputs); False if a token is not a number."""
    try:
        a, b = [float(t) for t in line.split()], [float(t) for t in expected.split()]
    except ValueError:
        return False
    return len(a) == len(b) and all(abs(x - y) <= 1e-8 + 1e-5 * abs(y) for x, y in zip(a, b))


def stdout_matches(output: str, expected: str, numbers: str = "decimal") -> tuple[bool, str]:
    """LiveCodeBench's stdin/stdout comparison: (match, why not). Lines that differ as text
    may still match as numbers: equal decimals (`numbers="decimal"`, today's lcb_runner) or
    close floats (`"allclose"`, its earlier grader)."""
    got, want = lines_of(output), lines_of(expected)
    if len(got) != len(want):
        head = "\n".join(got[:3])[:80]
        return False, f"output has {len(got)} lines, expected {len(want)}; starts {head!r}"
    for i, (g, w) in enumerate(zip(got, want)):
        if g == w:
            continue
        if numbers == "allclose":
            ok = close_floats(g, w)
        else:
            dg, dw = decimals(g), decimals(w)
            ok = dg is not None and dw is not None and dg == dw
        if not ok:
            return False, f"line {i + 1}: {g[:80]!r} != {w[:80]!r}"
    return True, ""


def _alarm(_signum, _frame):
    raise TestTimeout()


def _timed(timeout_s: float, fn, *args):
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _fail(kind: str, test: int, detail: str) -> None:
    sys.__stderr__.write(
        f"\n{RESULT_TAG} {json.dumps({'result': kind, 'test': test, 'detail': detail[:300]})}\n"
    )
    sys.__stderr__.flush()
    raise SystemExit(1)


def run_functional(source: str, func_name: str, tests: list, timeout_s: float) -> None:
    """Call `func_name` on every test's JSON arguments; fail at the first mismatch."""
    code = prelude() + "\n" + source
    module: dict = {"__name__": "solution"}
    try:
        _timed(timeout_s, exec, compile(code, "solution.py", "exec"), module)
        owner = module["Solution"]() if "class Solution" in source else None
        method = getattr(owner, func_name) if owner is not None else module[func_name]
    except TestTimeout:
        _fail("time_limit", 0, "while loading the solution")
    except BaseException as e:  # noqa: BLE001 - any failure to build the method fails
        _fail("compile_error", 0, repr(e))
    for i, (inp, out) in enumerate(tests, 1):
        try:
            args = [json.loads(line) for line in inp.split("\n")]
            expected = json.loads(out)
        except ValueError as e:
            _fail("bad_test", i, repr(e))
        try:
            got = _timed(timeout_s, method, *args)
        except TestTimeout:
            _fail("time_limit", i, "")
        except BaseException as e:  # noqa: BLE001
            _fail("runtime_error", i, repr(e))
        if isinstance(got, tuple):
            got = list(got)
        if not got == expected:
            _fail("wrong_answer", i, f"{str(got)[:120]} != {str(expected)[:120]}")


def _run_program(code, text: str) -> str:
    """Execute the compiled program once with `text` on fd 0; its captured stdout."""
    with open("stdin.txt", "w", encoding="utf-8") as f:
        f.write(text)
    fd = os.open("stdin.txt", os.O_RDONLY)
    if fd != 0:  # fd 0 is free when the last test's program closed it (`open(0)`)
        os.dup2(fd, 0)
        os.close(fd)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    buf = io.BytesIO()
    out = io.TextIOWrapper(buf, encoding="utf-8", write_through=True)
    sys.stdout = out
    try:
        try:
            exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        except SystemExit:
            pass
        out.flush()
        return buf.getvalue().decode("utf-8", errors="replace")
    finally:
        sys.stdout = sys.__stdout__
        sys.stdin = sys.__stdin__
        # Collect this run's objects now: a file the program left open on fd 0 closes fd 0
        # when collected, which must not happen during the next test.
        gc.collect()


def run_stdio(source: str, tests: list, timeout_s: float, numbers: str = "decimal") -> None:
    """Run the program on every test's input; fail at the first output mismatch."""
    try:
        code = compile(prelude() + "\n" + source, "solution.py", "exec")
    except BaseException as e:  # noqa: BLE001
        _fail("compile_error", 0, repr(e))
    for i, (inp, out) in enumerate(tests, 1):
        try:
            got = _timed(timeout_s, _run_program, code, inp)
        except TestTimeout:
            _fail("time_limit", i, "")
        except BaseException as e:  # noqa: BLE001
            _fail("runtime_error", i, repr(e))
        ok, why = stdout_matches(got, out, numbers)
        if not ok:
            _fail("wrong_answer", i, why)


def main() -> None:
    """Grade `solution.py` on `tests.json` as `settings.json` says. The three files are
    removed before the candidate runs, so it cannot read the expected outputs from disk."""
    data = {}
    for name in INPUT_FILES:
        with open(name, encoding="utf-8") as f:
            data[name] = f.read()
        os.remove(name)
    settings = json.loads(data["settings.json"])
    tests = [(t["input"], t["output"]) for t in json.loads(data["tests.json"])]
    source = data["solution.py"]
    del data
    if settings["func_name"]:
        run_functional(source, settings["func_name"], tests, float(settings["timeout_s"]))
    else:
        run_stdio(source, tests, float(settings["timeout_s"]), settings["numbers"])
