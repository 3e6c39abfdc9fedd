"""Training: optimizer and schedule, loss, sharded state, the jitted train/eval steps."""

from zen_code_jax.train.state import create_train_state
from zen_code_jax.train.step import make_eval_step, make_train_step

__all__ = ["create_train_state", "make_eval_step", "make_train_step"]
