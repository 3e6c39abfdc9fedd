"""Training: optimizer and schedule, loss, objectives, sharded state, the jitted train/eval
steps, the generic loop, its hooks and the standard ones.

Exports are lazy (PEP 562) so that `python -m zen_code_jax.train.plan` can set
XLA_FLAGS (simulated device count) before jax is first imported.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "build_objective",
    "create_train_state",
    "make_eval_step",
    "make_train_step",
    "register_objective",
]

_EXPORTS = {
    "build_objective": "zen_code_jax.train.objectives",
    "register_objective": "zen_code_jax.train.objectives",
    "create_train_state": "zen_code_jax.train.state",
    "make_train_step": "zen_code_jax.train.step",
    "make_eval_step": "zen_code_jax.train.step",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'zen_code_jax.train' has no attribute {name!r}")
