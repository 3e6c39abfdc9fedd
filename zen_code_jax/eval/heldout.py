"""Held-out metrics on repositories the model never trained on (the prepared corpus's
'heldout' split, split by repository).

- `heldout_fim`: single- and multi-line infilling on held-out files. The masked span is
  whole lines (a single line, or 2-5 consecutive lines starting at a non-blank line), chosen
  by a generator seeded from (config.seed, kind, sample index) only. Scores:
  * exact match of the generated middle (first `num_lines` lines, trailing whitespace
    ignored) - at CPU scale this stays near zero long after the loss moves;
  * middle loss in bits per byte: -sum log2 p(middle tokens) / UTF-8 bytes of the middle,
    teacher forced, under the FIM prompt (`data.fim.fim_prompt_tokens`, exactly the training
    format), under the other FIM layout (`middle_bpb_spm` when eval.fim_mode is psm, and
    vice versa; the FIM ablation compares both) and, for comparison, under a prefix-only
    prompt (plain left-to-right). The <|endoftext|> that ends a FIM middle is not counted,
    so all numbers cover the same bytes. Micro-averaged (total bits / total bytes). Each
  record keeps its `kind`, `bytes` and nats per prompt (`nats_psm`, `nats_spm`,
  `nats_prefix_only`), so the report can bootstrap standard errors over examples.
- `heldout_loss`: left-to-right loss (nats/token) and bits per byte of whole held-out files,
  conditioned on <|endoftext|> as in packed training; files longer than the context are
  scored in chunks with half a context of history. Its option `files`
  (`eval.task_options = {"heldout_loss": dict(files=N)}`) caps the files scored.

Contexts are trimmed at line boundaries to fit `eval.context_tokens` (default
`train.seq_len`): prefix from the left, suffix from the right.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zen_code_jax.data.fim import fim_prompt_tokens
from zen_code_jax.eval.base import EvalContext, Task, TaskResult
from zen_code_jax.eval.infilling import normalize
from zen_code_jax.eval.stats import Estimator, mean_estimator, ratio_estimator

LN2 = math.log(2.0)
DEFAULT_SAMPLES = 100  # per kind when eval.limit is 0
DEFAULT_FILES = 200
MAX_MIDDLE_CHARS = 400
_STREAMS = {"single": 1, "multi": 2, "repo": 3, "files": 4}


def split_lines(text: str) -> list[str]:
    """Lines with their '\\n' kept; ''.join(split_lines(t)) == t."""
    return [m for m in re.findall(r"[^\n]*\n|[^\n]+$", text)]


def trim_left(text: str, tok: Any, max_tokens: int) -> str:
    """The longest tail of `text` starting at a line start that encodes to <= max_tokens."""
    if max_tokens <= 0:
        return ""
    keep = min(len(text), max_tokens * 4)
    while keep > 0:
        if keep >= len(text):
            piece = text
        else:
            nl = text.find("\n", len(text) - keep - 1)
            piece = text[nl + 1 :] if nl >= 0 else ""
        if len(tok.encode(piece)) <= max_tokens:
            return piece
        keep = int(keep * 0.8)
    return ""


def trim_right(text: str, tok: Any, max_tokens: int) -> str:
    """The longest head of `text` ending at a line end that encodes to <= max_tokens."""
    if max_tokens <= 0:
        return ""
    keep = min(len(text), max_tokens * 4)
    while keep > 0:
        if keep >= len(text):
            piece = text
        else:
            nl = text.rfind("\n", 0, keep)
            piece = text[: nl + 1] if nl >= 0 else ""
        if len(tok.encode(piece)) <= max_tokens:
            return piece
        keep = int(keep * 0.8)
    return ""


def _heldout(ctx: EvalContext) -> Any:
    corpus = ctx.get_corpus()
    src = corpus.source("heldout")
    if len(src) == 0:
        raise ValueError(
            "The prepared corpus has no held-out files; raise data.heldout_fraction or use a "
            "corpus with more repositories."
        )
    return src


def sample_fim_examples(
    source: Sequence[dict[str, Any]], kind: str, n: int, seed: int
) -> list[dict[str, Any]]:
    """n (prefix, middle, suffix) line-span examples drawn deterministically from `source`."""
    if kind not in ("single", "multi"):
        raise ValueError(f"kind must be 'single' or 'multi', got {kind!r}")
    out = []
    size = len(source)
    for i in range(n):
        rng = np.random.default_rng([seed, _STREAMS[kind], i])
        for _attempt in range(50):
            idx = int(rng.integers(size))
            rec = source[idx]
            lines = split_lines(rec["content"])
            starts = [k for k in range(1, len(lines)) if lines[k].strip()]
            if not starts:
                continue
            a = starts[int(rng.integers(len(starts)))]
            span = 1 if kind == "single" else int(rng.integers(2, 6))
            b = min(len(lines), a + span)
            middle = "".join(lines[a:b])
            if kind == "multi" and b - a < 2:
                continue
            if len(middle) > MAX_MIDDLE_CHARS:
                continue
            out.append(
                {
                    "task_id": f"heldout_fim/{kind}/{i}",
                    "repo": rec.get("repo", ""),
                    "path": rec.get("path", ""),
                    "record": idx,
                    "prompt": "".join(lines[:a]),
                    "canonical_solution": middle,
                    "suffix": "".join(lines[b:]),
                    "num_lines": b - a,
                }
            )
            break
    return out


def fit_fim(ex: dict[str, Any], tok: Any, budget: int, *, with_middle: bool) -> tuple[str, str]:
    """Prefix and suffix trimmed (whole lines) so the FIM prompt - plus the middle when
    `with_middle` (teacher forcing) - fits `budget` tokens. Two thirds of the room go to the
    prefix; the suffix gets the rest."""
    mid = len(tok.encode(ex["canonical_solution"])) if with_middle else 0
    room = max(0, budget - mid - 4)  # 3 sentinels (+1 spare)
    pre = trim_left(ex["prompt"], tok, room - room // 3)
    suf = trim_right(ex["suffix"], tok, room - len(tok.encode(pre)))
    return pre, suf


def bits_per_byte(nats: float, nbytes: int) -> float:
    return nats / LN2 / max(1, nbytes)


class HeldoutFimTask(Task):
    name = "heldout_fim"
    description = "single/multi-line infilling on held-out repositories: exact match, middle bpb"
    needs_corpus = True

    def _n(self, ctx: EvalContext) -> int:
        return ctx.limit if ctx.limit > 0 else DEFAULT_SAMPLES

    def standard_errors(
        self, records: list[dict[str, Any]], eval_cfg: Mapping[str, Any]
    ) -> dict[str, float]:
        """Per kind: exact match over examples; each middle bits/byte as a ratio of sums
        over examples; `{kind}/middle_gap` too (see `derived_metrics`)."""
        return fim_standard_errors(records, str(eval_cfg.get("fim_mode", "psm")))

    def estimators(
        self, records: list[dict[str, Any]], eval_cfg: Mapping[str, Any]
    ) -> dict[str, Estimator]:
        return fim_estimators(records, str(eval_cfg.get("fim_mode", "psm")))

    def derived_metrics(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """The middle-loss gap per kind: prefix-only minus FIM-prompt bits/byte of the same
        held-out middles (how much the suffix and FIM format help; > 0 once FIM is learned)."""
        out = {}
        for key, value in metrics.items():
            if key.endswith("/middle_bpb_prefix_only"):
                kind = key.split("/")[0]
                fim = metrics.get(f"{kind}/middle_bpb_fim")
                if fim is not None:
                    out[f"{kind}/middle_gap"] = value - fim
        return out

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        src = _heldout(ctx)
        n = self._n(ctx)
        return sample_fim_examples(src, "single", n, ctx.seed) + sample_fim_examples(
            src, "multi", n, ctx.seed
        )

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        engine = ctx.need_engine()
        tok = ctx.tokenizer
        mode = str(ctx.eval_cfg.fim_mode)
        kw = ctx.decode_kwargs()
        budget = ctx.context_tokens()
        records: list[dict[str, Any]] = []
        metrics: dict[str, float] = {}
        src = _heldout(ctx)
        scored: dict[str, list[dict[str, Any]]] = {}
        for kind in ("single", "multi"):
            exs = sample_fim_examples(src, kind, self._n(ctx), ctx.seed)
            if not exs:
                continue
            scored[kind] = exs
            gen_budget = budget - kw["max_new_tokens"]
            fitted = [fit_fim(e, tok, gen_budget, with_middle=False) for e in exs]
            gens = engine.infill(
                [p for p, _ in fitted],
                [s for _, s in fitted],
                mode=mode,
                stop=("\n",) if kind == "single" else (),
                seed=ctx.seed,
                **kw,
            )
            fitted_lp = [fit_fim(e, tok, budget, with_middle=True) for e in exs]
            mids = [tok.encode(e["canonical_solution"]) for e in exs]
            fim_ctx = [fim_prompt_tokens(p, s, mode, tok) for p, s in fitted_lp]
            pre_ctx = [tok.encode(p) or [tok.eot_id] for p, _ in fitted_lp]
            lp_fim = engine.token_logprobs(fim_ctx, mids)
            lp_pre = engine.token_logprobs(pre_ctx, mids)
            tot_bytes = tot_fim = tot_pre = 0.0
            em = []
            for e, g, a, b in zip(exs, gens, lp_fim, lp_pre):
                pred = "".join(split_lines(g)[: e["num_lines"]])
                ok = normalize(pred) == normalize(e["canonical_solution"])
                em.append(ok)
                nbytes = len(e["canonical_solution"].encode("utf-8"))
                nf, npre = -float(np.sum(a)), -float(np.sum(b))
                tot_bytes += nbytes
                tot_fim += nf
                tot_pre += npre
                records.append(
                    {
                        "task_id": e["task_id"],
                        "kind": kind,
                        "repo": e["repo"],
                        "path": e["path"],
                        "target": e["canonical_solution"],
                        "generation": g,
                        "exact_match": ok,
                        "bytes": nbytes,
                        f"nats_{mode}": nf,
                        "nats_prefix_only": npre,
                        "middle_bpb_fim": bits_per_byte(nf, nbytes),
                        "middle_bpb_prefix_only": bits_per_byte(npre, nbytes),
                    }
                )
            metrics[f"{kind}/exact_match"] = sum(em) / len(em)
            metrics[f"{kind}/middle_bpb_fim"] = bits_per_byte(tot_fim, int(tot_bytes))
            metrics[f"{kind}/middle_bpb_prefix_only"] = bits_per_byte(tot_pre, int(tot_bytes))
            metrics[f"{kind}/num_samples"] = float(len(exs))
        other = other_layout(mode)
        by_id = {r["task_id"]: r for r in records}
        for kind, nats in other_layout_nats(ctx, scored).items():
            nbytes = sum(len(e["canonical_solution"].encode("utf-8")) for e in scored[kind])
            metrics[f"{kind}/middle_bpb_{other}"] = bits_per_byte(sum(nats), nbytes)
            for e, n in zip(scored[kind], nats):
                by_id[e["task_id"]][f"nats_{other}"] = n
        return TaskResult(metrics, records)


def _fim_nats(r: dict[str, Any], name: str, mode: str) -> float | None:
    """An example's nats under prompt `name` (psm, spm, prefix_only); older records hold
    only bits/byte, which times the middle's bytes gives the same number."""
    if f"nats_{name}" in r:
        return float(r[f"nats_{name}"])
    bpb = r.get("middle_bpb_prefix_only" if name == "prefix_only" else "middle_bpb_fim")
    if bpb is None or (name != "prefix_only" and name != mode):
        return None
    return float(bpb) * LN2 * len(str(r.get("target", "")).encode("utf-8"))


