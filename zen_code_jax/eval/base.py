"""What every evaluation task shares: the engine protocol, the context, the result, the base
class and the text helpers. The registry (`zen_code_jax.eval.registry`) finds tasks by name.

A task can (1) export its problems as JSON-able dicts (`python -m zen_code_jax.eval
--export=TASK`) and (2) score a model given an `EvalContext` (an engine with the
`InferenceEngine` interface: `generate`, `generate_ids`, `infill`, `token_logprobs`; the tokenizer; the run's
config; the prepared corpus for held-out tasks). Scoring returns per-sample records (written
to `RUN/eval/<task>.jsonl`) and summary scalars (written to TensorBoard).

Tasks never load a checkpoint themselves, so tests drive them with fake completers and
canonical solutions, and the same code scores any model behind the engine interface. Task
modules import this module only, never the registry, so there is no import cycle.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import ml_collections

from zen_code_jax.data.hf_tokenizer import check_repo_format
from zen_code_jax.data.repo_format import RepoFormat, RepoPrefix
from zen_code_jax.eval.options import NoOptions, parse_options
from zen_code_jax.eval.sandbox import SandboxLimits
from zen_code_jax.eval.stats import (
    Estimator,
    per_problem_estimators,
    per_problem_standard_errors,
)


class Completer(Protocol):
    """What tasks need from `zen_code_jax.infer.engine.InferenceEngine`."""

    def generate(self, prompts: list[str], **kwargs: Any) -> list[str]: ...

    def generate_ids(self, prompt_ids: list[list[int]], **kwargs: Any) -> list[str]: ...

    def infill(self, prefixes: list[str], suffixes: list[str], **kwargs: Any) -> list[str]: ...

    def token_logprobs(
        self, context_ids: list[list[int]], continuation_ids: list[list[int]]
    ) -> list[Any]: ...


@dataclasses.dataclass(frozen=True)
class Sample:
    """A completion produced elsewhere (the eval CLI's `--samples`): `text` continues the
    problem's prompt (`completion`), or is the whole program (evalplus's `solution`)."""

    task_id: str
    text: str
    whole_program: bool = False


@dataclasses.dataclass
class EvalContext:
    """Everything a task may use. `config` is the run's full config (reads `eval`, `seed`,
    `train.seq_len`); `corpus` is a `PreparedCorpus` (held-out tasks only), or a callable
    that builds it on first use; `repo_format` is the run's repository format as resolved
    for its engine (`InferenceEngine.repo_format.name`; "" = resolve `data.repo_format`
    against the tokenizer, as training does). `samples` ({task_id: [Sample, ...]}):
    completions given instead of a model; tasks with `scores_samples` score these and
    generate nothing."""

    config: ml_collections.ConfigDict
    engine: Completer | None = None
    tokenizer: Any = None
    corpus: Any = None
    samples: Mapping[str, list[Sample]] | None = None
    repo_format: str = ""

    def repo_layout(self) -> RepoFormat:
        """The token layout of repository prompts: the one training windows were built in."""
        configured = self.repo_format or str(self.config.data.repo_format)
        prefix = RepoPrefix.from_config(self.config.data)  # the run's path / symbol prefix
        return RepoFormat(check_repo_format(self.tokenizer, configured), prefix)

    @property
    def eval_cfg(self) -> ml_collections.ConfigDict:
        return self.config.eval

    @property
    def seed(self) -> int:
        return int(self.config.seed)

    def get_corpus(self) -> Any:
        if callable(self.corpus):
            self.corpus = self.corpus()
        if self.corpus is None:
            raise ValueError(
                "This task needs the prepared corpus (held-out repositories); run it with "
                "--run_dir=RUN so the run's data config can be prepared, or pass corpus=."
            )
        return self.corpus

    def options(self, task: Task) -> Any:
        """`task`'s options (its `options_type`), from `eval.task_options[task.name]`."""
        raw = self.eval_cfg.task_options.get(task.name)
        return parse_options(task.options_type, raw, task.name)

    def need_engine(self) -> Completer:
        if self.engine is None:
            raise ValueError(
                "Scoring needs a model: pass --run_dir=RUN (a run with a checkpoint), or an "
                "engine to EvalContext."
            )
        return self.engine

    def sandbox_limits(self) -> SandboxLimits:
        e = self.eval_cfg
        return SandboxLimits(
            timeout_s=float(e.sandbox_timeout_s),
            memory_mb=int(e.sandbox_memory_mb),
            packages=tuple(e.sandbox_packages),
        )

    @property
    def workers(self) -> int:
        return max(1, int(self.eval_cfg.sandbox_workers))

    @property
    def limit(self) -> int:
        return int(self.eval_cfg.limit)

    def context_tokens(self) -> int:
        n = int(self.eval_cfg.context_tokens)
        return n if n > 0 else int(self.config.train.seq_len)

    def decode_kwargs(self) -> dict[str, Any]:
        e = self.eval_cfg
        return dict(
            max_new_tokens=int(e.max_new_tokens),
            temperature=float(e.temperature),
            top_p=float(e.top_p),
        )

    def prompt_budget(self, max_new_tokens: int, setting: str) -> tuple[dict[str, Any], int]:
        """Decoding settings with a task's own `max_new_tokens` (0 = the shared one) and the
        prompt tokens left beside them in `context_tokens`; no room is an error naming the
        two settings (`setting`: the task's option group, e.g. eval.task_options.repobench)."""
        kw = self.decode_kwargs()
        if max_new_tokens:
            kw["max_new_tokens"] = int(max_new_tokens)
        budget = self.context_tokens() - kw["max_new_tokens"]
        if budget <= 0:
            raise ValueError(
                f"eval.context_tokens ({self.context_tokens()}) leaves no room for a prompt "
                f"beside max_new_tokens={kw['max_new_tokens']}; raise eval.context_tokens or "
                f"lower {setting}.max_new_tokens."
            )
        return kw, budget


