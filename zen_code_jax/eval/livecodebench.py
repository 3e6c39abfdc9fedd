"""LiveCodeBench code generation (Jain et al. 2024) from the released `code_generation_lite`
files, given by path (option `path`, or `--data`: one `test*.jsonl` file or the directory
holding them).

Each row: question_title, question_content, platform, question_id, contest_id,
contest_date (ISO), starter_code, difficulty, public_test_cases (a JSON string),
private_test_cases (a JSON string, or in the released files base64 of zlib of a pickled JSON
string; decoded here by an unpickler that accepts nothing but strings, so a data file cannot
run code), metadata (a JSON string; `func_name` marks a functional, LeetCode-style problem).

Selection by contest date, inclusive, so LiveCodeBench's "problems released in the last
three months" is a config line: `eval.task_options = {"livecodebench": dict(path=...,
since="2024-06-01", until="2024-08-31")}`; `platforms` and `difficulties` narrow further.
Problems are sorted by question_id, as lcb_runner does.

Prompt: LiveCodeBench's base-model format (`### Question` / `### Starter Code` /
`### Answer`), one-shot when `fewshot_dir` points at lcb_runner's
`prompts/few_shot_examples/generation` (its `func.json` for starter-code problems,
`stdin.json` otherwise; not shipped here), zero-shot in the same layout otherwise. Stop:
`###` (lcb_runner's default). The code is the text between the first two lines holding
a code fence (lcb_runner's `extract_code`; no fenced block -> empty program -> fails), or the
whole stripped output with `extract="raw"` (lcb_runner's GenericBase style). pass@k from
`eval.num_samples` samples; grading in the sandbox by `lcb_harness.py` (rules there), one
program per sample running every test, single-process (the candidate runs in-process), with
LiveCodeBench's global time limit `(timeout_s + 1) * tests + 5` seconds.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import io
import json
import math
import pickle
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zen_code_jax.eval import lcb_harness
from zen_code_jax.eval.base import (
    EvalContext,
    Task,
    TaskResult,
    apply_limit,
    sample_many,
    truncate_at_stops,
)
from zen_code_jax.eval.execution import read_jsonl
from zen_code_jax.eval.passk import mean_pass_at_k
from zen_code_jax.eval.sandbox import Program, SandboxLimits, run_programs

STOP_SEQUENCES: tuple[str, ...] = ("###",)
DIFFICULTIES = ("easy", "medium", "hard")
PLATFORMS = ("leetcode", "codeforces", "atcoder")
EXTRACT_MODES = ("fences", "raw")
NUMBER_RULES = ("decimal", "allclose")
PASS_KS: tuple[int, ...] = (1, 5, 10)
_SETTING = "eval.task_options.livecodebench"


def _date(text: str, what: str) -> datetime.date | None:
    if not text:
        return None
    try:
        return datetime.date.fromisoformat(text[:10])
    except ValueError as e:
        raise ValueError(f"{_SETTING}.{what}={text!r} is not a date; write YYYY-MM-DD.") from e


@dataclasses.dataclass(frozen=True)
class LcbOptions:
    """Where the release files are and which problems count.

    `since` / `until`: contest dates (YYYY-MM-DD, inclusive; "" = open). `platforms`,
    `difficulties`: keep only these (() = all). `fewshot_dir`: lcb_runner's few-shot example
    directory (one-shot prompt), "" = zero-shot. `extract`: "fences" or "raw". `numbers`:
    how stdout lines compare as numbers, "decimal" (equal decimals, today's lcb_runner) or
    "allclose" (floats within numpy.allclose's tolerance, lcb_runner's earlier grader).
    `timeout_s`: per test, LiveCodeBench's 6 s.
    """

    path: str = ""
    since: str = ""
    until: str = ""
    platforms: tuple[str, ...] = ()
    difficulties: tuple[str, ...] = ()
    fewshot_dir: str = ""
    extract: str = "fences"
    numbers: str = "decimal"
    timeout_s: float = 6.0

    def __post_init__(self) -> None:
        lo, hi = _date(self.since, "since"), _date(self.until, "until")
        if lo and hi and lo > hi:
            raise ValueError(f"{_SETTING}: since={self.since} is after until={self.until}.")
        for name, valid in (("platforms", PLATFORMS), ("difficulties", DIFFICULTIES)):
            bad = sorted(set(getattr(self, name)) - set(valid))
            if bad:
                raise ValueError(f"{_SETTING}.{name}: unknown {bad}; choose from {valid}.")
        if self.extract not in EXTRACT_MODES:
            raise ValueError(f"{_SETTING}.extract={self.extract!r}; choose from {EXTRACT_MODES}.")
        if self.numbers not in NUMBER_RULES:
            raise ValueError(f"{_SETTING}.numbers={self.numbers!r}; choose from {NUMBER_RULES}.")
        if self.timeout_s <= 0:
            raise ValueError(f"{_SETTING}.timeout_s must be > 0, got {self.timeout_s}.")


class _StringsOnly(pickle.Unpickler):
    """Unpickles plain data only: any class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"refusing {module}.{name}: LiveCodeBench test cases are a pickled string"
        )


