"""Knowledge distillation: `train.objective = "distill"` (docs/distill.md).

Loss per loss token (the batch's `loss_mask`, so padding, `<|fim_pad|>` and SFT prompts
are masked exactly as in the cross-entropy):

    alpha * CE(labels) + (1 - alpha) * T^2 * KL

with KL = KL(teacher_T || student_T) (`distill.kl="forward"`, Hinton et al.) or
KL(student_T || teacher_T) (`"reverse"`, MiniLLM / GKD), both distributions softened by
the temperature T. The T^2 keeps the KL's gradient on the CE's scale as T grows.

Two sources of the teacher's distribution:

- online (`distill.logits_dir=""`): the teacher (`distill.teacher`, any checkpoint name of
  `resolve.py`) is loaded params-only, frozen, placed on the training mesh by its logical
  axes in `distill.teacher_dtype`, and passed to the jitted step as its `extra` argument
  (`FrozenInputs`), never a constant; the memory plan counts it. Both models' logits are
  formed `distill.chunk` positions at a time (strided, like `train/loss.chunked_loss_sums`,
  rematerialized in the backward pass), so neither [batch, seq, vocab] tensor exists whole.
- offline (`distill.logits_dir` set): the batch carries the teacher's top-k log-probs at
  temperature T (`Batch.teacher`, written by `train/distill_offline.py`, read by
  `data/teacher_logits.py`). The KL is taken over k + 1 buckets: the k stored tokens and
  one "rest" bucket holding the remaining mass (the teacher's stored `rest`, the
  student's log-sum-exp over every other token). With k = vocabulary the rest bucket is
  empty and the loss equals the online one (tests/test_distill.py).

Metrics (each a mean over loss tokens): loss (the whole objective, z-loss included), ce
(student CE), kl, teacher_ce (teacher CE at T = 1), z_loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from zen_code_jax.data.batch import Batch, TeacherTopK
from zen_code_jax.model import transformer as tm
from zen_code_jax.model.config import ModelConfig, get_preset
from zen_code_jax.model.params import abstract_params
from zen_code_jax.resolve import load_model, mesh_shardings, run_facts
from zen_code_jax.train.loss import _token_terms
from zen_code_jax.train.objectives import (
    NO_FROZEN,
    FrozenInputs,
    Objective,
    ObjectiveSums,
    register_objective,
)

KL_KINDS = ("forward", "reverse")
LOGITS_RUNNERS = ("local", "beam")  # where the offline teacher logits are prepared
PRESET_PREFIX = "preset:"  # a teacher named by a model preset: shapes only (the memory plan)


@dataclasses.dataclass(frozen=True)
class DistillSettings:
    """The `distill` config group, checked (see config.py for each field)."""

    teacher: str
    alpha: float
    temperature: float
    kl: str
    chunk: int
    teacher_dtype: str
    logits_dir: str
    top_k: int
    logits_runner: str = "local"
    beam_options: str = ""

    @property
    def offline(self) -> bool:
        return bool(self.logits_dir)

    @classmethod
    def from_config(cls, config: Any) -> DistillSettings:
        d = config.distill
        s = cls(
            teacher=str(d.teacher),
            alpha=float(d.alpha),
            temperature=float(d.temperature),
            kl=str(d.kl),
            chunk=int(d.chunk),
            teacher_dtype=str(d.teacher_dtype),
            logits_dir=str(d.logits_dir),
            top_k=int(d.top_k),
            logits_runner=str(d.get("logits_runner", "local")),
            beam_options=str(d.get("beam_options", "")),
        )
        if not 0.0 <= s.alpha <= 1.0:
            raise ValueError(f"distill.alpha={s.alpha} must be in [0, 1] (1 = CE only).")
        if s.temperature <= 0:
            raise ValueError(f"distill.temperature={s.temperature} must be positive.")
        if s.kl not in KL_KINDS:
            raise ValueError(f"distill.kl={s.kl!r} must be one of {KL_KINDS}.")
        if s.chunk <= 0:
            raise ValueError(f"distill.chunk={s.chunk} must be positive (positions per chunk).")
        if s.logits_runner not in LOGITS_RUNNERS:
            raise ValueError(
                f"distill.logits_runner={s.logits_runner!r} must be one of {LOGITS_RUNNERS}."
            )
        if s.top_k <= 0:
            raise ValueError(f"distill.top_k={s.top_k} must be positive.")
        if not s.teacher and not s.offline:
            raise ValueError(
                "train.objective='distill' needs a teacher: set distill.teacher to a "
                "checkpoint (hf:DIR, arm:NAME, arm:EXPERIMENT/ARM or a run directory)."
            )
        return s


# ---------------------------------------------------------------------------------------
# Per-token terms (float32). The numpy reference in tests/test_distill.py checks these.


def _xlogx_terms(w: jax.Array, log_w: jax.Array, log_v: jax.Array) -> jax.Array:
    """sum over the last axis of w * (log_w - log_v), with 0 where w == 0 (double where, so
    neither value nor gradient sees 0 * inf)."""
    live = w > 0
    diff = jnp.where(live, log_w, 0.0) - jnp.where(live, log_v, 0.0)
    return jnp.sum(jnp.where(live, w * diff, 0.0), axis=-1)


def kl_full(student: jax.Array, teacher: jax.Array, temperature: float, kl: str) -> jax.Array:
    """Per-token KL over the whole vocabulary. student/teacher: logits [..., V]."""
    log_q = jax.nn.log_softmax(student.astype(jnp.float32) / temperature, axis=-1)
    log_p = jax.nn.log_softmax(teacher.astype(jnp.float32) / temperature, axis=-1)
    if kl == "forward":
        return _xlogx_terms(jnp.exp(log_p), log_p, log_q)
    return _xlogx_terms(jnp.exp(log_q), log_q, log_p)


def kl_topk(student: jax.Array, top: TeacherTopK, temperature: float, kl: str) -> jax.Array:
    """Per-token KL over k + 1 buckets (the stored top-k tokens and the rest).

    student: logits [..., V]; top.ids/logp [..., k], top.rest [...]. When k == V there is
    no rest bucket (static: the shapes say so)."""
    s = student.astype(jnp.float32) / temperature
    vocab, k = s.shape[-1], top.ids.shape[-1]
    lse = jax.nn.logsumexp(s, axis=-1, keepdims=True)
    log_q = jnp.take_along_axis(s, top.ids, axis=-1) - lse  # [..., k]
    log_p = top.logp.astype(jnp.float32)
    if k < vocab:
        flat = s.reshape(-1, vocab)
        rows = jnp.arange(flat.shape[0])[:, None]
        others = flat.at[rows, top.ids.reshape(-1, k)].set(-jnp.inf).reshape(s.shape)
        log_q_rest = jax.nn.logsumexp(others, axis=-1, keepdims=True) - lse
        log_q = jnp.concatenate([log_q, log_q_rest], axis=-1)
        log_p = jnp.concatenate([log_p, top.rest.astype(jnp.float32)[..., None]], axis=-1)
    if kl == "forward":
        return _xlogx_terms(jnp.exp(log_p), log_p, log_q)
    return _xlogx_terms(jnp.exp(log_q), log_q, log_p)


def teacher_topk(teacher: jax.Array, targets: jax.Array, k: int, temperature: float) -> TeacherTopK:
    """What the offline preparation stores per position, from the teacher's logits [..., V]:
    top-k log-probs at temperature T, the log of the remaining mass, and the teacher's
    -log p(target) at T = 1."""
    t = teacher.astype(jnp.float32)
    log_p = jax.nn.log_softmax(t / temperature, axis=-1)
    logp, ids = jax.lax.top_k(log_p, k)
    vocab = t.shape[-1]
    if k < vocab:
        flat = log_p.reshape(-1, vocab)
        rows = jnp.arange(flat.shape[0])[:, None]
        others = flat.at[rows, ids.reshape(-1, k)].set(-jnp.inf).reshape(log_p.shape)
        rest = jax.nn.logsumexp(others, axis=-1)
    else:
        rest = jnp.full(t.shape[:-1], -jnp.inf, jnp.float32)
    nll, _ = _token_terms(t, targets)
    return TeacherTopK(ids=ids.astype(jnp.int32), logp=logp, rest=rest, nll=nll)


# ---------------------------------------------------------------------------------------
# Chunked sums over one micro-batch.


def _strided(x: jax.Array, chunk: int, n: int) -> jax.Array:
    """[B, S, ...] (S = chunk * n) -> [n, B, chunk, ...]: chunk j holds positions j, j+n, ..."""
    b = x.shape[0]
    return jnp.moveaxis(x.reshape(b, chunk, n, *x.shape[2:]), 2, 0)


def _pad_len(x: jax.Array, pad: int, value: Any = 0) -> jax.Array:
    if not pad:
        return x
    widths = [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)
    return jnp.pad(x, widths, constant_values=value)


def _logits(h: jax.Array, w: jax.Array, dtype: Any) -> jax.Array:
    """The LM head's contraction (inputs in the compute dtype, float32 accumulation)."""
    out = jnp.einsum(
        "bcd,dv->bcv", h.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32
    )
    return nn.with_logical_constraint(out, ("batch", "length", "vocab"))


