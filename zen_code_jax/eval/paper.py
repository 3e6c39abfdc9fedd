"""The Zen-Code whitepaper's evaluation numbers, typed by hand from its LaTeX source.

Why a module and not a parse at run time: the .tex is not shipped with the package, and a
typed table makes every number the report compares against reviewable in one place.
`tests/test_eval_suite.py` parses the tables of the .tex and checks these rows against
them, so a typo here fails a test.

Values are as printed: percentages for pass@1, exact match and resolution rates; RepoBench
is a fraction (0.834), as in the paper's Table 4.
"""

from __future__ import annotations

import dataclasses

# Table labels in the .tex (what each row came from).
BENCHMARKS = "tab:benchmarks"  # Table 4: code generation
MULTILINGUAL = "tab:multilingual_code"  # Table 5: MultiPL-E per language
FIM = "tab:fim"  # Table 6: HumanEval-Infilling
SWEBENCH = "tab:swebench"  # SWE-bench Verified by category

ZEN = "Zen-Code (14B)"


@dataclasses.dataclass(frozen=True)
class PaperRow:
    """One printed number: `table` (the .tex label), `benchmark` (the row's first cell,
    plain text), `model` (the column header, plain text) and `value` as printed."""

    table: str
    benchmark: str
    model: str
    value: float


def _rows(table: str, models: tuple[str, ...], body: dict[str, tuple[float, ...]]) -> list:
    return [
        PaperRow(table, bench, model, value)
        for bench, values in body.items()
        for model, value in zip(models, values, strict=True)
    ]


PAPER: tuple[PaperRow, ...] = tuple(
    _rows(
        BENCHMARKS,
        (ZEN, "Comp. A (15B)", "Comp. B (13B)", "Comp. C (7B)"),
        {
            "HumanEval (pass@1)": (87.2, 85.1, 83.6, 76.3),
            "HumanEval+ (pass@1)": (82.4, 80.3, 78.7, 71.2),
            "MBPP (pass@1)": (82.3, 80.1, 78.4, 70.8),
            "MBPP+ (pass@1)": (76.8, 74.3, 72.1, 64.3),
            "LiveCodeBench (3-month)": (54.2, 51.7, 49.3, 41.8),
            "SWE-bench Verified": (28.4, 25.3, 22.8, 14.6),
            "RepoBench (retrieval)": (0.834, 0.812, 0.798, 0.741),
            "MultiPL-E (avg 12 langs)": (72.4, 70.8, 68.3, 61.2),
        },
    )
    + _rows(
        MULTILINGUAL,
        (ZEN, "Competitor (15B)"),
        {
            "Python": (87.2, 85.1),
            "JavaScript": (78.6, 76.4),
            "TypeScript": (76.4, 74.1),
            "Java": (74.3, 72.8),
            "C++": (70.8, 68.3),
            "Rust": (68.4, 65.7),
            "Go": (73.1, 71.4),
            "Ruby": (65.3, 62.8),
            "PHP": (63.7, 61.4),
            "Shell": (58.4, 55.9),
        },
    )
    + _rows(
        FIM,
        (ZEN, "Competitor (15B)"),
        {
            "Single-line (exact match)": (82.3, 79.1),
            "Multi-line (exact match)": (61.4, 57.8),
            "Single-line (functional)": (91.7, 89.4),
            "Multi-line (functional)": (74.6, 71.3),
        },
    )
    + _rows(
        SWEBENCH,
        (ZEN,),
        {
            "Logic errors": (34.2,),
            "Type errors": (41.8,),
            "Off-by-one": (38.7,),
            "Missing handling": (31.4,),
            "API usage errors": (29.6,),
            "Regression fixes": (18.3,),
            "Overall (verified)": (28.4,),
        },
    )
)


def paper_value(table: str, benchmark: str, model: str = ZEN) -> float | None:
    """The paper's number for (table, benchmark, model), or None where it prints none."""
    for r in PAPER:
        if (r.table, r.benchmark, r.model) == (table, benchmark, model):
            return r.value
    return None
