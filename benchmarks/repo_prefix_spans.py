"""What path / symbol-table prefixes and syntax-aware spans cost (issue 21, items 1-2).

On the stdlib (one repository per package directory, files in dependency order) with a
tokenizer trained on it:

- prefixes: per repository format and `data.repo_prefix`, windows of `--seq` tokens with a
  `--budget`-token prefix: how many windows, the mean prefix tokens per window, the share
  of windows whose prefix hit the budget, symbol-table parse outcomes, seconds;
- spans: every module FIM'd at document level (rate 1) with each `fim.span`: mean and
  median middle length in characters, `ast` outcomes (parsed / fallbacks), seconds.

    python benchmarks/repo_prefix_spans.py [--seq 4096] [--budget 512] [--vocab 2048]
"""

from __future__ import annotations

import argparse
import statistics
import sysconfig
import time
from pathlib import Path

from zen_code_jax.data.fim import unit_draw
from zen_code_jax.data.import_graph import order_files
from zen_code_jax.data.repo_format import RepoFormat, RepoPrefix, prefix_stats
from zen_code_jax.data.repo_window import repo_windows
from zen_code_jax.data.spans import SPANS, span_stats
from zen_code_jax.data.symbols import grammar_of
from zen_code_jax.data.tokenizer import Tokenizer

PACKAGES = ("asyncio", "email", "json", "urllib", "xml", "concurrent", "importlib", "logging",
            "http", "multiprocessing", "unittest", "sqlite3", "wsgiref", "ctypes")  # fmt: skip


def stdlib_repos() -> dict[str, list[tuple[str, str]]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    repos = {}
    for pkg in PACKAGES:
        files = {
            str(p.relative_to(root)): p.read_text(encoding="utf-8", errors="replace")
            for p in sorted((root / pkg).rglob("*.py"))
            if "test" not in p.relative_to(root).parts
        }
        repos[pkg] = [(p, files[p]) for p in order_files(list(files.items()))]
    return repos


def prefixes(repos, tok, seq: int, budget: int) -> None:
    """Windows per format and mode; prefix tokens per window measured in qwen2.5 (between
    the `<|repo_name|>` opening and the first `<|file_sep|>`)."""
    print("| format | repo_prefix | windows | prefix tokens / window | near budget | s |")
    print("|---|---|---|---|---|---|")
    for name in ("report", "qwen2.5"):
        for mode in ("none", "paths", "paths+symbols"):
            fmt = RepoFormat(name, RepoPrefix(mode, budget))
            t0, wins = time.perf_counter(), []
            for repo, files in repos.items():
                wins.extend(
                    (repo, w) for w in repo_windows(files, tok, None, seq, fmt=fmt, repo=repo)
                )
            dt = time.perf_counter() - t0
            mean = near = "-"
            if name == "qwen2.5":
                toks = [
                    w.tolist().index(tok.file_sep_id) - len(fmt.repo_ids(repo, tok))
                    for repo, w in wins
                ]
                mean = f"{statistics.mean(toks):.0f}"
                near = f"{sum(t > budget - 24 for t in toks) / len(toks):.2f}"
            print(f"| {name} | {mode} | {len(wins)} | {mean} | {near} | {dt:.1f} |")
    print("symbol tables:", prefix_stats())


def spans(repos, tok) -> None:
    files = [f for fs in repos.values() for f in fs]
    print("| fim.span | files | mean middle chars | median | s |")
    print("|---|---|---|---|---|")
    for span in SPANS:
        t0, lens = time.perf_counter(), []
        for path, text in files:
            pre, mid, suf = unit_draw(0, "file", path).split(text, span, grammar_of(path))
            lens.append(len(mid))
        dt = time.perf_counter() - t0
        print(f"| {span} | {len(files)} | {statistics.mean(lens):.0f} | "
              f"{statistics.median(lens):.0f} | {dt:.1f} |")  # fmt: skip
    print("ast spans:", span_stats())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--budget", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=2048)
    args = ap.parse_args()
    repos = stdlib_repos()
    n = sum(len(f) for f in repos.values())
    print(f"{len(repos)} repositories, {n} files")
    tok = Tokenizer.train([c for fs in repos.values() for _, c in fs], args.vocab)
    prefixes(repos, tok, args.seq, args.budget)
    spans(repos, tok)


if __name__ == "__main__":
    main()
