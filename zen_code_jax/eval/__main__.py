"""Command line: export a task's problems, or score a run's checkpoint.

python -m zen_code_jax.eval --export=humaneval > humaneval.jsonl
python -m zen_code_jax.eval --export=heldout_fim --run_dir=RUN   # needs the run's corpus
python -m zen_code_jax.eval --run_dir=RUN --tasks=humaneval,heldout_loss [--limit=20]
python -m zen_code_jax.eval --recipe=humaneval_fim_qwen --run_dir=RUN   # a pinned convention
python -m zen_code_jax.eval --hf_dir=DIR --tasks=humaneval [--run_dir=OUT]  # an HF model
python -m zen_code_jax.eval --list                                       # tasks and recipes
python -m zen_code_jax.eval --run_dir=RUN --suite=report [--data_dir=DIR] # the paper's tables
python -m zen_code_jax.eval --tasks=humaneval_plus --data=HumanEvalPlus.jsonl.gz \
    --samples=samples.jsonl --out_dir=OUT     # score completions made elsewhere, no model

--hf_dir imports an HF Qwen2 directory first (`python -m zen_code_jax.hf import`) into
--run_dir (default: a temporary directory), so its scores and records land in a run dir.

RUN is one run directory, WORKDIR/<experiment>/<arm>; --workdir is the WORKDIR (the root of
many runs, holding cache/), by default the run's own. The same vocabulary as
experiments/run.py and `python -m zen_code_jax.infer`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

from zen_code_jax.config import apply_overrides, base_config, config_from_dict, model_config_from
from zen_code_jax.eval.base import EvalContext
from zen_code_jax.eval.recipes import RECIPES, resolve
from zen_code_jax.eval.registry import (
    SUITES,
    check_task_options,
    data_overrides,
    get_task,
    registry,
)
from zen_code_jax.eval.runner import corpus_loader, run_tasks, score_checkpoint
from zen_code_jax.eval.suite import score_suite
from zen_code_jax.hf.transfer import import_hf
from zen_code_jax.rundir import RunDir


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m zen_code_jax.eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--export", help="print TASK's problems as JSONL to stdout")
    ap.add_argument("--run_dir", help="one run directory WORKDIR/<experiment>/<arm>")
    ap.add_argument("--hf_dir", help="an HF Qwen2 model directory to import and score")
    ap.add_argument("--workdir", help="WORKDIR holding cache/ (default: RUN/../..)")
    ap.add_argument("--tasks", help="comma-separated task names (default: config.eval.tasks)")
    ap.add_argument("--limit", type=int, help="problems per task (0 = all)")
    ap.add_argument("--num_samples", type=int, help="samples per problem")
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--max_new_tokens", type=int)
    ap.add_argument(
        "--data",
        help="the data file or folder of the --tasks (sets each task's own data option, e.g. "
        "mbpp's path; a task without one refuses it)",
    )
    ap.add_argument(
        "--recipe", help="a pinned convention (tasks + decoding); see --list and docs/eval.md"
    )
    ap.add_argument(
        "--humaneval_infill_dir",
        help="folder with OpenAI's official HumanEval-*Infilling.jsonl[.gz] files (--data "
        "for the HumanEval-Infilling tasks; also allowed with --recipe)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="eval.KEY=VALUE",
        help="set an evaluation setting, repeatable: any `eval.*` key, e.g. "
        "--set=eval.task_options.livecodebench.since=2024-06-01 or --set=eval.top_p=0.95 "
        "(typed like the config; an unknown key or task option is an error naming the valid ones)",
    )
    ap.add_argument(
        "--suite",
        help="a named task list (report: the paper's Tables 4-6): runs its tasks whose data "
        "is set, skips the others with the reason, writes tables.md/.json/.png into "
        "RUN/eval/report/ (or --out_dir)",
    )
    ap.add_argument(
        "--data_dir",
        help="with --suite: a folder holding the benchmarks' published files (HumanEvalPlus-"
        "*.jsonl.gz, MbppPlus-*.jsonl.gz, mbpp.jsonl, HumanEval-*Infilling.jsonl.gz, ...); "
        "each found file sets its task's data option",
    )
    ap.add_argument("--list", action="store_true", help="list the tasks")
    ap.add_argument(
        "--samples",
        help="score completions made elsewhere (JSONL: task_id + completion, or solution = the "
        "whole program; several per task for pass@k) instead of a model's",
    )
    ap.add_argument(
        "--out_dir",
        help="with --samples: where eval/<task>.jsonl and eval/summary.json go; with "
        "--suite: where the tables go",
    )
    return ap.parse_args(argv)


def _set_flags(pairs: list[str]) -> dict[str, str]:
    """`--set eval.KEY=VALUE` pairs; only `eval.*`: scoring a run never changes what it trained."""
    o: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("eval."):
            raise SystemExit(
                f"--set={pair!r}: give eval.KEY=VALUE (an evaluation setting, e.g. "
                "eval.task_options.livecodebench.since=2024-06-01); other config groups "
                "belong to training."
            )
        o[key] = value
    return o


def _overrides(a: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    o: dict[str, Any] = _set_flags(a.set)
    for k in ("limit", "num_samples", "temperature", "max_new_tokens"):
        if getattr(a, k) is not None:
            o[f"eval.{k}"] = getattr(a, k)
    if a.data and a.humaneval_infill_dir:
        raise SystemExit("Give --data or --humaneval_infill_dir, not both (the same option).")
    data = a.data or a.humaneval_infill_dir
    if data:
        try:
            o.update(data_overrides(names, data))
        except ValueError as e:
            raise SystemExit(str(e)) from None
    # Checked now against the schema and the tasks' options, so a typo is one line, not a
    # traceback after the model has loaded.
    probe = base_config()
    try:
        apply_overrides(probe, o)
        check_task_options(probe.eval)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    return o


def _export(a: argparse.Namespace) -> int:
    task = get_task(a.export)
    corpus = None
    if a.run_dir:
        run = RunDir(a.run_dir)
        cfg = config_from_dict(run.read_config())
        vocab = model_config_from(cfg.model).vocab_size
        corpus = corpus_loader(cfg, vocab, a.workdir or run.workdir)
    else:
        cfg = base_config()
    apply_overrides(cfg, _overrides(a, [a.export]))
    ctx = EvalContext(config=cfg, corpus=corpus)
    if task.needs_corpus and corpus is None:
        raise SystemExit(f"--export={a.export} needs --run_dir=RUN (held-out files of its corpus).")
    out = sys.stdout
    try:
        for p in task.problems(ctx):
            out.write(json.dumps(p) + "\n")
        out.flush()
    except BrokenPipeError:  # e.g. piped into `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _score_samples(a: argparse.Namespace) -> int:
    """--samples: score a samples file on --tasks with no model, records and summary into
    --out_dir (or --run_dir's eval/), exactly as a model's run writes them."""
    # local import: the samples path only; keeps the model-scoring imports unchanged
    from zen_code_jax.eval.execution import read_samples

    names = [t for t in (a.tasks or "").split(",") if t]
    out = a.out_dir or a.run_dir
    if not names or not out or a.hf_dir or a.recipe:
        raise SystemExit(
            "--samples=FILE needs --tasks=T[,T...] and --out_dir=DIR (or --run_dir=RUN); no "
            "--hf_dir or --recipe (nothing is generated)."
        )
    bad = [n for n in names if not get_task(n).scores_samples]
    if bad:
        ok = [n for n, t in sorted(registry().items()) if t.scores_samples]
        raise SystemExit(
            f"--samples: {', '.join(bad)} cannot score given completions; tasks that can: "
            f"{', '.join(ok)}."
        )
    run = RunDir(a.run_dir) if a.run_dir else None
    cfg = config_from_dict(run.read_config()) if run and run.config_json.exists() else None
    cfg = cfg or base_config()
    apply_overrides(cfg, _overrides(a, names))
    try:
        samples = read_samples(a.samples)
    except (OSError, ValueError) as e:
        raise SystemExit(str(e)) from None
    every = cfg.copy_and_resolve_references()
    every.eval.limit = 0  # a sample beyond --limit is known, just not scored
    known = {p["task_id"] for n in names for p in get_task(n).problems(EvalContext(every))}
    unknown = sorted(set(samples) - known)
    if unknown:
        raise SystemExit(
            f"--samples: {len(unknown)} task_ids match no problem of {', '.join(names)} "
            f"(first: {', '.join(unknown[:3])}); check --tasks and --data."
        )
    try:
        summaries = run_tasks(EvalContext(config=cfg, samples=samples), names, out)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    print(json.dumps(summaries, indent=2, sort_keys=True))
    return 0


def _suite(a: argparse.Namespace) -> int:
    """--suite=NAME: score the suite's tasks that have data on a run or an HF directory and
    write the paper's tables beside its numbers (eval/suite.py)."""
    if not a.suite or a.tasks or a.recipe or a.samples or a.data:
        raise SystemExit(
            "--suite=NAME runs its own task list: give --suite (with --data_dir=DIR and/or "
            "--set=eval.task_options.T.path=F for the data), without --tasks, --recipe, "
            "--samples or --data."
        )
    if a.suite not in SUITES:
        raise SystemExit(f"--suite={a.suite!r} is not a suite; valid suites: {', '.join(SUITES)}.")
    if not (a.run_dir or a.hf_dir) or (a.hf_dir and not (a.run_dir or a.out_dir)):
        raise SystemExit(
            "--suite needs --run_dir=RUN, or --hf_dir=DIR with --out_dir=OUT (or --run_dir to "
            "keep the imported run) for the tables."
        )
    overrides = _overrides(a, [])
    with tempfile.TemporaryDirectory() as tmp:
        run = a.run_dir if not a.hf_dir else (a.run_dir or f"{tmp}/hf_import/main")
        if a.hf_dir:
            import_hf(a.hf_dir, run)
        try:
            summaries, folder = score_suite(
                run,
                a.suite,
                overrides=overrides,
                data_dir=a.data_dir,
                workdir=a.workdir,
                out_dir=a.out_dir,
                checkpoint=a.hf_dir or "",
            )
        except ValueError as e:
            raise SystemExit(str(e)) from None
    print(json.dumps(summaries, indent=2, sort_keys=True))
    print(f"tables: {folder}/tables.md, tables.json, tables.png", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(_parse(argv))
    except FileNotFoundError as e:  # a task's data file or a run directory: say which
        raise SystemExit(str(e)) from None


def _main(a: argparse.Namespace) -> int:
    if a.list:
        for name, t in sorted(registry().items()):
            print(f"{name:44s} {t.description}")
        print("\nrecipes (--recipe=NAME):")
        for name, r in RECIPES.items():
            print(f"{name:44s} {', '.join(r.tasks)}: {r.description}")
        print("\nsuites (--suite=NAME; the tasks whose data is set run):")
        for name, tasks in SUITES.items():
            print(f"{name:44s} {', '.join(tasks)}")
        return 0
    if a.export:
        return _export(a)
    if a.suite or a.data_dir:
        return _suite(a)
    if a.samples:
        return _score_samples(a)
    if a.hf_dir:
        names = [t for t in (a.tasks or "").split(",") if t]
        with tempfile.TemporaryDirectory() as tmp:
            run = a.run_dir or f"{tmp}/hf_import/main"
            import_hf(a.hf_dir, run)
            summaries = score_checkpoint(
                run, names or None, overrides=_overrides(a, names), workdir=a.workdir
            )
        print(json.dumps(summaries, indent=2, sort_keys=True))
        return 0
    if not a.run_dir:
        raise SystemExit(
            "Give --export=TASK, or --run_dir=WORKDIR/<experiment>/<arm> to score a run "
            "(--workdir is the root of many runs, not one run; see --help)."
        )
    names = [t for t in (a.tasks or "").split(",") if t]
    flags = {k: getattr(a, k) for k in ("tasks", "data", "temperature", "max_new_tokens")}
    flags["num_samples"] = a.num_samples
    if a.recipe is not None or names:
        try:
            names = resolve(a.recipe, names, flags)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    summaries = score_checkpoint(
        a.run_dir, names or None, overrides=_overrides(a, names), workdir=a.workdir
    )
    print(json.dumps(summaries, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
