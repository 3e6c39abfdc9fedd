"""Is a checkpoint's train state the one this run builds? (leaf paths and shapes)

A config key can add or remove leaves of the train state without touching the model
config that `checkpoint.identity` compares: `train.hlp_weight` > 0 adds the HLP head under
`params/aux_heads` (and its AdamW moments), `optimizer.clip_norm` 0 vs > 0 adds or removes a
stage of the optimizer chain. Orbax then fails to restore, and `Checkpointer.restore_latest`
would take that failure for corruption (moving the step aside and silently starting over).
`check_state_tree` compares the checkpoint's state metadata with the run's abstract state
first and raises `CheckpointMismatchError` naming the key and the fix; the step stays put.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax

from zen_code_jax.config import base_config
from zen_code_jax.model.params import AUX_PARAMS_KEY


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says why and what to do."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was written by a different model, tokenizer or train-state config."""


# Config keys that add or remove leaves of the train state, with the test on a differing
# leaf path that points at each: the error for a differing tree names the checkpoint's
# value of each key involved. HLP's head (`train.hlp_weight` > 0) adds `params/aux_heads/...`
# and its AdamW moments `opt_state/.../aux_heads/...`; `optimizer.clip_norm` 0 vs > 0
# adds or removes a stage of the optimizer chain (its state's indices shift).
_TREE_KEYS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("train.hlp_weight", lambda path: AUX_PARAMS_KEY in path.split("/")),
    (
        "optimizer.clip_norm",
        lambda path: path.startswith("opt_state/") and AUX_PARAMS_KEY not in path.split("/"),
    ),
)


def _key_name(key: Any) -> str:
    """One pytree path entry as Orbax's metadata and a live state both spell it (a
    dataclass/namedtuple field, a dict key and a list index all become plain strings)."""
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"params/lm_head/kernel": shape, ...} of a state, an abstract state or Orbax's
    item metadata of one (whose leaves are metadata objects with a `.shape`)."""
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {
        "/".join(_key_name(k) for k in path): tuple(getattr(leaf, "shape", ()))
        for path, leaf in flat
    }


def _config_value(config: Mapping[str, Any], dotted: str) -> Any:
    """`config["train"]["hlp_weight"]` for "train.hlp_weight"; the default when a
    checkpoint's config predates the key (what that run used)."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            group, key = dotted.split(".", 1)
            return base_config()[group][key]
        node = node[part]
    return node


def check_state_tree(
    saved: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    saved_config: Mapping[str, Any],
    where: Path,
) -> None:
    """Refuse a checkpoint whose state leaves (paths, shapes) are not the run's: Orbax
    would fail to restore it and the failure would read as corruption (the step moved
    aside, the run silently started over). Runs after the identity check, so a model
    config change keeps its own message."""

    def order(path: str) -> tuple[bool, str]:  # params first: they say what differs
        return (not path.startswith("params/"), path)

    only_saved = sorted(set(saved) - set(expected), key=order)
    only_run = sorted(set(expected) - set(saved), key=order)
    reshaped = sorted((k for k in set(saved) & set(expected) if saved[k] != expected[k]), key=order)
    if not (only_saved or only_run or reshaped):
        return

    def show(paths: list[str], shapes: Mapping[str, tuple[int, ...]]) -> str:
        listed = ", ".join(f"{p} {shapes[p]}" for p in paths[:4])
        return listed + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")

    parts = []
    if only_saved:
        parts.append(f"only in the checkpoint: {show(only_saved, saved)}")
    if only_run:
        parts.append(f"only in this run: {show(only_run, expected)}")
    if reshaped:
        parts.append(
            "different shapes: "
            + ", ".join(f"{p} {saved[p]} vs {expected[p]}" for p in reshaped[:4])
        )
    differing = only_saved + only_run + reshaped
    keys = [key for key, shows in _TREE_KEYS if any(shows(p) for p in differing)]
    was = ", ".join(f"{k}={_config_value(saved_config, k)!r}" for k in keys)
    if not any(p.startswith("opt_state/") for p in saved):
        trained = "it holds model params only (an HF import), not a train state to resume"
    elif keys:
        plural = "s" if len(keys) > 1 else ""
        trained = f"this run directory was trained with {was}; resume with the same value{plural}"
    else:
        trained = "resume with the config it was trained with"
    raise CheckpointMismatchError(
        f"The checkpoint in {where} holds a different train state than this config builds ("
        + "; ".join(parts)
        + f"): {trained}, or use a fresh --workdir (train.init_checkpoint={where.parent.parent} "
        "starts a new run from its weights). The checkpoint was left in place."
    )
