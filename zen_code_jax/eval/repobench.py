"""RepoBench v1.1 next-line completion (Liu et al., ICLR 2024) on the published data, by path.

Data (option `path`, or `--data`): the `tianyang/repobench_{python,java}_v1.1` splits as
files: one file per setting, named after its split (`cross_file_first*.parquet` as on the
Hub, or `.jsonl` / `.json` / `.jsonl.gz` exports), or a directory holding them; a row with
its own `setting` field may sit in any file. Rows: repo_name, file_path, context (list of
{path, identifier, snippet}), import_statement, cropped_code, all_code, next_line,
gold_snippet_index, created_at, level. The language follows the file's extension (.py,
.java). A row's task id is `<language>/<setting>/<row index in its split>` (RepoBench's
`idx`).

Prompt, in the run's repository format (`ctx.repo_layout()`, `data/repo_format.py`, the
function training windows use): the repository opening, every cross-file snippet as a
context file (its `path`, the snippet as content, in the row's order), then the target
file's header and its prefix: `import_statement`, a newline, `cropped_code`, a newline
(RepoBench's in-file prompt without its `# Path:` line, which the format's header replaces).
Left to right, no suffix. Budget: `eval.context_tokens` less the generation budget; the
in-file prefix is trimmed from the left (whole lines) only when it alone does not fit, then
context snippets are dropped oldest (first) first. (RepoBench's own `construct_prompt` drops
cross-file lines from the end instead; we keep the snippets nearest the target, as the
offline proxy and training windows do.)

Scoring, as RepoBench's `run.py` + `eval.py`: the prediction is the first generated line that
is neither blank nor a comment (`#`, `//`, or a docstring / block-comment run), else the first
line; exact match is `pred.split() == next_line.split()` (whitespace-insensitive); edit
similarity is fuzzywuzzy's `fuzz.ratio(next_line, pred)` / 100 (difflib's SequenceMatcher
ratio, rounded to an integer percentage; equal strings 1, one empty 0), computed here with
the stdlib's difflib: what fuzzywuzzy 0.18.0 (RepoBench's requirements) computes without
python-Levenshtein. CodeBLEU (RepoBench's third metric) is not computed. Metrics per setting
and the weighted average over settings (RepoBench's "weighted averages"); a per-language
breakdown when several languages are scored.
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zen_code_jax.data.repo_format import RepoFormat, comment_header
from zen_code_jax.eval.base import EvalContext, Task, TaskResult, apply_limit, sample_many
from zen_code_jax.eval.heldout import trim_left
from zen_code_jax.eval.stats import mean_se, per_problem_mean

SETTINGS: tuple[str, ...] = ("cross_file_first", "cross_file_random", "in_file")
LANGUAGES: dict[str, str] = {".py": "python", ".java": "java"}
LEVELS: tuple[str, ...] = ("2k", "4k", "8k", "12k", "16k", "24k", "32k", "64k", "128k")
DATA_SUFFIXES: tuple[str, ...] = (".parquet", ".jsonl", ".json", ".jsonl.gz")
_SETTING = "eval.task_options.repobench"


@dataclasses.dataclass(frozen=True)
class RepoBenchOptions:
    """`path`: a split file or a directory of them. `languages` / `settings` / `levels`: keep
    only these (() = all). `since` / `until`: `created_at` dates, inclusive (YYYY-MM-DD; ""
    = open; RepoBench's leaderboard scores 2023-12-01..2023-12-31, levels 2k-16k).
    `max_new_tokens`: generation budget (RepoBench's 128; 0 = eval.max_new_tokens)."""

    path: str = ""
    languages: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()
    levels: tuple[str, ...] = ()
    since: str = ""
    until: str = ""
    max_new_tokens: int = 128

    def __post_init__(self) -> None:
        for name, valid in (
            ("languages", tuple(LANGUAGES.values())),
            ("settings", SETTINGS),
            ("levels", LEVELS),
        ):
            bad = sorted(set(getattr(self, name)) - set(valid))
            if bad:
                raise ValueError(f"{_SETTING}.{name}: unknown {bad}; choose from {valid}.")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value and (len(value) != 10 or value[4] != "-" or value[7] != "-"):
                raise ValueError(f"{_SETTING}.{name}={value!r} is not a date; write YYYY-MM-DD.")
        if self.since and self.until and self.since > self.until:
            raise ValueError(f"{_SETTING}: since={self.since} is after until={self.until}.")
        if self.max_new_tokens < 0:
            raise ValueError(f"{_SETTING}.max_new_tokens must be >= 0, got {self.max_new_tokens}.")


# ---------------------------------------------------------------------------- metrics


def fuzz_ratio(a: str, b: str) -> int:
    """fuzzywuzzy 0.18.0's `fuzz.ratio` without python-Levenshtein: 100 for equal strings,
    0 when one is empty, else round(100 x difflib's SequenceMatcher ratio)."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, a, b).ratio()))


def edit_similarity(pred: str, target: str) -> float:
    """RepoBench's edit similarity of one pair, in [0, 1]: `fuzz.ratio(target, pred)` / 100
    on the unstripped lines (its eval.py passes the ground truth first; difflib's ratio is
    not always symmetric)."""
    return fuzz_ratio(target, pred) / 100.0


def exact_match(pred: str, target: str) -> bool:
    """RepoBench's exact match: equal whitespace-separated tokens."""
    return pred.split() == target.split()


def first_code_line(generation: str, language: str) -> str:
    """RepoBench's prediction: the first line that is not blank and not a comment (line
    comments, and runs between a line opening a docstring / block comment and the line
    closing it), after leading newlines are dropped; the first line if there is none."""
    lines = generation.lstrip("\n").split("\n")
    line_comment, openers, closers = (
        ("#", ('"""', "'''"), ('"""', "'''")) if language == "python" else ("//", ("/*",), ("*/",))
    )
    in_block = False
    for line in lines:
        s = line.strip()
        if not s:
            continue
        if not in_block and s.startswith(openers):
            in_block = True
            continue
        if in_block:
            if s.endswith(closers):
                in_block = False
            continue
        if s.startswith(line_comment):
            continue
        return line
    return lines[0]


# ---------------------------------------------------------------------------- data


def read_rows(path: Path) -> list[dict[str, Any]]:
    name = path.name
    if name.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq  # optional: only the Hub's parquet files need it
        except ImportError as e:
            raise ImportError(
                f"{path} is parquet; install pyarrow, or export the split to JSONL."
            ) from e
        return pq.read_table(path).to_pylist()
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if name.endswith(".gz") else raw).decode("utf-8")
    if name.endswith(".json"):
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: a .json data file must hold a list of rows.")
        return rows
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n} is not valid JSON ({e}); one row per line.") from e
    return out


