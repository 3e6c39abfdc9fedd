"""AdamW with warm-up + cosine schedule, global-norm clipping and a weight-decay mask.

Everything is read from the config's `optimizer` group (and `train.steps` for the
schedule length), so an experiment changes hyperparameters without touching code.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

NO_DECAY_NAMES: frozenset[str] = frozenset({"scale", "bias"})


def make_schedule(opt_cfg: Any, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to peak_lr over warmup_steps, then cosine to final_lr.

    The cosine reaches final_lr at `total_steps` and stays there (optax semantics). If
    warmup_steps >= total_steps the run only ever warms up (the config is taken literally).
    """
    peak, final = float(opt_cfg.peak_lr), float(opt_cfg.final_lr)
    warmup = int(opt_cfg.warmup_steps)
    total = int(total_steps)
    if total < 1:
        raise ValueError(f"train.steps must be >= 1 for the LR schedule, got {total}.")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(total, warmup + 1),
        end_value=final,
    )


def _leaf_name(path: tuple) -> str | None:
    """Last dict key on a pytree path (skips attribute keys such as a box's `.value`)."""
    for key in reversed(path):
        if isinstance(key, jax.tree_util.DictKey):
            return str(key.key)
    return None


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: every leaf except norm scales and biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _leaf_name(path) not in NO_DECAY_NAMES, params
    )


def make_optimizer(config: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(clip_by_global_norm -> AdamW(schedule, decay mask), schedule) from the config."""
    opt = config.optimizer
    schedule = make_schedule(opt, config.train.steps)
    parts = []
    if opt.clip_norm and opt.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(float(opt.clip_norm)))
    parts.append(
        optax.adamw(
            learning_rate=schedule,
            b1=float(opt.b1),
            b2=float(opt.b2),
            eps=float(opt.eps),
            weight_decay=float(opt.weight_decay),
            mask=decay_mask,
        )
    )
    return optax.chain(*parts), schedule


def global_norm(tree: Any) -> jax.Array:
    """L2 norm over all leaves, accumulated in float32."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