def decode_test_cases(field: str | list) -> list[dict[str, str]]:
    """public/private_test_cases as a list of {input, output, testtype}: plain JSON, or the
    release files' base64(zlib(pickle(json string)))."""
    if isinstance(field, list):
        return field
    text = field.strip()
    if not text or text[0] == "[":
        return json.loads(text) if text else []
    raw = _StringsOnly(io.BytesIO(zlib.decompress(base64.b64decode(text)))).load()
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if not isinstance(raw, str):
        raise ValueError(f"compressed test cases hold a {type(raw).__name__}, not a JSON string")
    return json.loads(raw)


def encode_test_cases(tests: list[dict[str, str]]) -> str:
    """The release files' compressed form (the inverse of `decode_test_cases`; fixtures)."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode("ascii")


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    """One release-file row -> our problem dict (prompt added later, by `build_prompt`)."""
    need = ("question_id", "question_content", "contest_date", "public_test_cases")
    missing = [k for k in need if k not in row]
    if missing:
        raise ValueError(
            f"LiveCodeBench row {row.get('question_id', '?')} lacks {missing}; expected the "
            "code_generation_lite fields (question_id, question_content, contest_date, ...)."
        )
    meta = row.get("metadata") or "{}"
    meta = json.loads(meta) if isinstance(meta, str) else dict(meta)
    tests = decode_test_cases(row["public_test_cases"])
    tests += decode_test_cases(row.get("private_test_cases") or "[]")
    if not tests:
        raise ValueError(f"LiveCodeBench row {row['question_id']} has no test cases.")
    return {
        "task_id": str(row["question_id"]),
        "title": row.get("question_title", ""),
        "question": row["question_content"],
        "starter_code": row.get("starter_code", "") or "",
        "platform": row.get("platform", ""),
        "difficulty": row.get("difficulty", ""),
        "contest_id": row.get("contest_id", ""),
        "contest_date": str(row["contest_date"]),
        "func_name": meta.get("func_name") or "",
        "tests": [{"input": t["input"], "output": t["output"]} for t in tests],
    }


def release_files(path: str) -> list[Path]:
    """`path` itself, or the release files of a directory (test.jsonl, test2.jsonl, ...,
    in name order)."""
    p = Path(path) if path else None
    if p is not None and p.is_dir():
        files = sorted(p.glob("test*.jsonl"))
        if not files:
            raise FileNotFoundError(
                f"{p} has no test*.jsonl release files; point {_SETTING}.path at one."
            )
        return files
    return [Path(path)]


def select(problems: list[dict[str, Any]], options: LcbOptions) -> list[dict[str, Any]]:
    """Problems within [since, until] (contest dates, inclusive) and the chosen platforms and
    difficulties, sorted by question_id."""
    lo, hi = _date(options.since, "since"), _date(options.until, "until")
    out = []
    for p in problems:
        day = _date(p["contest_date"], "contest_date")
        if (lo and day < lo) or (hi and day > hi):
            continue
        if options.platforms and p["platform"] not in options.platforms:
            continue
        if options.difficulties and p["difficulty"] not in options.difficulties:
            continue
        out.append(p)
    return sorted(out, key=lambda p: p["task_id"])


def _section(question: str, starter: str | None, answer: str) -> str:
    text = f"### Question\n{question}\n\n"
    if starter is not None:
        text += f"### Starter Code\n{starter}\n\n"
    text += "### Answer\n\n" + answer
    return text + ("\n\n" if answer else "")


def load_fewshot(fewshot_dir: str) -> dict[str, dict[str, str]]:
    """{"func": example, "stdin": example}: the first example of lcb_runner's func.json and
    stdin.json (question, sample_code, answer); {} without a directory."""
    if not fewshot_dir:
        return {}
    out = {}
    for kind in ("func", "stdin"):
        f = Path(fewshot_dir) / f"{kind}.json"
        if not f.is_file():
            raise FileNotFoundError(
                f"{f} is missing; {_SETTING}.fewshot_dir must hold lcb_runner's func.json and "
                "stdin.json (lcb_runner/prompts/few_shot_examples/generation)."
            )
        out[kind] = json.loads(f.read_text(encoding="utf-8"))[0]
    return out


def build_prompt(problem: dict[str, Any], fewshot: dict[str, dict[str, str]]) -> str:
    """LiveCodeBench's base-model prompt: [one example,] then the question, its starter code
    (functional problems) and an empty `### Answer`."""
    starter = problem["starter_code"] or None
    text = ""
    if fewshot:
        ex = fewshot["func" if starter is not None else "stdin"]
        text += _section(
            ex["question"], ex.get("sample_code", "") if starter is not None else None, ex["answer"]
        )
    return text + _section(problem["question"], starter, "")


def extract_code(output: str, mode: str = "fences") -> str:
    """The program in a model output: between the first two lines that hold ``` (empty if
    there are fewer), or the stripped output (mode "raw")."""
    if mode == "raw":
        return output.strip()
    lines = output.split("\n")
    fences = [i for i, line in enumerate(lines) if "```" in line]
    return "\n".join(lines[fences[0] + 1 : fences[1]]) if len(fences) >= 2 else ""