def distill_sums(
    hidden: jax.Array,
    lm_head: jax.Array,
    targets: jax.Array,
    loss_mask: jax.Array,
    *,
    chunk_size: int,
    temperature: float,
    kl: str,
    compute_dtype: Any = jnp.float32,
    teacher_hidden: jax.Array | None = None,
    teacher_head: jax.Array | None = None,
    teacher_dtype: Any = jnp.float32,
    top: TeacherTopK | None = None,
) -> dict[str, jax.Array]:
    """{'ce_sum','z_sum','kl_sum','teacher_ce_sum','count'} over the loss tokens, in chunks.

    The teacher is either online (`teacher_hidden` [B, S, Dt] after its final norm and
    `teacher_head` [Dt, V]) or offline (`top`, the stored top-k). Each chunk's logits
    are rematerialized in the backward pass (`jax.checkpoint`)."""
    if (top is None) == (teacher_hidden is None):
        raise ValueError("distill_sums needs exactly one of teacher_hidden and top.")
    b, s, _ = hidden.shape
    chunk = min(chunk_size, s)
    n = -(-s // chunk)
    pad = n * chunk - s
    xs: dict[str, Any] = {
        "h": _strided(_pad_len(hidden, pad), chunk, n),
        "t": _strided(_pad_len(targets, pad), chunk, n),
        "m": _strided(_pad_len(loss_mask, pad), chunk, n).astype(jnp.float32),
    }
    if top is None:
        xs["th"] = _strided(_pad_len(teacher_hidden, pad), chunk, n)
    else:
        xs["top"] = TeacherTopK(
            ids=_strided(_pad_len(top.ids, pad), chunk, n),
            logp=_strided(_pad_len(top.logp, pad), chunk, n),
            rest=_strided(_pad_len(top.rest, pad), chunk, n),
            nll=_strided(_pad_len(top.nll, pad), chunk, n),
        )

    @jax.checkpoint
    def chunk_sums(x: dict[str, Any]) -> jax.Array:
        m = x["m"]
        logits = _logits(x["h"], lm_head, compute_dtype)
        ce, lse = _token_terms(logits, x["t"])
        if top is None:
            t_logits = jax.lax.stop_gradient(_logits(x["th"], teacher_head, teacher_dtype))
            kl_tok = kl_full(logits, t_logits, temperature, kl)
            t_ce, _ = _token_terms(t_logits, x["t"])
        else:
            kl_tok = kl_topk(logits, x["top"], temperature, kl)
            t_ce = x["top"].nll
        terms = (ce, jnp.square(lse), kl_tok, t_ce)
        # where, not a product: a masked position's term may be inf (no teacher there).
        return jnp.stack([jnp.sum(jnp.where(m > 0, v * m, 0.0)) for v in terms])

    def body(carry: jax.Array, x: dict[str, Any]) -> tuple[jax.Array, None]:
        return carry + chunk_sums(x), None

    acc, _ = jax.lax.scan(body, jnp.zeros((4,), jnp.float32), xs)
    return {
        "ce_sum": acc[0],
        "z_sum": acc[1],
        "kl_sum": acc[2],
        "teacher_ce_sum": acc[3],
        "count": jnp.sum(xs["m"]),
    }


# ---------------------------------------------------------------------------------------
# The teacher as frozen inputs, and the objective.


def teacher_model_config(spec: str) -> ModelConfig:
    """The teacher's architecture without reading a weight (`preset:NAME`: a preset)."""
    if spec.startswith(PRESET_PREFIX):
        return get_preset(spec[len(PRESET_PREFIX) :])
    return run_facts(spec).model_cfg


def teacher_frozen(
    spec: str,
    teacher_cfg: ModelConfig,
    mesh: Mesh,
    dtype: str,
    rules: Sequence[Any] | None = None,
) -> FrozenInputs:
    """The teacher's params as the step's frozen inputs: shapes and shardings (its logical
    axes on `mesh` under `rules`) now, the weights on `load()` (params only, cast to
    `dtype`). A `preset:NAME` teacher has shapes only (for the memory plan)."""
    shardings = mesh_shardings(teacher_cfg, mesh, rules)
    shapes = nn.unbox(abstract_params(teacher_cfg))
    abstract = jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, jnp.dtype(dtype), sharding=sh),
        shapes,
        shardings,
    )

    def load() -> Any:
        if spec.startswith(PRESET_PREFIX):
            raise ValueError(
                f"distill.teacher={spec!r} names a preset, not weights (only the memory plan "
                "reads it); give a checkpoint: hf:DIR, arm:NAME or a run directory."
            )
        return load_model(spec, target=abstract, dtype=jnp.dtype(dtype)).params

    return FrozenInputs(abstract=abstract, shardings=shardings, load=load)