def fim_estimators(records: list[dict[str, Any]], mode: str) -> dict[str, Estimator]:
    """`heldout_fim`'s metrics as statistics of per-example columns (unit: the example's
    task_id); `mode` is the run's eval.fim_mode. Standard errors and paired differences
    between arms both resample these."""
    out: dict[str, Estimator] = {}
    other = other_layout(mode)
    for kind in sorted({str(r.get("kind", r["task_id"].split("/")[1])) for r in records}):
        rs = [r for r in records if str(r.get("kind", r["task_id"].split("/")[1])) == kind]
        ids = [str(r["task_id"]) for r in rs]
        out[f"{kind}/exact_match"] = mean_estimator(ids, [float(r["exact_match"]) for r in rs])
        nbytes = [float(r.get("bytes", len(str(r.get("target", "")).encode("utf-8")))) for r in rs]
        nats = {n: [_fim_nats(r, n, mode) for r in rs] for n in (mode, other, "prefix_only")}
        names = {mode: "middle_bpb_fim", other: f"middle_bpb_{other}"}
        names["prefix_only"] = "middle_bpb_prefix_only"
        for n, key in names.items():
            if all(v is not None for v in nats[n]):
                out[f"{kind}/{key}"] = ratio_estimator(ids, nats[n], nbytes, 1 / LN2)
        if all(v is not None for v in nats[mode] + nats["prefix_only"]):
            gap = [p - f for p, f in zip(nats["prefix_only"], nats[mode])]
            out[f"{kind}/middle_gap"] = ratio_estimator(ids, gap, nbytes, 1 / LN2)
    return out


