"""Training objectives: what the jitted step differentiates, selected by `train.objective`.

The step (`train/step.py`) is generic: for each micro-batch it calls the objective's
`sums(params, batch, extra)`, differentiates `ObjectiveSums.objective`, and adds every
sum up over micro-batches; it then divides the gradient and each metric sum by the loss
token count once. So an objective only says what to sum, and the rest (accumulation,
sharding, optimizer, logging) is shared.

`extra` is the objective's frozen input (a teacher's params, say): a jit argument with
its own shardings (`FrozenInputs.shardings`), never a constant captured in a closure, so
the compiled step does not embed gigabytes of weights, and the memory plan
(`train/plan.py`) counts its bytes from `FrozenInputs.abstract`. Objectives without one
use `NO_FROZEN` (an empty pytree).

Every metric sum an objective returns reaches TensorBoard and metrics.jsonl as
`train/<name>` (divided by the token count): the progress hook logs every metric of
the step. `loss` is required (the progress line and the non-finite check read it).

Adding an objective is one builder plus `register_objective("name", builder)`; no edit
to the step or the loop (tests/test_objectives.py registers a toy one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from flax import struct
from jax.sharding import Mesh

from zen_code_jax.data.batch import Batch
from zen_code_jax.model import transformer as tm
from zen_code_jax.model.config import ModelConfig
from zen_code_jax.model.layers import matmul
from zen_code_jax.model.params import AUX_PARAMS_KEY, model_params
from zen_code_jax.train import hlp
from zen_code_jax.train.loss import (
    LossSums,
    chunked_loss_sums,
    loss_sums_from_logits,
    objective,
)

# Metric names the step itself adds; an objective may not return them. `padding`: the
# share of the global batch's tokens that are packing padding (segment 0).
STEP_METRICS = ("grad_norm", "lr", "tokens", "padding")


@struct.dataclass
class ObjectiveSums:
    """One micro-batch's sums (a pytree, so the step's scan adds them up).

    objective: the scalar the step differentiates (a sum; divided by `count` later).
    count:     loss tokens, the divisor of the gradient and of every metric.
    metrics:   named sums, each reported as sum / count (must include "loss").
    """

    objective: jax.Array
    count: jax.Array
    metrics: dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class FrozenInputs:
    """The step's third argument: inputs it reads but never updates (a teacher's params).

    abstract:  pytree of jax.ShapeDtypeStruct (what `train/plan.py` counts).
    shardings: the matching pytree of NamedSharding (the jit's in_shardings for `extra`).
    load:      returns the arrays, placed with `shardings`; the trainer calls it once.
    """

    abstract: Any
    shardings: Any
    load: Callable[[], Any]

    @property
    def empty(self) -> bool:
        return not jax.tree_util.tree_leaves(self.abstract)


NO_FROZEN = FrozenInputs(abstract={}, shardings={}, load=dict)

SumsFn = Callable[[Any, Batch, Any], ObjectiveSums]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A built objective: `sums(params, batch, extra)` and the frozen inputs it reads.

    teacher_topk: its batches carry `Batch.teacher` (offline teacher logits, read by the
    `distill` objective), so the step's batch shardings include that field.
    """

    name: str
    sums: SumsFn
    frozen: FrozenInputs = NO_FROZEN
    teacher_topk: bool = False


# (model config, run config, mesh) -> Objective. The mesh places frozen inputs.
ObjectiveBuilder = Callable[[ModelConfig, ml_collections.ConfigDict, Mesh], Objective]

_REGISTRY: dict[str, ObjectiveBuilder] = {}


def register_objective(name: str, builder: ObjectiveBuilder, *, replace: bool = False) -> None:
    """Make `train.objective=name` select `builder`."""
    if name in _REGISTRY and not replace:
        raise ValueError(
            f"Objective {name!r} is already registered; pick another name or pass replace=True."
        )
    _REGISTRY[name] = builder


def objective_names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def build_objective(model_cfg: ModelConfig, config: Any, mesh: Mesh) -> Objective:
    """The objective `config.train.objective` names, built for this model and mesh."""
    name = str(config.train.objective)
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown train.objective={name!r}; registered objectives: {list(objective_names())} "
            "(add one with zen_code_jax.train.objectives.register_objective)."
        )
    built = _REGISTRY[name](model_cfg, config, mesh)
    if not isinstance(built, Objective):
        raise TypeError(
            f"Objective builder {name!r} returned {type(built).__name__}, not Objective."
        )
    return built