def load_problems(options: LcbOptions) -> list[dict[str, Any]]:
    """Every selected problem of the release files, with its prompt."""
    fewshot = load_fewshot(options.fewshot_dir)
    rows = [
        r
        for f in release_files(options.path)
        for r in read_jsonl(f, "The livecodebench task", f"{_SETTING}.path")
    ]
    probs = select([normalize_row(r) for r in rows], options)
    for p in probs:
        p["prompt"] = build_prompt(p, fewshot)
    return probs


def harness_source() -> str:
    """The sandboxed program: the harness module's text and a call of its `main()`."""
    return Path(lcb_harness.__file__).read_text(encoding="utf-8") + "\n\nmain()\n"


def program(
    problem: dict[str, Any], code: str, timeout_s: float, numbers: str = "decimal"
) -> Program:
    """One grading run of `code` on every test of `problem` (single-process: the candidate
    runs in the harness's process)."""
    settings = {"func_name": problem["func_name"], "timeout_s": timeout_s, "numbers": numbers}
    files = {
        "solution.py": code,
        "tests.json": json.dumps(problem["tests"]),
        "settings.json": json.dumps(settings),
    }
    return Program(harness_source(), files=files, verdict=True, single_process=True)


def global_timeout(problem: dict[str, Any], timeout_s: float) -> float:
    """LiveCodeBench's whole-run limit for one sample: (per-test + 1) * tests + 5 seconds."""
    return (timeout_s + 1.0) * len(problem["tests"]) + 5.0


def problem_limits(base: SandboxLimits, problem: dict[str, Any], timeout_s: float) -> SandboxLimits:
    """`base` widened for one problem: LiveCodeBench's global time limit, and room for its
    tests (some releases hold tens of MiB per problem) on top of what the program may use:
    the tests file and one input on the run's disk, the largest input as one file (the
    harness writes it to fd 0), the parsed tests in memory."""
    t = max(base.timeout_s, global_timeout(problem, timeout_s))
    mib = math.ceil(sum(len(x["input"]) + len(x["output"]) for x in problem["tests"]) / 2**20)
    largest = max(len(x["input"].encode("utf-8")) for x in problem["tests"])
    return dataclasses.replace(
        base,
        timeout_s=t,
        cpu_s=math.ceil(t),
        max_disk_mb=base.max_disk_mb + 3 * mib,
        max_file_bytes=max(base.max_file_bytes, largest + (1 << 20)),
        memory_mb=base.memory_mb + 4 * mib,
    )