def data_files(path: str, setting: str, what: str) -> list[Path]:
    """The data files at `path` (a file, or the files under a directory), sorted; a
    missing path raises naming the option to set."""
    p = Path(path) if path else None
    if p is None or not p.exists():
        raise FileNotFoundError(
            f"{what} needs its published data: set {setting} (or --data=PATH) to a data "
            f"file or a directory of them; got {str(path)!r}."
        )
    if p.is_file():
        return [p]
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(DATA_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{p} holds no {'/'.join(DATA_SUFFIXES)} files for {what}.")
    return files


def _setting_of(row: dict[str, Any], file: Path) -> str:
    if row.get("setting"):
        return str(row["setting"])
    for s in SETTINGS:
        if file.name.startswith(s):
            return s
    raise ValueError(
        f"{file}: cannot tell the RepoBench setting of its rows; name the file after its "
        f"split ({', '.join(SETTINGS)}) or give each row a `setting` field."
    )


def _language_of(row: dict[str, Any]) -> str:
    path = str(row["file_path"])
    for ext, lang in LANGUAGES.items():
        if path.endswith(ext):
            return lang
    raise ValueError(f"RepoBench row {path!r}: unknown language; RepoBench has {LANGUAGES}.")


REQUIRED = ("repo_name", "file_path", "context", "import_statement", "cropped_code", "next_line")


def load_rows(options: RepoBenchOptions) -> list[dict[str, Any]]:
    """The selected rows, each with `task_id`, `language`, `setting`, in (file, row) order."""
    out = []
    for file in data_files(options.path, f"{_SETTING}.path", "The repobench task"):
        counters: dict[tuple[str, str], int] = {}
        for row in read_rows(file):
            missing = [k for k in REQUIRED if k not in row]
            if missing:
                raise ValueError(f"{file}: a row lacks {missing}; is this a RepoBench v1.1 file?")
            setting, language = _setting_of(row, file), _language_of(row)
            if setting not in SETTINGS:
                raise ValueError(f"{file}: unknown setting {setting!r}; RepoBench has {SETTINGS}.")
            idx = counters.get((language, setting), 0)
            counters[(language, setting)] = idx + 1
            out.append(
                {
                    **row,
                    "language": language,
                    "setting": setting,
                    "task_id": f"{language}/{setting}/{idx}",
                }
            )
    return [r for r in out if _selected(r, options)]


def _selected(row: dict[str, Any], o: RepoBenchOptions) -> bool:
    day = str(row.get("created_at") or "")[:10]
    return (
        (not o.languages or row["language"] in o.languages)
        and (not o.settings or row["setting"] in o.settings)
        and (not o.levels or str(row.get("level")) in o.levels)
        and (not o.since or day >= o.since)
        and (not o.until or day <= o.until)
    )


def limit_per_group(
    rows: list[dict[str, Any]], limit: int, keys: Sequence[str]
) -> list[dict[str, Any]]:
    """`eval.limit` applied to each group of equal `keys` (every setting keeps a score)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return [r for g in groups.values() for r in apply_limit(g, limit)]


# ---------------------------------------------------------------------------- prompt


def target_prefix(row: dict[str, Any]) -> str:
    """The target file's text before the next line: imports, then the cropped code."""
    imports, code = str(row["import_statement"]), str(row["cropped_code"])
    text = f"{imports}\n{code}" if imports.strip() else code
    return text if text.endswith("\n") or not text else text + "\n"


def context_files(row: dict[str, Any]) -> list[tuple[str, str]]:
    """The cross-file snippets as (path, content) context files, in the row's order."""
    return [(str(c["path"]), str(c["snippet"])) for c in row.get("context") or ()]


def fit_files(
    files: Sequence[tuple[str, str]], fmt: RepoFormat, tok: Any, room: int
) -> list[tuple[str, str]]:
    """The longest tail of `files` (the ones nearest the target) whose tokens fit `room`."""
    kept: list[tuple[str, str]] = []
    for path, content in reversed(files):
        n = len(fmt.file_ids(path, content, tok))
        if n > room:
            break
        kept.append((path, content))
        room -= n
    return kept[::-1]


def build_prompt(
    row: dict[str, Any], fmt: RepoFormat, tok: Any, max_tokens: int
) -> tuple[list[int], dict[str, int]]:
    """The prompt's token ids within `max_tokens` and what was cut ({context_files_kept,
    context_files_dropped, prefix_trimmed}): `fmt.lm_prompt_ids` of the kept snippets, the
    target's path and its (possibly left-trimmed) prefix, with the repository opening."""
    repo = str(row["repo_name"])
    fixed = len(fmt.repo_ids(repo, tok)) + len(fmt.header_ids(str(row["file_path"]), tok))
    fixed += fmt.prefix.reserve  # the path / symbol prefix (data.repo_prefix; 0 when off)
    prefix = target_prefix(row)
    trimmed = trim_left(prefix, tok, max_tokens - fixed)
    room = max_tokens - fixed - len(tok.encode(trimmed))
    files = context_files(row)
    kept = fit_files(files, fmt, tok, room)
    ids = fmt.lm_prompt_ids(kept, str(row["file_path"]), trimmed, tok, repo)
    info = {
        "context_files_kept": len(kept),
        "context_files_dropped": len(files) - len(kept),
        "prefix_trimmed": int(trimmed != prefix),
    }
    return ids, info


def _report_text(row: dict[str, Any]) -> str:
    """The prompt as text in the report layout (an export without a run's tokenizer)."""
    body = "".join(f"{comment_header(p)}{c}\n" for p, c in context_files(row))
    return body + comment_header(str(row["file_path"])) + target_prefix(row)


# ---------------------------------------------------------------------------- statistics


def grouped_standard_errors(
    records: list[dict[str, Any]], fields: Sequence[str], group_keys: Sequence[str]
) -> dict[str, float]:
    """{metric: SE} of per-problem means of `fields`: over all records (`<field>`), and per
    value of each key in `group_keys` that varies (`<value>/<field>`; several keys joined
    with '/' in that order, e.g. `python/in_file/exact_match`)."""
    out: dict[str, float] = {}

    def add(prefix: str, rs: list[dict[str, Any]]) -> None:
        for field in fields:
            if any(field in r for r in rs):
                out[f"{prefix}{field}"] = mean_se(per_problem_mean(rs, field))

    for prefix, rs in _groups(records, group_keys):
        add(prefix, rs)
    return out


def _groups(
    records: list[dict[str, Any]], group_keys: Sequence[str]
) -> list[tuple[str, list[dict[str, Any]]]]:
    """("", all records), then ("<key values>/", their records) for every breakdown."""
    out: list[tuple[str, list[dict[str, Any]]]] = [("", records)]
    for keys in _group_key_sets(records, group_keys):
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            groups.setdefault("/".join(str(r[k]) for k in keys) + "/", []).append(r)
        out.extend(groups.items())
    return out


def _group_key_sets(rows: list[dict[str, Any]], group_keys: Sequence[str]) -> list[list[str]]:
    """The key tuples metrics are broken down by: the last key always (settings, or
    languages), and every key up to it when an earlier one takes several values."""
    sets = [[group_keys[-1]]] if group_keys else []
    if len(group_keys) > 1 and len({r[group_keys[0]] for r in rows}) > 1:
        sets.append(list(group_keys))
    return sets


def group_means(
    records: list[dict[str, Any]], fields: Sequence[str], group_keys: Sequence[str]
) -> dict[str, float]:
    """The summary metrics matching `grouped_standard_errors`: per-problem means."""
    out: dict[str, float] = {}

    def add(prefix: str, rs: list[dict[str, Any]]) -> None:
        for field in fields:
            vals = per_problem_mean(rs, field)
            if vals:
                out[f"{prefix}{field}"] = sum(vals) / len(vals)

    for prefix, rs in _groups(records, group_keys):
        add(prefix, rs)
    return out


# ---------------------------------------------------------------------------- task

FIELDS = ("exact_match", "edit_similarity")


def score_row(row: dict[str, Any], generation: str) -> dict[str, Any]:
    """One sample's record: RepoBench's prediction line and its two metrics."""
    pred = first_code_line(generation, row["language"])
    target = str(row["next_line"])
    return {
        "task_id": row["task_id"],
        "language": row["language"],
        "setting": row["setting"],
        "level": row.get("level"),
        "repo": row["repo_name"],
        "path": row["file_path"],
        "target": target,
        "prediction": pred,
        "generation": generation,
        "exact_match": exact_match(pred, target),
        "edit_similarity": edit_similarity(pred, target),
    }


class RepoBenchTask(Task):
    name = "repobench"
    description = (
        "RepoBench v1.1 next-line completion on the published data (path / --data), "
        "prompts in the run's repository format"
    )
    options_type = RepoBenchOptions
    data_option = "path"

    def _rows(self, ctx: EvalContext) -> list[dict[str, Any]]:
        return limit_per_group(load_rows(ctx.options(self)), ctx.limit, ("language", "setting"))

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        rows = self._rows(ctx)
        if ctx.tokenizer is None:
            return [
                {**r, "prompt": _report_text(r), "canonical_solution": r["next_line"]} for r in rows
            ]
        fmt, tok = ctx.repo_layout(), ctx.tokenizer
        return [
            {
                **r,
                "prompt": tok.decode(build_prompt(r, fmt, tok, 1 << 30)[0]),
                "canonical_solution": r["next_line"],
            }
            for r in rows
        ]

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        engine = ctx.need_engine()
        options = ctx.options(self)
        rows = self._rows(ctx)
        kw, budget = ctx.prompt_budget(options.max_new_tokens, _SETTING)
        fmt, tok = ctx.repo_layout(), ctx.tokenizer
        built = [build_prompt(r, fmt, tok, budget) for r in rows]
        prompts = [ids for ids, _ in built]
        texts = sample_many(
            ctx,
            lambda idx, seed: engine.generate_ids(
                [prompts[i] for i in idx], stop=(), seed=seed, **kw
            ),
            len(rows),
        )
        records = []
        for row, (ids, info), samples in zip(rows, built, texts):
            for j, text in enumerate(samples):
                records.append(
                    {**score_row(row, text), "sample": j, "prompt_tokens": len(ids), **info}
                )
        metrics = group_means(records, FIELDS, ("language", "setting"))
        metrics["num_samples"] = float(len(rows))
        metrics["context_files_dropped"] = float(sum(i["context_files_dropped"] for _, i in built))
        return TaskResult(metrics, records)

    def standard_errors(self, records: list[dict[str, Any]], eval_cfg: Any) -> dict[str, float]:
        """Per-problem SEs of exact match and edit similarity: overall, per setting, and per
        language and setting when several languages were scored (the summary's keys)."""
        return grouped_standard_errors(records, FIELDS, ("language", "setting")) if records else {}


TASKS = (RepoBenchTask(),)