def fim_standard_errors(records: list[dict[str, Any]], mode: str) -> dict[str, float]:
    """`heldout_fim`'s standard errors; `mode` is the run's eval.fim_mode."""
    return {k: e.se() for k, e in fim_estimators(records, mode).items()}


def other_layout(mode: str) -> str:
    """The FIM layout heldout_fim did not score: SPM for PSM, PSM otherwise."""
    return "spm" if str(mode) == "psm" else "psm"


def other_layout_nats(
    ctx: EvalContext, examples: dict[str, list[dict[str, Any]]]
) -> dict[str, list[float]]:
    """Per example, the middle's nats under the FIM layout `eval.fim_mode` did not use
    (`nats_{other}` in the records; summed into `{kind}/middle_bpb_{other}`).

    The FIM ablation compares both layouts on identical bytes, so this teacher-forces the
    task's own samples, trimmed exactly as for the main layout (`fit_fim(with_middle=True)`),
    without generating (cheap). `examples` maps kind -> that kind's sampled examples.
    """
    engine = ctx.need_engine()
    mode = other_layout(str(ctx.eval_cfg.fim_mode))
    tok, budget = ctx.tokenizer, ctx.context_tokens()
    out: dict[str, list[float]] = {}
    for kind, exs in examples.items():
        fitted = [fit_fim(e, tok, budget, with_middle=True) for e in exs]
        contexts = [fim_prompt_tokens(p, s, mode, tok) for p, s in fitted]
        mids = [tok.encode(e["canonical_solution"]) for e in exs]
        out[kind] = [-float(np.sum(lp)) for lp in engine.token_logprobs(contexts, mids)]
    return out


