"""Sandbox throughput: programs/s of the full sandbox against a bare interpreter per program.

What it answers: how much of a sandboxed run is the interpreter start (what a pre-forked
worker pool would save) and how much is isolation (namespaces, the stdlib view, the uid
drop, the verdict). Same programs, same worker count, one run:

- `sandbox`: `run_programs` with the trusted verdict (what HumanEval scoring does);
- `rlimits only`: the same with `namespaces=False` (no namespaces, no view);
- `bare`: `python -I -S program.py` in a subprocess per program, no sandbox at all (the
  floor any fork-per-program design pays at least the fork+exec of, minus the start).
- `startup`: `python -I -S -c pass`, the interpreter start alone.

Programs: the HumanEval canonical solutions with their tests (`--programs` of them).
Each row also gives the CPU time per program (user + sys of every process the run started,
the evaluator's own threads included): on a shared, loaded machine the wall-clock rates
swing with other jobs, CPU time much less, so it is the figure to compare across versions
(run with `PYTHONPATH=<other tree>` for the other version's sandbox).

    python benchmarks/sandbox.py [--programs 164] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from zen_code_jax.eval import humaneval
from zen_code_jax.eval.sandbox import SandboxLimits, run_programs


def cpu_s() -> float:
    """User + sys seconds of this process and of all its waited-for descendants."""
    t = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        t += r.ru_utime + r.ru_stime
    return t


def bare(sources: list[str], workers: int) -> float:
    d = tempfile.mkdtemp(prefix="zcj-bench-")
    paths = []
    for i, s in enumerate(sources):
        p = os.path.join(d, f"p{i}.py")
        with open(p, "w") as f:
            f.write(s)
        paths.append(p)

    def one(p: str) -> int:
        return subprocess.run([sys.executable, "-I", "-S", p], capture_output=True).returncode

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        codes = list(ex.map(one, paths))
    dt = time.perf_counter() - t0
    assert codes == [0] * len(codes), codes
    return dt


def startup(n: int, workers: int) -> float:
    def one(_: int) -> None:
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, range(n)))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=164)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    probs = humaneval.load_problems()[: a.programs]
    sources = [humaneval.build_program(p, p["canonical_solution"]) for p in probs]
    jobs = [humaneval.python_job(s) for s in sources]
    limits = SandboxLimits(timeout_s=30.0)
    n = len(jobs)
    run_programs(jobs[:4], limits=limits, workers=a.workers)  # warm caches (view plan, uids)

    c0, t0 = cpu_s(), time.perf_counter()
    rs = run_programs(jobs, limits=limits, workers=a.workers)
    t_sandbox, c_sandbox = time.perf_counter() - t0, cpu_s() - c0
    assert all(r.passed for r in rs), [r.reason for r in rs if not r.passed][:3]
    iso = rs[0].isolation

    c0, t0 = cpu_s(), time.perf_counter()
    rs = run_programs(sources, limits=limits, workers=a.workers, namespaces=False)
    t_rl, c_rl = time.perf_counter() - t0, cpu_s() - c0
    assert all(r.passed for r in rs)

    c0 = cpu_s()
    t_bare = bare(sources, a.workers)
    c1 = cpu_s()
    t_start = startup(n, a.workers)
    c_bare, c_start = c1 - c0, cpu_s() - c1
    print(f"{n} HumanEval programs, {a.workers} workers, isolation {iso}")
    for name, t, c in (
        ("sandbox (verdict)", t_sandbox, c_sandbox),
        ("rlimits only", t_rl, c_rl),
        ("bare interpreter", t_bare, c_bare),
        ("startup only", t_start, c_start),
    ):
        print(
            f"  {name:18s} {n / t:7.1f} programs/s  {1000 * t / n * a.workers:6.1f} ms/program"
            f"  {1000 * c / n:6.1f} ms CPU/program"
        )
    print(
        f"  CPU overhead of the sandbox over bare: {1000 * (c_sandbox - c_bare) / n:.1f} ms/program"
    )
    print(f"  ratio sandbox / bare: {t_sandbox / t_bare:.2f}x the time")
    share = t_start / t_sandbox
    print(
        f"  interpreter start = {100 * share:.0f}% of a sandboxed run (a pool saves at most that)"
    )


if __name__ == "__main__":
    main()
