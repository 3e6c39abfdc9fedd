"""CrossCodeEval (Ding et al., NeurIPS 2023) line completion on the published data, by path.

Data (option `path`, or `--data`): the released `line_completion*.jsonl` files (one per
language and retrieval variant, e.g. `python/line_completion_rg1_bm25.jsonl`), or a directory
holding them. Rows: prompt (the file up to the cursor), groundtruth, right_context (the rest
of the file), crossfile_context {text, list: [{retrieved_chunk, filename, score}, ...]},
metadata {task_id, repository, file, ...}. The task id is `metadata.task_id` (or a top-level
`task_id`); the language follows the file's extension (python, java, typescript, csharp).

Prompt: fill-in-the-middle in the run's repository format (`ctx.repo_layout()`,
`RepoFormat.fim_prompt_ids`, the layout of training windows, `eval.fim_mode` PSM or SPM):
the repository opening, the retrieved chunks as context files (`filename`, the chunk as
content; the best-ranked chunk nearest the target), then the target's header and the FIM
sentinels around the prompt (prefix) and the right context (suffix). Budget:
`eval.context_tokens` less the generation budget; the suffix keeps at most a quarter of it
(Qwen2.5-Coder's 512 of 2048, whole lines from the cursor on), the prefix the rest (whole
lines nearest the cursor), and the chunks fill what is left, lowest-ranked dropped first.
CrossCodeEval's own harness is left-to-right with the chunks as comments; this task scores
the model in the format it was trained on, which is what the report's FIM models use.

Scoring, as CrossCodeEval's `eval_metric.py`: generation stops at the first newline for a
one-line ground truth (every released target is one line); Java / TypeScript / C#
predictions are cut after the first `;`, `{` or `}` (its `get_bracket_lang_statement`,
including its quirk that a match at position 0 keeps the whole line); its Python cut (the
shortest tree-sitter-parsable statement) cannot shorten a single line, so it is the identity
here and tree-sitter is not needed. Then `#...` and `//...` comments are removed from the
prediction and the ground truth. Exact match: equal non-blank stripped lines. Edit
similarity: fuzzywuzzy's `fuzz.ratio` of the stripped strings / 100 (`repobench.fuzz_ratio`).
Identifiers: string literals removed, `\\w+` tokens that start with a letter or `_` and are
not keywords of the language (CrossCodeEval's lists); identifier exact match compares the
lists, precision / recall / F1 the sets.
"""

from __future__ import annotations

import dataclasses
import keyword
import re
from collections.abc import Sequence
from typing import Any

from zen_code_jax.data.repo_format import RepoFormat, comment_header
from zen_code_jax.eval.base import (
    EvalContext,
    Task,
    TaskResult,
    sample_many,
    truncate_at_stops,
)
from zen_code_jax.eval.heldout import trim_left, trim_right
from zen_code_jax.eval.repobench import (
    data_files,
    fit_files,
    fuzz_ratio,
    group_means,
    grouped_standard_errors,
    limit_per_group,
    read_rows,
)

LANGUAGES: dict[str, str] = {
    ".py": "python",
    ".java": "java",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".cs": "csharp",
}
FIM_MODES = ("psm", "spm")
SUFFIX_SHARE = 4  # the suffix keeps at most 1/4 of the prompt budget (Qwen's 512 / 2048)
_SETTING = "eval.task_options.crosscodeeval"