def check_teacher_tokenizer(teacher_tok: Any, student_tok: Any, teacher: str) -> None:
    """A teacher must speak the student's tokenizer: same ids for the same text."""
    a, b = teacher_tok.fingerprint(), student_tok.fingerprint()
    if a != b:
        raise ValueError(
            f"distill.teacher={teacher!r} uses tokenizer {a} ({teacher_tok.vocab_size} ids) "
            f"but the student's data uses tokenizer {b} ({student_tok.vocab_size} ids); "
            "distil from a teacher trained on the same tokenizer (same data.* settings and "
            "model.vocab_size, or the teacher's hf: tokenizer via train.init_checkpoint)."
        )


def build_distill(
    model_cfg: ModelConfig,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    rules: Sequence[Any] | None = None,
) -> Objective:
    """The `distill` objective (module docstring). `rules`: the teacher's logical-axis
    rules on the mesh (default: the student's, DEFAULT_RULES)."""
    s = DistillSettings.from_config(config)
    student = tm.Transformer(model_cfg)
    z_coef = float(config.optimizer.z_loss)
    kd_scale = (1.0 - s.alpha) * s.temperature**2
    if s.offline:
        frozen = NO_FROZEN  # the teacher's distribution rides in the batch
        teacher_cfg = None
    else:
        teacher_cfg = teacher_model_config(s.teacher)
        if teacher_cfg.vocab_size != model_cfg.vocab_size:
            raise ValueError(
                f"distill.teacher={s.teacher!r} has vocab_size {teacher_cfg.vocab_size}, the "
                f"student {model_cfg.vocab_size}: teacher and student need one tokenizer."
            )
        frozen = teacher_frozen(s.teacher, teacher_cfg, mesh, s.teacher_dtype, rules)
    teacher = tm.Transformer(teacher_cfg) if teacher_cfg is not None else None

    def sums(params: Any, batch: Batch, extra: Any) -> ObjectiveSums:
        args = (batch.inputs, batch.positions, batch.segment_ids)
        hidden = student.apply({"params": params}, *args, return_hidden=True)
        common = dict(
            chunk_size=s.chunk,
            temperature=s.temperature,
            kl=s.kl,
            compute_dtype=model_cfg.dtype,
        )
        head = tm.lm_head_kernel(params, model_cfg)
        if teacher is None:
            if batch.teacher is None:
                raise ValueError(
                    "distill.logits_dir is set but the batch carries no teacher logits; "
                    "read batches through data.teacher_logits.with_teacher_logits."
                )
            out = distill_sums(
                hidden, head, batch.targets, batch.loss_mask, top=batch.teacher, **common
            )
        else:
            t_hidden = teacher.apply({"params": extra}, *args, return_hidden=True)
            out = distill_sums(
                hidden,
                head,
                batch.targets,
                batch.loss_mask,
                teacher_hidden=jax.lax.stop_gradient(t_hidden),
                teacher_head=jax.lax.stop_gradient(tm.lm_head_kernel(extra, teacher_cfg)),
                teacher_dtype=teacher_cfg.dtype,
                **common,
            )
        total = s.alpha * out["ce_sum"] + kd_scale * out["kl_sum"] + z_coef * out["z_sum"]
        return ObjectiveSums(
            objective=total,
            count=out["count"],
            metrics={
                "loss": total,
                "ce": out["ce_sum"],
                "kl": out["kl_sum"],
                "teacher_ce": out["teacher_ce_sum"],
                "z_loss": out["z_sum"],
            },
        )

    return Objective("distill", sums, frozen, teacher_topk=s.offline)