@dataclasses.dataclass
class TaskResult:
    """Summary scalars (TensorBoard) and one record per scored sample (JSONL)."""

    metrics: dict[str, float]
    records: list[dict[str, Any]]


class Task(abc.ABC):
    """One benchmark. Subclasses set `name` and `description`.

    A task owns its settings and statistics: `options_type` is a frozen dataclass of its
    options (defaults for every field; the experiment sets them in
    `eval.task_options[name]`, read with `ctx.options(self)`), `data_option` names the
    option the eval CLI's `--data` sets (None: the task takes no data file), and
    `standard_errors` turns its records into the report's standard errors.
    """

    name: str = ""
    description: str = ""
    needs_corpus: bool = False
    options_type: type = NoOptions
    data_option: str | None = None
    scores_samples: bool = False  # scores given completions (ctx.samples, --samples)

    @abc.abstractmethod
    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        """The task's problems, in a fixed order (what --export prints)."""

    @abc.abstractmethod
    def evaluate(self, ctx: EvalContext) -> TaskResult:
        """Score ctx.engine on the problems."""

    def standard_errors(
        self, records: list[dict[str, Any]], eval_cfg: Mapping[str, Any]
    ) -> dict[str, float]:
        """{metric: standard error} from this task's records, keyed like its summary
        metrics; `eval_cfg` is the run's `eval` group (as in its config.json). Default:
        per-problem means of `passed` / `exact_match` / `edit_similarity`
        (`stats.per_problem_standard_errors`); tasks with other units override it."""
        return per_problem_standard_errors(records) if records else {}

    def estimators(
        self, records: list[dict[str, Any]], eval_cfg: Mapping[str, Any]
    ) -> dict[str, Estimator]:
        """{metric: Estimator}: each metric as a statistic of per-unit columns with the
        units' ids, which the report's paired differences between arms resample
        (`stats.paired_difference`). Default: the per-problem means behind the default
        `standard_errors`; a task that overrides `standard_errors` has none unless it
        overrides this too (its units are its own)."""
        if not records or type(self).standard_errors is not Task.standard_errors:
            return {}
        return per_problem_estimators(records)

    def derived_metrics(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Metrics the report computes from this task's summary (same keys as `metrics`,
        without the task prefix); none by default."""
        return {}


def apply_limit(items: Sequence[Any], limit: int) -> list[Any]:
    """The first `limit` items (0 = all). Problem lists are already in a deterministic order."""
    return list(items[:limit]) if limit and limit > 0 else list(items)


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    """Cut at the earliest stop sequence (excluded). The engine does this too; doing it here
    keeps scoring correct for completers that ignore `stop`."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return text[:cut] if cut >= 0 else text


def sample_many(
    ctx: EvalContext, call: Callable[[list[int], int], list[str]], n_items: int
) -> list[list[str]]:
    """[item][sample] texts: `call(all_indices, seed + j)` once for each of eval.num_samples
    samples j. All items go in one call (the engine batches internally by its
    max_batch_size = eval.batch_size and seeds row i with (seed, i)), so a sample depends
    only on (seed, j, item index), never on how the engine batches."""
    n_samples = max(1, int(ctx.eval_cfg.num_samples))
    out: list[list[str]] = [[] for _ in range(n_items)]
    idx = list(range(n_items))
    for j in range(n_samples):
        texts = call(idx, ctx.seed + j)
        if len(texts) != n_items:
            raise RuntimeError(f"completer returned {len(texts)} texts for {n_items} prompts")
        for i, t in zip(idx, texts):
            out[i].append(t)
    return out
