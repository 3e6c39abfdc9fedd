"""RepoBench-style next-line completion on held-out repositories (Liu et al. 2023).

For each sample (seeded by (config.seed, sample index) only) we pick a held-out repository
with at least two files, a target file and a non-blank target line (not the first line,
at least 3 non-space characters). The model sees the target file's `# File:` header and the
lines before the target, and must produce the next line. Two settings:

- `cross_file_first`: the other files of the repository first, in the repository-window
  format (`# File: {path}\\n{content}\\n`, dependencies before users via
  `data.import_graph.order_files`), then the in-file context. Exactly the training layout.
- `in_file`: the in-file context only.

The prompt fits `eval.context_tokens` minus the generation budget: the target's header
always stays, its in-file prefix is trimmed from the left (whole lines), and cross-file
context fills what is left with whole files, nearest the target first. (The prompt string is
encoded as one text; training encodes each file block on its own, so token boundaries at
file starts can differ slightly.) Scores: exact match
and edit similarity (1 - Levenshtein distance / longer length) of the first generated line
vs the target line, both with surrounding whitespace stripped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from zen_code_jax.data.import_graph import order_files
from zen_code_jax.data.repo_window import file_block, file_header
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


def _header(path: str) -> str:
    return file_header(path)


def _block(path: str, content: str) -> str:
    return file_block(path, content)


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
            order = _order(others)
            by_path = dict(others)
            out.append(
                {
                    "task_id": f"repo_completion/{i}",
                    "repo": name,
                    "path": rec["path"],
                    "header": _header(rec["path"]),
                    "in_file": "".join(lines[:k]),
                    "cross_file_blocks": [_block(p, by_path[p]) for p in order],
                    "target": lines[k].rstrip("\n"),
                }
            )
            break
    return out


def build_prompt(ex: dict[str, Any], setting: str, tok: Any, max_tokens: int) -> str:
    """The prompt for one setting within max_tokens: the target file's header always stays;
    its prefix is trimmed from the left (whole lines) first-come; cross-file context fills
    the remaining room with whole files, the ones nearest the target kept."""
    if setting not in SETTINGS:
        raise ValueError(f"Unknown repo_completion setting {setting!r}; use one of {SETTINGS}.")
    head = len(tok.encode(ex["header"]))
    infile = ex["header"] + trim_left(ex["in_file"], tok, max_tokens - head)
    if setting == "in_file":
        return infile
    room = max_tokens - len(tok.encode(infile))
    kept: list[str] = []
    for block in reversed(ex["cross_file_blocks"]):
        n = len(tok.encode(block))
        if n > room:
            break
        kept.append(block)
        room -= n
    return "".join(reversed(kept)) + infile


class RepoCompletionTask(Task):
    name = "repo_completion"
    description = "RepoBench-style next-line completion (cross-file-first and in-file)"
    needs_corpus = True

    def _n(self, ctx: EvalContext) -> int:
        return ctx.limit if ctx.limit > 0 else DEFAULT_SAMPLES

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        exs = sample_examples(ctx.get_corpus(), self._n(ctx), ctx.seed)
        return [
            {
                **e,
                "prompt": "".join(e["cross_file_blocks"]) + e["header"] + e["in_file"],
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
        metrics: dict[str, float] = {}
        records: list[dict[str, Any]] = []
        for setting in SETTINGS:
            prompts = [build_prompt(e, setting, tok, budget) for e in exs]
            gens = engine.generate(prompts, stop=("\n",), seed=ctx.seed, **kw)
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


TASKS = (RepoCompletionTask(),)