register_objective("distill", build_distill)


def make_topk_fn(teacher_cfg: Any, k: int, temperature: float, chunk: int) -> Any:
    """jit (params, batch) -> TeacherTopK numpy-able arrays [B, S, k], the teacher's logits
    formed `chunk` positions at a time (strided, as in the loss)."""
    model = tm.Transformer(teacher_cfg)

    def fn(params: Any, batch: Batch) -> TeacherTopK:
        args = (batch.inputs, batch.positions, batch.segment_ids)
        hidden = model.apply({"params": params}, *args, return_hidden=True)
        head = tm.lm_head_kernel(params, teacher_cfg)
        b, s, _ = hidden.shape
        c = min(chunk, s)
        n = -(-s // c)
        pad = n * c - s
        h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        t = jnp.pad(batch.targets, ((0, 0), (0, pad)))

        def one(x: tuple[jax.Array, jax.Array]) -> TeacherTopK:
            h_c, t_c = x
            logits = jnp.einsum(
                "bcd,dv->bcv",
                h_c.astype(teacher_cfg.dtype),
                head.astype(teacher_cfg.dtype),
                preferred_element_type=jnp.float32,
            )
            return teacher_topk(logits, t_c, k, temperature)

        out = jax.lax.map(one, (_strided(h, c, n), _strided(t, c, n)))

        def unstride(x: jax.Array) -> jax.Array:  # [n, B, c, ...] -> [B, S, ...]
            x = jnp.moveaxis(x, 0, 2)  # [B, c, n, ...]
            return x.reshape(b, n * c, *x.shape[3:])[:, :s]

        return jax.tree.map(unstride, out)

    return jax.jit(fn)