def sample_files(n_files: int, limit: int, seed: int) -> list[int]:
    """Which held-out records to score: all if few, else a seeded sorted subset."""
    if n_files <= limit:
        return list(range(n_files))
    rng = np.random.default_rng([seed, _STREAMS["files"]])
    return sorted(int(i) for i in rng.choice(n_files, size=limit, replace=False))


def chunk_for_loss(ids: Sequence[int], bos: int, window: int) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) pairs covering every token of `ids` exactly once, each pair at
    most `window` tokens: the first conditioned on [bos], later ones on half a window of
    history."""
    ids = list(ids)
    if window < 4:
        raise ValueError(f"context window {window} is too small for loss scoring")
    out = []
    first = window - 1
    out.append(([bos], ids[:first]))
    half = window // 2
    s = first
    while s < len(ids):
        out.append((ids[max(0, s - half) : s], ids[s : s + (window - half)]))
        s += window - half
    return [(c, t) for c, t in out if t]


@dataclasses.dataclass(frozen=True)
class HeldoutLossOptions:
    """`files`: held-out files scored (0 = eval.limit, or DEFAULT_FILES when that is 0)."""

    files: int = 0


class HeldoutLossTask(Task):
    name = "heldout_loss"
    description = "left-to-right loss and bits per byte on held-out repositories"
    needs_corpus = True
    options_type = HeldoutLossOptions

    def standard_errors(
        self, records: list[dict[str, Any]], eval_cfg: Mapping[str, Any]
    ) -> dict[str, float]:
        """Bits per byte (and loss per token) as ratios of sums over files."""
        return {k: e.se() for k, e in self.estimators(records, eval_cfg).items()}

    def estimators(
        self, records: list[dict[str, Any]], eval_cfg: Mapping[str, Any]
    ) -> dict[str, Estimator]:
        """Bits per byte (and loss per token): ratios of sums over files (unit: task_id)."""
        if not records:
            return {}
        ids = [str(r["task_id"]) for r in records]
        nats = [float(r["nats"]) for r in records]
        nbytes = [float(r["bytes"]) for r in records]
        out = {"bits_per_byte": ratio_estimator(ids, nats, nbytes, 1 / LN2)}
        if all("tokens" in r for r in records):
            out["loss"] = ratio_estimator(ids, nats, [float(r["tokens"]) for r in records])
        return out

    def problems(self, ctx: EvalContext) -> list[dict[str, Any]]:
        src = _heldout(ctx)
        files = ctx.options(self).files
        lim = files or (ctx.limit if ctx.limit > 0 else DEFAULT_FILES)
        return [
            {
                "task_id": f"heldout_loss/{i}",
                "repo": src[i].get("repo", ""),
                "path": src[i].get("path", ""),
                "prompt": src[i]["content"],
            }
            for i in sample_files(len(src), lim, ctx.seed)
        ]

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        engine = ctx.need_engine()
        tok = ctx.tokenizer
        window = ctx.context_tokens()
        probs = self.problems(ctx)
        pairs, owner = [], []
        for k, p in enumerate(probs):
            ids = tok.encode(p["prompt"])
            for c, t in chunk_for_loss(ids, tok.eot_id, window):
                pairs.append((c, t))
                owner.append(k)
        lps = engine.token_logprobs([c for c, _ in pairs], [t for _, t in pairs]) if pairs else []
        nats = [0.0] * len(probs)
        ntok = [0] * len(probs)
        for k, lp in zip(owner, lps):
            nats[k] -= float(np.sum(lp))
            ntok[k] += len(lp)
        records = []
        tot_bytes = 0
        for p, n, t in zip(probs, nats, ntok):
            b = len(p["prompt"].encode("utf-8"))
            tot_bytes += b
            records.append(
                {
                    "task_id": p["task_id"],
                    "repo": p["repo"],
                    "path": p["path"],
                    "tokens": t,
                    "bytes": b,
                    "nats": n,
                    "bits_per_byte": bits_per_byte(n, b),
                }
            )
        total_nats, total_tok = sum(nats), sum(ntok)
        metrics = {
            "loss": total_nats / max(1, total_tok),
            "bits_per_byte": bits_per_byte(total_nats, tot_bytes),
            "tokens": float(total_tok),
            "files": float(len(probs)),
        }
        return TaskResult(metrics, records)


TASKS = (HeldoutFimTask(), HeldoutLossTask())
