"""Horizon-Length Prediction (HLP): an auxiliary head that predicts how much of the middle
is left, trained beside next-token prediction and dropped at inference.

Ding et al., "Horizon-Length Prediction: Advancing Fill-in-the-Middle Capabilities for
Code Generation with Lookahead Planning" (arXiv 2410.03103, 2024; v4 2025 "Planning-Aware
Code Infilling via Horizon-Length Prediction"): next-token prediction alone does not
teach a FIM model where the middle must end to meet the suffix. HLP adds a linear head on
the final hidden state of every middle token; for the i-th of the M middle tokens
(i = 1..M) it regresses the normalized number of middle tokens still to come,

    y_i = (M - i) / M        ((M - 1) / M at the first middle token, 0 at the last),

with an L1 loss, L = L_NTP + w * L_HLP. The head is not part of the model: it costs one
[D] dot product per token in training and nothing at inference (up to 24% relative FIM
gain reported).

Where the middle is, read from the batch alone (the step has no tokenizer, only the ids
`HlpSentinels` the run resolved): in a segment, the tokens strictly after its
`<|fim_middle|>` and before the first `<|endoftext|>` after it. In PSM that is exactly the
middle. In SPM (`<pre><suf> S <mid> P M <eot>`) the prefix/middle boundary is not marked
in the tokens, so the span is P + M and the target is the share of P + M still to come
(the same "how far to the end of the infill" signal, measured from the sentinel).
At `fim.level="document"` a span must end with `<|endoftext|>` inside the row: a file
longer than a row is cut (`data/packing.chunk_segment`), and a middle cut by the row end
has an unknown M, so it gets no target (`require_end=True`). At `fim.level="context"` a
fragment's middle ends at the fragment's end by construction (`data/fim.fim_fragment`),
with or without `<|endoftext|>`.

The loss sum is per middle token, like every sum in the objective seam: the step divides
it by the loss-token count, so the update is the same however the batch is split into
micro-batches; the effective weight of the paper's per-middle-token mean is therefore
w x (middle tokens / loss tokens), logged as `train/hlp_tokens` beside `train/hlp`
(mean L1 per middle token = hlp / hlp_tokens).

Where the head's parameters live: in the train state's params under
`model.params.AUX_PARAMS_KEY` (`{"aux_heads": {"hlp": {"kernel", "bias"}}}`), so AdamW,
checkpoints and resumption need no change; every reader of a model (`model_params`,
`checkpoint.restore_params_only`) strips that key, so serving, evaluation and HF export
load an HLP run exactly like any other. This module is the math only (targets, head,
sums); `train/objectives.py` wires it into the `lm` objective when `train.hlp_weight > 0`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

HEAD_KEY = "hlp"  # the head's key under model.params.AUX_PARAMS_KEY


@dataclasses.dataclass(frozen=True)
class HlpSentinels:
    """The token ids HLP reads the middle span from (the run's tokenizer's)."""

    fim_middle: int
    eot: int

    @classmethod
    def from_config(cls, ids: Any) -> HlpSentinels:
        """From `train.hlp_sentinels` = (fim_middle_id, eot_id), written by the arm's
        `resolve_config` from the run's tokenizer."""
        ids = tuple(int(i) for i in ids)
        if len(ids) != 2:
            raise ValueError(
                f"train.hlp_sentinels={ids} must be (fim_middle_id, eot_id) of the run's "
                "tokenizer; run through experiment.arm.run_arm (which writes them) or set them."
            )
        return cls(*ids)


def _segment_cumsum(x: jax.Array, start: jax.Array) -> jax.Array:
    """Inclusive cumulative sum of x [B, S] restarting at every segment start (`start`
    [B, S]: the index of each position's segment start)."""
    c = jnp.cumsum(x, axis=1)
    before = jnp.take_along_axis(c - x, start, axis=1)
    return c - before


def _segment_total(x: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """Each position's segment total of x [B, S] (segment ids are < S + 1)."""
    n = segment_ids.shape[1] + 1

    def row(xr: jax.Array, sr: jax.Array) -> jax.Array:
        return jax.ops.segment_sum(xr, sr, num_segments=n)[sr]

    return jax.vmap(row)(x, segment_ids)


def horizon_targets(
    inputs: jax.Array,
    segment_ids: jax.Array,
    positions: jax.Array,
    sentinels: HlpSentinels,
    *,
    require_end: bool,
) -> tuple[jax.Array, jax.Array]:
    """(target, mask), float32 [B, S]: target (M - i) / M on the i-th of the M tokens of
    each segment's middle span (see the module docstring), mask 1 there and 0 elsewhere.

    Inputs are the batch's int32 `inputs`, `segment_ids` (0 = padding) and `positions`
    (restarting at 0 per segment, so `index - position` is the segment's start).
    `require_end`: count a span only when an `<|endoftext|>` closes it in the row.
    """
    idx = jnp.arange(inputs.shape[1], dtype=jnp.int32)[None, :]
    start = jnp.clip(idx - positions.astype(jnp.int32), 0, inputs.shape[1] - 1)
    valid = segment_ids > 0
    is_mid = ((inputs == sentinels.fim_middle) & valid).astype(jnp.int32)
    after_mid = (_segment_cumsum(is_mid, start) - is_mid) > 0
    is_end = ((inputs == sentinels.eot) & after_mid).astype(jnp.int32)
    before_end = _segment_cumsum(is_end, start) == 0
    span = (valid & after_mid & before_end & (is_mid == 0)).astype(jnp.int32)
    if require_end:
        span = span * (_segment_total(is_end, segment_ids) > 0)
    i = _segment_cumsum(span, start)
    m = _segment_total(span, segment_ids)
    mf = m.astype(jnp.float32)
    target = jnp.where(span > 0, (mf - i.astype(jnp.float32)) / jnp.maximum(mf, 1.0), 0.0)
    return target, span.astype(jnp.float32)


def init_head(key: jax.Array, hidden_size: int) -> dict[str, jax.Array]:
    """The linear head {kernel [D, 1], bias [1]} in float32: kernel ~ N(0, 1/D) (a unit-
    variance output for unit-variance hidden states), bias 0."""
    kernel = jax.random.normal(key, (hidden_size, 1), jnp.float32) / jnp.sqrt(hidden_size)
    return {"kernel": kernel, "bias": jnp.zeros((1,), jnp.float32)}


def predict(head: Any, hidden: jax.Array) -> jax.Array:
    """The head's prediction float32 [B, S] from final hidden states [B, S, D]."""
    out = jnp.einsum("bsd,dk->bsk", hidden.astype(jnp.float32), head["kernel"].astype(jnp.float32))
    return out[..., 0] + head["bias"][0]


def hlp_sums(
    head: Any, hidden: jax.Array, target: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(sum of |prediction - target| over the masked tokens, their count), float32."""
    err = jnp.abs(predict(head, hidden) - target)
    return jnp.sum(err * mask), jnp.sum(mask)
