"""pass@k against brute-force enumeration of k-subsets and the binomial closed form."""

import itertools
from math import comb

import pytest

from zen_code_jax.eval.passk import estimate_pass_at_k, mean_pass_at_k, pass_at_k


def brute_force(n: int, c: int, k: int) -> float:
    """Fraction of k-subsets of n samples (first c correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(
    "n,c,k",
    [
        (1, 0, 1),
        (1, 1, 1),
        (5, 0, 1),
        (5, 2, 1),
        (5, 2, 3),
        (6, 1, 5),
        (8, 3, 2),
        (10, 4, 10),
        (10, 1, 1),
        (12, 5, 4),
        (9, 8, 3),
    ],
)
def test_pass_at_k_matches_brute_force_and_closed_form(n, c, k):
    got = pass_at_k(n, c, k)
    assert got == pytest.approx(brute_force(n, c, k), abs=1e-12)
    assert got == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_pass_at_1_is_fraction_correct_and_large_n_is_stable():
    assert pass_at_k(200, 37, 1) == pytest.approx(37 / 200, abs=1e-12)
    assert pass_at_k(200, 37, 100) == pytest.approx(1 - comb(163, 100) / comb(200, 100), abs=1e-12)


def test_mean_and_vector_forms():
    results = {"a": [True, False, False, False], "b": [False] * 4, "c": [True] * 4}
    got = mean_pass_at_k(results, ks=(1, 2, 10))
    assert set(got) == {"pass@1", "pass@2"}  # k=10 > n: no unbiased estimate, skipped
    assert got["pass@1"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert got["pass@2"] == pytest.approx((brute_force(4, 1, 2) + 0 + 1) / 3)
    v = estimate_pass_at_k([4, 4], [1, 2], 2)
    assert v.tolist() == pytest.approx([brute_force(4, 1, 2), brute_force(4, 2, 2)])


def test_bad_counts_raise_clear_errors():
    with pytest.raises(ValueError, match="at least 5 samples"):
        pass_at_k(3, 1, 5)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(3, 4, 1)
