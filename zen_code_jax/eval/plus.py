"""HumanEval+ and MBPP+ (EvalPlus, Liu et al. 2023) from the official files, by path.

No EvalPlus data ships offline: the task's `path` option (`eval.task_options =
{"humaneval_plus": dict(path=...)}` or `--data`) names `HumanEvalPlus.jsonl[.gz]` /
`MbppPlus.jsonl[.gz]` (one JSON object per line: task_id, prompt, entry_point,
canonical_solution, base_input, plus_input, atol, contract, ...).

Scoring follows the official `evalplus` 0.3.1 harness (`plus_harness.py` says rule by rule
what it reproduces): the candidate is `prompt + completion` (or a whole `solution`), run once
on the base inputs and once on the plus inputs, each in its own sandboxed program with
`single_process` (the harness calls the candidate in-process); expected outputs come from the
canonical solution run in the same program before the candidate is loaded. Per-input time
limits are `max(min_time_limit, time_factor * canonical seconds)` (1 s and 4 by default, as
evalplus), the canonical seconds measured once on this machine by running the canonical
solution in the sandbox and cached per problem (`times_cache`, default
`$XDG_CACHE_HOME/zen_code_jax/evalplus_times`). pass@k is reported for the base tests
(`base_pass@k`) and for base + plus (`plus_pass@k`: a sample passes when both pass), like
evalplus's two tables. The `contract` field is not used in scoring, as in evalplus: the
released inputs already satisfy the contracts (contract-violating inputs were dropped when
the data set was built), so the canonical solution runs on every input as given.

Deliberate difference: HumanEval+'s `find_zero` passes when evalplus's own residual check
`|poly(xs, out)| <= atol` holds on every input; 0.3.1 runs that check but never records the
pass (a bug, reported fixed upstream), so it fails every answer, the canonical one included.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import gzip
import hashlib
import json
import os
import pickle
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from zen_code_jax.eval import humaneval, mbpp
from zen_code_jax.eval.base import TaskResult
from zen_code_jax.eval.execution import PassAtKTask, default_ks
from zen_code_jax.eval.passk import mean_pass_at_k
from zen_code_jax.eval.sandbox import (
    PASSED,
    SLOTS,
    TIMEOUT,
    Program,
    SandboxLimits,
    run_program,
    run_programs,
)
from zen_code_jax.eval.stats import mean_se, per_problem_mean

HARNESS_SOURCE = Path(__file__).with_name("plus_harness.py").read_text(encoding="utf-8")
REQUIRED_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution")
REQUIRED_FIELDS += ("base_input", "plus_input", "atol")
SPLITS = ("base", "plus")
# evalplus caps each test process's address space at 4 GiB (EVALPLUS_MAX_MEMORY_BYTES);
# a smaller eval.sandbox_memory_mb is raised to this so verdicts do not depend on it.
EVALPLUS_MEMORY_MB = 4096


@dataclasses.dataclass(frozen=True)
class PlusOptions:
    """`path`: the EvalPlus file; time limit per input = max(min_time_limit, time_factor *
    canonical seconds); `times_cache`: folder of measured canonical times ("" = default)."""

    path: str = ""
    min_time_limit: float = 1.0
    time_factor: float = 4.0
    times_cache: str = ""

    def __post_init__(self) -> None:
        if self.min_time_limit <= 0 or self.time_factor <= 0:
            raise ValueError(
                f"EvalPlus min_time_limit and time_factor must be > 0, got {self}; "
                "the official values are 1.0 and 4.0."
            )


def _tuples(x: Any) -> Any:
    return tuple(_tuples(i) for i in x) if isinstance(x, list) else x


# MBPP+ stores some inputs in JSON-friendly form; evalplus turns them back into tuples,
# sets and complex numbers per task number (its `mbpp_deserialize_inputs`). One input is
# the argument list `inp`; each rule maps it to the arguments the function gets.
_MBPP_INPUT_RULES: dict[str, tuple[tuple[int, ...], Any]] = {
    "tuple_args": (
        (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616)
        + (630, 726, 740, 744, 809),
        lambda inp: [tuple(a) for a in inp],
    ),
    "tuple_items": (
        (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780),
        lambda inp: [[tuple(x) for x in a] for a in inp],
    ),
    "tuple_items_first": (
        (75, 413, 444, 753),
        lambda inp: [[tuple(x) for x in inp[0]], inp[1]],
    ),
    "tuple_second": ((106, 750), lambda inp: [inp[0], tuple(inp[1])]),
    "sets_first": (
        (115,),
        lambda inp: [[set(x) if isinstance(x, list) and len(x) else {} for x in inp[0]]],
    ),
    "float_complex": ((124,), lambda inp: (float(inp[0]), complex(inp[1]))),
    "tuple_first": ((250, 405, 446, 617, 720, 763, 808), lambda inp: [tuple(inp[0]), inp[1]]),
    "tuple_nested_args": (
        (259, 401, 445),
        lambda inp: [tuple(tuple(x) for x in a) for a in inp],
    ),
    "tuple_list_items_first": (
        (278,),
        lambda inp: [tuple(tuple(x) if isinstance(x, list) else x for x in inp[0])],
    ),
    "tuple_first_of_three": ((307,), lambda inp: [tuple(inp[0]), inp[1], inp[2]]),
    "tuple_dict_values": (
        (722,),
        lambda inp: [{k: tuple(v) for k, v in inp[0].items()}] + inp[1:],
    ),
    "complex_arg": ((252,), lambda inp: [complex(inp[0])]),
    "all_tuples": ((580, 615, 791), _tuples),
}
_MBPP_RULE_BY_NUMBER = {n: rule for _, (ns, rule) in _MBPP_INPUT_RULES.items() for n in ns}


def mbpp_inputs(task_id: str, inputs: list[Any]) -> list[Any]:
    """MBPP+ inputs as the function receives them (tuples, sets, complex numbers)."""
    try:
        number = int(str(task_id).rsplit("/", 1)[-1])
    except ValueError:
        return inputs
    rule = _MBPP_RULE_BY_NUMBER.get(number)
    return [rule(i) for i in inputs] if rule else inputs


def _read_rows(path: str, setting: str) -> list[dict[str, Any]]:
    p = Path(path) if path else None
    if p is None or not p.is_file():
        raise FileNotFoundError(
            f"This task needs the EvalPlus file: set {setting} (or --data=PATH) to "
            f"HumanEvalPlus.jsonl[.gz] / MbppPlus.jsonl[.gz]; got {str(path)!r}."
        )
    raw = p.read_bytes()
    text = gzip.decompress(raw).decode("utf-8") if raw[:2] == b"\x1f\x8b" else raw.decode()
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{n} is not valid JSON ({e}); one object per line.") from e
    return rows


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float, dataset: str, setting: str) -> tuple[dict, ...]:
    probs = []
    for row in _read_rows(path, setting):
        missing = [k for k in REQUIRED_FIELDS if k not in row]
        if missing:
            raise ValueError(
                f"{path}: {row.get('task_id', '?')} lacks {missing}; expected an EvalPlus file "
                f"with fields {', '.join(REQUIRED_FIELDS)}."
            )
        key = hashlib.sha256(
            json.dumps(
                [dataset, row["prompt"], row["canonical_solution"], row["entry_point"]]
                + [row["base_input"], row["plus_input"]],
                sort_keys=True,
            ).encode()
        ).hexdigest()
        p = {k: row[k] for k in REQUIRED_FIELDS}
        p["contract"] = row.get("contract", "")
        p["dataset"] = dataset
        p["key"] = key
        if dataset == "mbpp":
            p["base_input"] = mbpp_inputs(p["task_id"], p["base_input"])
            p["plus_input"] = mbpp_inputs(p["task_id"], p["plus_input"])
        probs.append(p)
    return tuple(probs)


def load_problems(path: str | Path, dataset: str, setting: str = "the task's path") -> list[dict]:
    """The problems of an EvalPlus file in file order (`dataset`: humaneval or mbpp)."""
    p = str(path)
    mtime = os.path.getmtime(p) if p and os.path.isfile(p) else 0.0
    return [dict(x) for x in _load_cached(p, mtime, dataset, setting)]


def _payload(spec: Mapping[str, Any]) -> str:
    return base64.b64encode(pickle.dumps(dict(spec))).decode("ascii")


def harness_program(spec: Mapping[str, Any]) -> Program:
    """A sandboxed program running the harness on `spec` (in-process: single_process)."""
    source = HARNESS_SOURCE + f"\n\nmain({_payload(spec)!r})\n"
    return Program(source, verdict=True, single_process=True)


def _cache_dir(options: PlusOptions) -> Path:
    if options.times_cache:
        return Path(options.times_cache)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "zen_code_jax" / "evalplus_times"


def canonical_times(
    problems: Sequence[dict[str, Any]], options: PlusOptions, *, workers: int, packages: tuple
) -> dict[str, dict[str, list[float]]]:
    """{task_id: {"base": [s, ...], "plus": [...]}}: the canonical solution's seconds per
    input, measured in the sandbox once per problem on this machine and cached on disk."""
    folder = _cache_dir(options)
    out, todo = {}, []
    for p in problems:
        f = folder / f"{p['key']}.json"
        if f.is_file():
            out[p["task_id"]] = json.loads(f.read_text())
        else:
            todo.append(p)
    if not todo:
        return out
    specs = [(p, s) for p in todo for s in SPLITS]
    progs = [
        harness_program(
            dict(
                mode="times",
                dataset=p["dataset"],
                entry_point=p["entry_point"],
                canonical=p["prompt"] + p["canonical_solution"],
                inputs=p[f"{s}_input"],
            )
        )
        for p, s in specs
    ]
    limits = SandboxLimits(timeout_s=600.0, memory_mb=EVALPLUS_MEMORY_MB, packages=packages)
    results = run_programs(progs, limits=limits, workers=workers)
    measured: dict[str, dict[str, list[float]]] = {}
    for (p, s), res in zip(specs, results):
        if not res.passed:
            raise RuntimeError(
                f"{p['task_id']}: the canonical solution failed on its own {s} inputs in the "
                f"sandbox ({res.status}: {res.reason}; {res.stderr[-300:]}); check the file."
            )
        measured.setdefault(p["task_id"], {})[s] = json.loads(res.stdout.splitlines()[-1])["times"]
    folder.mkdir(parents=True, exist_ok=True)
    for p in todo:
        tmp = folder / f"{p['key']}.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(measured[p["task_id"]]))
        os.replace(tmp, folder / f"{p['key']}.json")
    return {**out, **measured}


def status_of(res: Any) -> str:
    """evalplus's vocabulary: pass, fail (a wrong or slow answer, an exception), timeout
    (the whole run went over its limit or died)."""
    if res.passed:
        return "pass"
    if res.status == TIMEOUT or (res.signal is not None and res.status != PASSED):
        return "timeout"
    return "fail"


def _fail_index(res: Any) -> int | None:
    try:
        return int(json.loads(res.stdout.splitlines()[-1])["fail_index"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


class PlusTask(PassAtKTask):
    """One of HumanEval+ / MBPP+ (`dataset`): base and plus verdicts per sample."""

    options_type = PlusOptions

    def __init__(self, name: str, dataset: str, stops: tuple[str, ...], description: str):
        self.name, self.dataset, self.stops, self.description = name, dataset, stops, description

    def load(self, options: PlusOptions) -> list[dict[str, Any]]:
        return load_problems(options.path, self.dataset, f"eval.task_options.{self.name}.path")

    def stop(self, problem: dict[str, Any]) -> tuple[str, ...]:
        return self.stops

    def whole_program(self, problem: dict[str, Any]) -> dict[str, Any]:
        """A `solution` sample replaces prompt + completion; the canonical keeps its prompt."""
        return dict(problem, whole_program=True)

    def program(self, problem: dict[str, Any], completion: str) -> Program:
        """The plus-input run without time limits measured (see `score_items`)."""
        return harness_program(self._spec(problem, completion, "plus", None, PlusOptions()))

    def _spec(
        self,
        problem: dict[str, Any],
        completion: str,
        split: str,
        times: list[float] | None,
        options: PlusOptions,
    ) -> dict[str, Any]:
        inputs = problem[f"{split}_input"]
        times = times if times is not None else [0.0] * len(inputs)
        return dict(
            mode="check",
            dataset=self.dataset,
            entry_point=problem["entry_point"],
            canonical=problem["prompt"] + problem["canonical_solution"],
            code=completion if problem.get("whole_program") else problem["prompt"] + completion,
            inputs=inputs,
            atol=problem["atol"],
            time_limits=[max(options.min_time_limit, options.time_factor * t) for t in times],
        )

    def score_items(
        self,
        items: Sequence[tuple[dict[str, Any], str]],
        *,
        limits: SandboxLimits,
        workers: int,
        ks: Sequence[int] | None = None,
        options: Any = None,
    ) -> TaskResult:
        """Run each (problem, completion) on the base and the plus inputs; per sample
        `base_passed`, `plus_passed` and `passed` (= both), statuses as evalplus names them."""
        options = options if options is not None else PlusOptions()
        packages = tuple(dict.fromkeys(tuple(limits.packages) + ("numpy",)))
        problems = list({p["task_id"]: p for p, _ in items}.values())
        times = canonical_times(problems, options, workers=workers, packages=packages)
        progs, metas = [], []
        for p, c in items:
            for s in SPLITS:
                t = times[p["task_id"]][s]
                spec = self._spec(p, c, s, t, options)
                progs.append(harness_program(spec))
                # evalplus stops the run after min(60, sum of limits) + 2 s; ours adds the
                # canonical run in the same program and the sandbox's start-up.
                budget = min(60.0, sum(spec["time_limits"])) + 2 + 2 * sum(t) + limits.timeout_s
                metas.append(
                    dataclasses.replace(
                        limits,
                        timeout_s=budget,
                        memory_mb=max(limits.memory_mb, EVALPLUS_MEMORY_MB),
                        packages=packages,
                    )
                )
        results = _run_each(progs, metas, workers)
        records, base, plus = [], {}, {}
        for n, (p, c) in enumerate(items):
            rb, rp = results[2 * n], results[2 * n + 1]
            b_ok, p_ok = rb.passed, rb.passed and rp.passed
            records.append(
                {
                    "task_id": p["task_id"],
                    "passed": p_ok,
                    "base_passed": b_ok,
                    "plus_passed": rp.passed,
                    "base_status": status_of(rb),
                    "plus_status": status_of(rp),
                    "base_fail_index": None if b_ok else _fail_index(rb),
                    "plus_fail_index": None if rp.passed else _fail_index(rp),
                    "base": rb.to_dict(max_chars=300),
                    "plus": rp.to_dict(max_chars=300),
                    "completion": c,
                }
            )
            base.setdefault(p["task_id"], []).append(b_ok)
            plus.setdefault(p["task_id"], []).append(p_ok)
        kk = ks if ks is not None else default_ks(base)
        metrics = {f"base_{k}": v for k, v in mean_pass_at_k(base, kk).items()}
        metrics.update({f"plus_{k}": v for k, v in mean_pass_at_k(plus, kk).items()})
        metrics["num_problems"] = float(len(base))
        return TaskResult(metrics, records)

    def standard_errors(
        self, records: list[dict[str, Any]], eval_cfg: Mapping[str, Any]
    ) -> dict[str, float]:
        """SE of the per-problem mean pass rate (pass@1), base and plus."""
        if not records:
            return {}
        return {
            "base_pass@1": mean_se(per_problem_mean(records, "base_passed")),
            "plus_pass@1": mean_se(per_problem_mean(records, "passed")),
        }


def _run_each(progs: list[Program], limits: list[SandboxLimits], workers: int) -> list[Any]:
    """Like `run_programs`, with one limit per program (each run's own time budget)."""

    def one(i: int) -> Any:
        p = progs[i]
        return run_program(
            p.source, limits=limits[i], verdict=p.verdict, single_process=p.single_process
        )

    with ThreadPoolExecutor(max_workers=max(1, min(workers, SLOTS))) as ex:
        return list(ex.map(one, range(len(progs))))


HUMANEVAL_PLUS = PlusTask(
    "humaneval_plus",
    "humaneval",
    humaneval.STOP_SEQUENCES,
    "HumanEval+ (EvalPlus file by path / --data): base and plus pass@k, official rules",
)
MBPP_PLUS = PlusTask(
    "mbpp_plus",
    "mbpp",
    mbpp.STOP_SEQUENCES,
    "MBPP+ (EvalPlus file by path / --data): base and plus pass@k, official rules",
)
TASKS = (HUMANEVAL_PLUS, MBPP_PLUS)
