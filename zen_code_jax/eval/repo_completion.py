"""RepoBench-style next-line completion on held-out repositories (Liu et al. 2023).

For each sample (seeded by (config.seed, sample index) only) we pick a held-out repository
with at least two files, a target file and a non-blank target line (not the first line,
at least 3 non-space characters). The model sees the target file's header and the lines
before the target, and must produce the next line. Two settings:

- `cross_file_first`: the repository's opening and its other files first (dependencies
  before users via `data.import_graph.order_files`), then the target's header and its
  in-file context.
- `in_file`: the target's header and in-file context only.

Prompts are token ids built by `data.repo_format.RepoFormat` in the run's repository
format (`EvalContext.repo_layout()`: the run's resolved `data.repo_format`), the code that
lays out training windows, so every context file and the target's header are token for
token what training showed the model (report: `# File: {path}` headers; qwen2.5 /
starcoder2: `<|repo_name|>` / `<|file_sep|>` sentinels). The in-file prefix is encoded on
its own, as the target's content is in training up to its own cut.

The prompt fits `eval.context_tokens` minus the generation budget: the target's header
always stays, its in-file prefix is trimmed from the left (whole lines), and cross-file
context fills what is left with whole files, nearest the target first (the repository
opening is kept when any file is). Scores: exact match and edit similarity
(1 - Levenshtein distance / longer length) of the first generated line vs the target line,
both with surrounding whitespace stripped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from zen_code_jax.data.import_graph import order_files
from zen_code_jax.data.repo_format import RepoFormat, comment_header
from zen_code_jax.eval.base import EvalContext, Task, TaskResult
from zen_code_jax.eval.heldout import _STREAMS, DEFAULT_SAMPLES, split_lines, trim_left

SETTINGS = ("cross_file_first", "in_file")


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; unit costs)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_similarity(pred: str, target: str) -> float:
    """1 - levenshtein / max length, on stripped strings (1.0 for two empty strings)."""
    a, b = pred.strip(), target.strip()
    if not a and not b:
        return 1.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))


def _order(files: Sequence[tuple[str, str]]) -> list[str]:
    return list(order_files(list(files)))


def sample_examples(corpus: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """n next-line examples from held-out repositories with >= 2 files."""
    src = corpus.source("heldout")
    repos = [(name, a, b) for name, a, b in corpus.repos("heldout") if b - a >= 2]
    if not repos:
        raise ValueError(
            "No held-out repository has two or more files, so repo_completion has nothing to "
            "score; use a corpus of multi-file repositories (data.source='dir' or 'jsonl')."
        )
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, _STREAMS["repo"], i])
        for _attempt in range(50):
            name, a, b = repos[int(rng.integers(len(repos)))]
            t = int(rng.integers(a, b))
            rec = src[t]
            lines = split_lines(rec["content"])
            cands = [k for k in range(1, len(lines)) if len(lines[k].strip()) >= 3]
            if not cands:
                continue
            k = cands[int(rng.integers(len(cands)))]
            others = [(src[j]["path"], src[j]["content"]) for j in range(a, b) if j != t]
            by_path = dict(others)
            out.append(
                {
                    "task_id": f"repo_completion/{i}",
                    "repo": str(name),
                    "path": rec["path"],
                    "in_file": "".join(lines[:k]),
                    "context_files": [[p, by_path[p]] for p in _order(others)],
                    "target": lines[k].rstrip("\n"),
                }
            )
            break
    return out


def build_prompt(
    ex: dict[str, Any], setting: str, fmt: RepoFormat, tok: Any, max_tokens: int
) -> list[int]:
    """The prompt's token ids for one setting within max_tokens, in layout `fmt`: the
    target's header always stays; its prefix is trimmed from the left (whole lines) first;
    cross-file context fills the remaining room with whole files, the ones nearest the
    target kept, after the repository opening (`fmt.repo_ids`, only when a file is kept)."""
    if setting not in SETTINGS:
        raise ValueError(f"Unknown repo_completion setting {setting!r}; use one of {SETTINGS}.")
    header = fmt.header_ids(ex["path"], tok)
    infile = [*header, *tok.encode(trim_left(ex["in_file"], tok, max_tokens - len(header)))]
    if setting == "in_file":
        return infile
    opening = fmt.repo_ids(ex["repo"], tok)
    room = max_tokens - len(infile) - len(opening) - fmt.prefix.reserve
    kept: list[tuple[str, str]] = []
    ids_kept: list[list[int]] = []
    for path, content in reversed(ex["context_files"]):
        ids = fmt.file_ids(path, content, tok)
        if len(ids) > room:
            break
        kept.append((path, content))
        ids_kept.append(ids)
        room -= len(ids)
    if not kept:
        return infile
    # The opening and the path / symbol prefix (`data.repo_prefix`), as training built them.
    head = fmt.open_ids(kept[::-1], tok, ex["repo"], ex["path"])
    return [*head, *(t for ids in reversed(ids_kept) for t in ids), *infile]


class RepoCompletionTask(Task):
    name = "repo_completion"
    description = "RepoBench-style next-line completion (cross-file-first and in-file)"
    needs_corpus = True

    def _n(self, ctx: EvalContext) -> int:
        return ctx.limit if ctx.limit > 0 else DEFAULT_SAMPLES

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        exs = sample_examples(ctx.get_corpus(), self._n(ctx), ctx.seed)
        if ctx.tokenizer is None:  # no run: the text of the report layout
            return [
                {**e, "prompt": _report_text(e), "canonical_solution": e["target"]} for e in exs
            ]
        fmt, tok = ctx.repo_layout(), ctx.tokenizer
        return [
            {
                **e,
                "prompt": tok.decode(build_prompt(e, SETTINGS[0], fmt, tok, 1 << 30)),
                "canonical_solution": e["target"],
            }
            for e in exs
        ]

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        engine = ctx.need_engine()
        tok = ctx.tokenizer
        kw = ctx.decode_kwargs()
        budget = ctx.context_tokens() - kw["max_new_tokens"]
        exs = sample_examples(ctx.get_corpus(), self._n(ctx), ctx.seed)
        fmt = ctx.repo_layout()
        metrics: dict[str, float] = {}
        records: list[dict[str, Any]] = []
        for setting in SETTINGS:
            prompts = [build_prompt(e, setting, fmt, tok, budget) for e in exs]
            gens = engine.generate_ids(prompts, stop=("\n",), seed=ctx.seed, **kw)
            em, es = [], []
            for e, g in zip(exs, gens):
                pred = g.split("\n", 1)[0]
                ok = pred.strip() == e["target"].strip()
                sim = edit_similarity(pred, e["target"])
                em.append(ok)
                es.append(sim)
                records.append(
                    {
                        "task_id": e["task_id"],
                        "setting": setting,
                        "repo": e["repo"],
                        "path": e["path"],
                        "target": e["target"],
                        "prediction": pred,
                        "exact_match": ok,
                        "edit_similarity": sim,
                    }
                )
            metrics[f"{setting}/exact_match"] = float(np.mean(em)) if em else 0.0
            metrics[f"{setting}/edit_similarity"] = float(np.mean(es)) if es else 0.0
        metrics["num_samples"] = float(len(exs))
        return TaskResult(metrics, records)


def _report_text(ex: dict[str, Any]) -> str:
    """The cross-file prompt as text in the report layout (an export without a run)."""
    files = [*ex["context_files"], (ex["path"], ex["in_file"])]
    text = "".join(f"{comment_header(p)}{c}\n" for p, c in files)
    return text[:-1]  # the target's prefix has no trailer


TASKS = (RepoCompletionTask(),)