def make_loss_fn(model_cfg: ModelConfig, config: Any) -> Callable[[Any, Batch], LossSums]:
    """(params, batch) -> next-token CE sums {'ce_sum','z_sum','count'} over loss tokens;
    chunked over positions when train.loss_chunk_size > 0 (the eval step uses it too)."""
    model = tm.Transformer(model_cfg)
    chunk = int(config.train.loss_chunk_size)

    def loss_sums(params: Any, batch: Batch) -> LossSums:
        args = (batch.inputs, batch.positions, batch.segment_ids)
        if chunk > 0:
            hidden = model.apply({"params": params}, *args, return_hidden=True)
            kernel = tm.lm_head_kernel(params, model_cfg)
            return chunked_loss_sums(
                hidden, kernel, batch.targets, batch.loss_mask, chunk, model_cfg.dtype
            )
        logits = model.apply({"params": params}, *args)
        return loss_sums_from_logits(logits, batch.targets, batch.loss_mask)

    return loss_sums


def next_token(model_cfg: ModelConfig, config: Any, mesh: Mesh) -> Objective:
    """Masked next-token cross-entropy + optimizer.z_loss x logsumexp^2.

    `lm` counts every target the batch's loss_mask marks; `sft` is the same objective on
    batches whose loss_mask marks only response tokens (the SFT data pipeline's).
    Metrics: loss (mean CE), z_loss (mean logsumexp^2).
    """
    del mesh  # no frozen inputs
    if hlp_weight(config) > 0:
        return _next_token_hlp(model_cfg, config)
    loss_sums = make_loss_fn(model_cfg, config)
    z_coef = float(config.optimizer.z_loss)

    def sums(params: Any, batch: Batch, extra: Any) -> ObjectiveSums:
        del extra
        s = loss_sums(params, batch)
        return ObjectiveSums(
            objective=objective(s, z_coef),
            count=s["count"],
            metrics={"loss": s["ce_sum"], "z_loss": s["z_sum"]},
        )

    return Objective(str(config.train.objective), sums)


# --- Horizon-Length Prediction (issue 21 item 3; train/hlp.py) ------------------------


def hlp_weight(config: Any) -> float:
    """`train.hlp_weight` (0 = off; configs written before the key read as 0)."""
    return float(config.train.get("hlp_weight", 0.0) or 0.0)


def auxiliary_init(
    model_cfg: ModelConfig, config: Any
) -> Callable[[jax.Array], dict[str, Any]] | None:
    """key -> the trainable heads an objective adds under `AUX_PARAMS_KEY` (the train
    state's init puts them beside the model's params); None when the run adds none, so a
    plain run's params tree, init and numerics are exactly as before."""
    if hlp_weight(config) <= 0:
        return None
    if str(config.train.objective) != "lm":
        raise ValueError(
            f"train.hlp_weight={hlp_weight(config)} needs train.objective='lm' (got "
            f"{config.train.objective!r}); set train.hlp_weight=0 for other objectives."
        )

    def init(key: jax.Array) -> dict[str, Any]:
        return {hlp.HEAD_KEY: hlp.init_head(key, model_cfg.hidden_size)}

    return init


def _next_token_hlp(model_cfg: ModelConfig, config: Any) -> Objective:
    """`lm` + w x HLP: next-token CE (+ z-loss) from the same final hidden states the HLP
    head reads (logits = matmul(hidden, lm_head_kernel), the model's own LM-head
    contraction). Metrics: loss, z_loss, hlp (L1 sum / loss tokens), hlp_tokens (middle
    tokens / loss tokens)."""
    model = tm.Transformer(model_cfg)
    chunk = int(config.train.loss_chunk_size)
    z_coef, weight = float(config.optimizer.z_loss), hlp_weight(config)
    sentinels = hlp.HlpSentinels.from_config(config.train.hlp_sentinels)
    require_end = str(config.fim.level) == "document"

    def sums(params: Any, batch: Batch, extra: Any) -> ObjectiveSums:
        del extra
        head = params[AUX_PARAMS_KEY][hlp.HEAD_KEY]
        p = model_params(params)
        args = (batch.inputs, batch.positions, batch.segment_ids)
        hidden = model.apply({"params": p}, *args, return_hidden=True)
        kernel = tm.lm_head_kernel(p, model_cfg)
        if chunk > 0:
            s = chunked_loss_sums(
                hidden, kernel, batch.targets, batch.loss_mask, chunk, model_cfg.dtype
            )
        else:
            logits = nn.with_logical_constraint(
                matmul(hidden, kernel, model_cfg.dtype), ("batch", "length", "vocab")
            )
            s = loss_sums_from_logits(logits, batch.targets, batch.loss_mask)
        target, mask = hlp.horizon_targets(
            batch.inputs, batch.segment_ids, batch.positions, sentinels, require_end=require_end
        )
        l1, n_mid = hlp.hlp_sums(head, hidden, target, mask)
        return ObjectiveSums(
            objective=objective(s, z_coef) + weight * l1,
            count=s["count"],
            metrics={"loss": s["ce_sum"], "z_loss": s["z_sum"], "hlp": l1, "hlp_tokens": n_mid},
        )

    return Objective(str(config.train.objective), sums)


register_objective("lm", next_token)
register_objective("sft", next_token)