# CrossCodeEval's keyword lists (scripts/keywords/*.txt; Python: keyword.kwlist less
# True/False), the words that are not identifiers.
KEYWORDS: dict[str, frozenset[str]] = {
    "python": frozenset(k for k in keyword.kwlist if k not in ("True", "False")),
    "java": frozenset(
        """abstract assert boolean break byte case catch char class continue default do
        double else enum extends final finally float for if implements import instanceof int
        interface long native new package private protected public return short static
        strictfp super switch synchronized this throw throws transient try void volatile
        while var const goto""".split()
    ),
    "csharp": frozenset(
        """abstract as base bool break byte case catch char checked class const continue
        decimal default delegate do double else enum event explicit extern finally fixed
        float for foreach goto if implicit in int interface internal is lock long namespace
        new null object operator out override params private protected public readonly ref
        return sbyte sealed short sizeof stackalloc static string struct switch this throw
        try typeof uint ulong unchecked unsafe ushort using virtual void volatile
        while""".split()
    ),
    "typescript": frozenset(
        """break case catch class const continue debugger default delete do else export
        extends finally for function if import in instanceof new return super switch this
        throw try typeof var void while with yield enum implements interface let package
        private protected public static""".split()
    ),
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|' + r"'(?:[^'\\]|\\.)*'")
_WORD = re.compile(r"\w+")
_IDENT_START = re.compile(r"[_a-zA-Z]")


@dataclasses.dataclass(frozen=True)
class CrossCodeEvalOptions:
    """`path`: a released JSONL file or a directory of them. `languages`: keep only these
    (() = all). `max_new_tokens`: generation budget (CrossCodeEval's `gen_length` 50; 0 =
    eval.max_new_tokens)."""

    path: str = ""
    languages: tuple[str, ...] = ()
    max_new_tokens: int = 50

    def __post_init__(self) -> None:
        valid = tuple(sorted(set(LANGUAGES.values())))
        bad = sorted(set(self.languages) - set(valid))
        if bad:
            raise ValueError(f"{_SETTING}.languages: unknown {bad}; choose from {valid}.")
        if self.max_new_tokens < 0:
            raise ValueError(f"{_SETTING}.max_new_tokens must be >= 0, got {self.max_new_tokens}.")


# ---------------------------------------------------------------------------- metrics


def remove_comments(code: str) -> str:
    """CrossCodeEval's comment removal: `#` to end of line, then `//` to end of line (for
    every language, as its harness does)."""
    return re.sub(r"//.*", "", re.sub(r"#.*", "", code))


def extract_identifiers(code: str, language: str) -> list[str]:
    """The identifiers of `code` in order (repeats kept): string literals removed, `\\w+`
    tokens starting with a letter or `_`, the language's keywords left out."""
    words = _WORD.findall(_STRING.sub("", code))
    kw = KEYWORDS[language]
    return [w for w in words if _IDENT_START.match(w) and w not in kw]


def identifier_scores(pred_ids: Sequence[str], target_ids: Sequence[str]) -> dict[str, float]:
    """Identifier exact match (equal lists) and precision / recall / F1 of the sets (0 when
    undefined), CrossCodeEval's `compute_id_match`."""
    p, t = set(pred_ids), set(target_ids)
    tp, fp, fn = len(p & t), len(p - t), len(t - p)
    return {
        "identifier_exact_match": float(list(pred_ids) == list(target_ids)),
        "identifier_precision": tp / (tp + fp) if tp + fp else 0.0,
        "identifier_recall": tp / (tp + fn) if tp + fn else 0.0,
        "identifier_f1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0,
    }


def statement(generation: str, language: str) -> str:
    """CrossCodeEval's statement cut: bracket languages end after the first `;`, `{` or `}`
    (a match at position 0 keeps everything, as in its harness); Python is unchanged (its
    parser cut only ends a statement at a newline, and the generation is one line)."""
    if language == "python":
        return generation
    end = next((i for i, c in enumerate(generation) if c in ";{}"), None)
    return generation[: end + 1] if end else generation


def _lines(code: str) -> list[str]:
    return [ln.strip() for ln in code.split("\n") if ln.strip()]


def score_pair(generation: str, groundtruth: str, language: str) -> dict[str, Any]:
    """Every CrossCodeEval metric of one generation (already cut at its stop)."""
    pred = remove_comments(statement(generation, language))
    target = remove_comments(groundtruth)
    return {
        "prediction": pred,
        "exact_match": _lines(pred) == _lines(target),
        "edit_similarity": fuzz_ratio(pred.strip(), target.strip()) / 100.0,
        **identifier_scores(
            extract_identifiers(pred, language), extract_identifiers(target, language)
        ),
    }


# ---------------------------------------------------------------------------- data and prompt


def _language(row: dict[str, Any], file_path: str) -> str:
    if row.get("language"):
        lang = str(row["language"]).lower()
        return "csharp" if lang in ("c#", "c_sharp") else lang
    for ext, lang in LANGUAGES.items():
        if file_path.endswith(ext):
            return lang
    raise ValueError(
        f"CrossCodeEval row {file_path!r}: unknown language; CrossCodeEval has "
        f"{sorted(set(LANGUAGES.values()))}."
    )


def load_rows(options: CrossCodeEvalOptions) -> list[dict[str, Any]]:
    """The selected rows, normalised: task_id, language, repo, path, prompt, right_context,
    groundtruth, chunks [(filename, retrieved_chunk), ...] in rank order."""
    out = []
    for file in data_files(options.path, f"{_SETTING}.path", "The crosscodeeval task"):
        for row in read_rows(file):
            meta = row.get("metadata") or {}
            missing = [k for k in ("prompt", "groundtruth") if k not in row]
            task_id = row.get("task_id", meta.get("task_id"))
            if missing or task_id is None:
                raise ValueError(
                    f"{file}: a row lacks {missing or ['task_id']}; is this a CrossCodeEval file?"
                )
            path = str(meta.get("file", row.get("file", "")))
            cfc = row.get("crossfile_context") or {}
            chunks = [
                (str(c["filename"]), str(c["retrieved_chunk"])) for c in cfc.get("list") or ()
            ]
            out.append(
                {
                    "task_id": str(task_id),
                    "language": _language(row, path),
                    "repo": str(meta.get("repository", "")),
                    "path": path,
                    "prompt": str(row["prompt"]),
                    "right_context": str(row.get("right_context", "")),
                    "groundtruth": str(row["groundtruth"]),
                    "chunks": chunks,
                }
            )
    return [r for r in out if not options.languages or r["language"] in options.languages]


def build_prompt(
    row: dict[str, Any], fmt: RepoFormat, tok: Any, max_tokens: int, mode: str
) -> tuple[list[int], dict[str, int]]:
    """The FIM prompt's token ids within `max_tokens` and what was cut: `fmt.fim_prompt_ids`
    of the kept chunks (lowest-ranked first, so the best sits nearest the target), the
    target's path, its (left-trimmed) prefix and (right-trimmed) suffix."""
    if mode not in FIM_MODES:
        raise ValueError(f"eval.fim_mode={mode!r}; use one of {FIM_MODES}.")
    repo = row["repo"] or None
    fixed = len(fmt.repo_ids(repo, tok)) + len(fmt.header_ids(row["path"], tok)) + 3
    fixed += fmt.prefix.reserve  # the path / symbol prefix (data.repo_prefix; 0 when off)
    suffix = trim_right(row["right_context"], tok, max(0, max_tokens - fixed) // SUFFIX_SHARE)
    suffix_n = len(tok.encode(suffix + fmt.trailer()))
    prefix = trim_left(row["prompt"], tok, max_tokens - fixed - suffix_n)
    room = max_tokens - fixed - suffix_n - len(tok.encode(prefix))
    files = row["chunks"][::-1]
    kept = fit_files(files, fmt, tok, room)
    ids = fmt.fim_prompt_ids(kept, row["path"], prefix, suffix, mode, tok, repo)
    info = {
        "context_files_kept": len(kept),
        "context_files_dropped": len(files) - len(kept),
        "prefix_trimmed": int(prefix != row["prompt"]),
        "suffix_trimmed": int(suffix != row["right_context"]),
    }
    return ids, info


def stops(row: dict[str, Any]) -> tuple[str, ...]:
    """A one-line ground truth stops at the first newline (CrossCodeEval's line level)."""
    return ("\n",) if "\n" not in row["groundtruth"].strip("\n") else ()


FIELDS = (
    "exact_match",
    "edit_similarity",
    "identifier_exact_match",
    "identifier_f1",
)


class CrossCodeEvalTask(Task):
    name = "crosscodeeval"
    description = (
        "CrossCodeEval line completion on the published data (path / --data): FIM with the "
        "right context, retrieved chunks as context files, in the run's repository format"
    )
    options_type = CrossCodeEvalOptions
    data_option = "path"

    def _rows(self, ctx: EvalContext) -> list[dict[str, Any]]:
        return limit_per_group(load_rows(ctx.options(self)), ctx.limit, ("language",))

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        rows = self._rows(ctx)
        if ctx.tokenizer is None:
            return [
                {
                    **r,
                    "context_text": "".join(
                        f"{comment_header(p)}{c}\n" for p, c in r["chunks"][::-1]
                    ),
                    "canonical_solution": r["groundtruth"],
                }
                for r in rows
            ]
        fmt, tok, mode = ctx.repo_layout(), ctx.tokenizer, str(ctx.eval_cfg.fim_mode)
        return [
            {
                **r,
                "prompt_text": tok.decode(build_prompt(r, fmt, tok, 1 << 30, mode)[0]),
                "canonical_solution": r["groundtruth"],
            }
            for r in rows
        ]

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        engine = ctx.need_engine()
        options = ctx.options(self)
        rows = self._rows(ctx)
        kw, budget = ctx.prompt_budget(options.max_new_tokens, _SETTING)
        fmt, tok, mode = ctx.repo_layout(), ctx.tokenizer, str(ctx.eval_cfg.fim_mode)
        built = [build_prompt(r, fmt, tok, budget, mode) for r in rows]
        texts: list[list[str]] = [[] for _ in rows]
        for stop in sorted({stops(r) for r in rows}):  # one generate call per stop list
            idx = [i for i, r in enumerate(rows) if stops(r) == stop]
            outs = sample_many(
                ctx,
                lambda sub, seed, idx=idx, stop=stop: engine.generate_ids(
                    [built[idx[k]][0] for k in sub], stop=stop, seed=seed, **kw
                ),
                len(idx),
            )
            for i, samples in zip(idx, outs):
                texts[i] = [truncate_at_stops(t, stop) for t in samples]
        records = []
        for row, (ids, info), samples in zip(rows, built, texts):
            for j, text in enumerate(samples):
                records.append(
                    {
                        "task_id": row["task_id"],
                        "language": row["language"],
                        "repo": row["repo"],
                        "path": row["path"],
                        "target": row["groundtruth"],
                        "generation": text,
                        "sample": j,
                        "prompt_tokens": len(ids),
                        **info,
                        **score_pair(text, row["groundtruth"], row["language"]),
                    }
                )
        metrics = group_means(records, FIELDS, ("language",))
        metrics["num_samples"] = float(len(rows))
        metrics["context_files_dropped"] = float(sum(i["context_files_dropped"] for _, i in built))
        return TaskResult(metrics, records)

    def standard_errors(self, records: list[dict[str, Any]], eval_cfg: Any) -> dict[str, float]:
        """Per-problem SEs of the four metrics, overall and per language (the summary's keys)."""
        return grouped_standard_errors(records, FIELDS, ("language",)) if records else {}


TASKS = (CrossCodeEvalTask(),)
