"""The unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained
on Code", eq. 1).

With n samples per problem of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the chance
that a random size-k subset of the n samples contains at least one passing sample. The
product form below avoids huge binomials; it is exact up to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples, c correct."""
    if not (0 <= c <= n) or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(
            f"pass@{k} needs at least {k} samples per problem, got n={n}; "
            "raise eval.num_samples or ask for a smaller k."
        )
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i)
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def estimate_pass_at_k(
    num_samples: Sequence[int] | int, num_correct: Sequence[int], k: int
) -> np.ndarray:
    """pass@k for each problem (num_samples may be one int for all problems)."""
    correct = list(num_correct)
    if isinstance(num_samples, int):
        samples = [num_samples] * len(correct)
    else:
        samples = list(num_samples)
        if len(samples) != len(correct):
            raise ValueError(
                f"num_samples has {len(samples)} entries but num_correct has {len(correct)}"
            )
    return np.array([pass_at_k(n, c, k) for n, c in zip(samples, correct)], dtype=np.float64)


def mean_pass_at_k(results: dict[str, list[bool]], ks: Iterable[int]) -> dict[str, float]:
    """{'pass@k': mean over problems} for each k not larger than every problem's sample count.

    `results` maps problem id -> list of per-sample pass flags. k values larger than the
    smallest sample count are skipped (there is no unbiased estimate for them).
    """
    if not results:
        return {}
    n = [len(v) for v in results.values()]
    c = [sum(bool(x) for x in v) for v in results.values()]
    out = {}
    for k in ks:
        if k <= min(n):
            out[f"pass@{k}"] = float(estimate_pass_at_k(n, c, k).mean())
    return out