def _outcome(stderr: str) -> dict[str, Any]:
    for line in reversed(stderr.splitlines()):
        if line.startswith(lcb_harness.RESULT_TAG + " "):
            try:
                return json.loads(line[len(lcb_harness.RESULT_TAG) + 1 :])
            except ValueError:
                break
    return {}


def score(
    problems: list[dict[str, Any]],
    outputs: dict[str, list[str]],
    *,
    limits: SandboxLimits | None = None,
    workers: int = 2,
    timeout_s: float = 6.0,
    extract: str = "fences",
    numbers: str = "decimal",
    ks: Sequence[int] | None = None,
) -> TaskResult:
    """pass@k of model outputs ({task_id: [output, ...]}): each is cut at `###`, its code
    extracted and graded on all of the problem's tests. Records carry the problem's
    difficulty, platform and contest date; metrics add pass@1 per difficulty."""
    base = limits or SandboxLimits()
    jobs = []  # (problem, output, code, limits)
    for p in problems:
        outs = outputs.get(p["task_id"])
        if not outs:
            raise ValueError(f"No outputs for {p['task_id']}; give each problem >= 1 sample.")
        lim = problem_limits(base, p, timeout_s)
        for out in outs:
            out = truncate_at_stops(out, STOP_SEQUENCES)
            jobs.append((p, out, extract_code(out, extract), lim))
    results: list[Any] = [None] * len(jobs)
    by_limits: dict[SandboxLimits, list[int]] = {}
    for i, job in enumerate(jobs):
        by_limits.setdefault(job[3], []).append(i)
    for lim, idx in by_limits.items():
        progs = [program(jobs[i][0], jobs[i][2], timeout_s, numbers) for i in idx]
        for i, res in zip(idx, run_programs(progs, limits=lim, workers=workers)):
            results[i] = res
    records, by_key, by_diff = [], {}, {}
    for (p, out, code, _), res in zip(jobs, results):
        outcome = _outcome(res.stderr)
        records.append(
            {
                "task_id": p["task_id"],
                "passed": res.passed,
                "result": "passed" if res.passed else outcome.get("result", res.status),
                "failed_test": outcome.get("test"),
                "difficulty": p["difficulty"],
                "platform": p["platform"],
                "contest_date": p["contest_date"],
                **res.to_dict(max_chars=500),
                "completion": out,
                "code": code,
            }
        )
        by_key.setdefault(p["task_id"], []).append(res.passed)
        by_diff.setdefault(p["difficulty"], {}).setdefault(p["task_id"], []).append(res.passed)
    n = min(len(v) for v in by_key.values())
    metrics = mean_pass_at_k(by_key, ks or sorted({k for k in PASS_KS if k <= n} | {n}))
    for diff in DIFFICULTIES:
        if diff in by_diff:
            metrics[f"pass@1_{diff}"] = mean_pass_at_k(by_diff[diff], (1,))["pass@1"]
    metrics["num_problems"] = float(len(by_key))
    return TaskResult(metrics, records)


class LiveCodeBenchTask(Task):
    name = "livecodebench"
    description = (
        "LiveCodeBench code generation (code_generation_lite files by path / --data; "
        "since/until contest dates): pass@k in the sandbox"
    )
    options_type = LcbOptions
    data_option = "path"

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        return apply_limit(load_problems(ctx.options(self)), ctx.limit)

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        engine = ctx.need_engine()
        options = ctx.options(self)
        probs = self.problems(ctx)
        if not probs:
            raise ValueError(
                f"livecodebench: no problem in {options.path} between since={options.since!r} "
                f"and until={options.until!r} (platforms {options.platforms}, difficulties "
                f"{options.difficulties}); widen the selection."
            )
        kw = ctx.decode_kwargs()

        def call(idx: list[int], seed: int) -> list[str]:
            prompts = [probs[i]["prompt"] for i in idx]
            return engine.generate(prompts, stop=STOP_SEQUENCES, seed=seed, **kw)

        samples = sample_many(ctx, call, len(probs))
        return score(
            probs,
            {p["task_id"]: s for p, s in zip(probs, samples)},
            limits=ctx.sandbox_limits(),
            workers=ctx.workers,
            timeout_s=options.timeout_s,
            extract=options.extract,
            numbers=options.numbers,
        )


LIVECODEBENCH = LiveCodeBenchTask()
TASKS = (LIVECODEBENCH,)
