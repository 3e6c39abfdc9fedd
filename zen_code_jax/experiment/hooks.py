"""The experiment-specific hooks of an arm: held-out loss on fixed batches of the arm's
corpus, and periodic HF export. The generic ones (progress, non-finite check, checkpoint,
preemption) are `zen_code_jax.train.standard_hooks`, shared by any trainer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from zen_code_jax.data.batch import Batch
from zen_code_jax.hf.export import export_params
from zen_code_jax.model.params import model_params
from zen_code_jax.train.hooks import StepInfo


def batches_loss(eval_step: Callable, params: Any, batches: Sequence[Batch]) -> dict[str, float]:
    """Mean next-token loss (nats per token) over fixed batches. (Bits per byte need the
    bytes behind the tokens, which packed batches do not carry: the `heldout_loss` task
    reports them.)"""
    loss_sum, tokens = 0.0, 0.0
    for batch in batches:
        out = eval_step(params, batch)
        loss_sum += float(out["loss_sum"])
        tokens += float(out["tokens"])
    return {"loss": loss_sum / max(tokens, 1.0)}


def periodic_heldout(
    writer: Any, eval_step: Callable, batches: Sequence[Batch]
) -> Callable[[StepInfo], None]:
    """A state hook: `eval/heldout_batches/loss` on fixed held-out batches (left to right,
    FIM off): the learning curve between final evaluations."""

    def hook(info: StepInfo) -> None:
        if batches:
            values = batches_loss(eval_step, model_params(info.state.params), batches)
            writer.scalars(info.step, values, prefix="eval/heldout_batches/")

    return hook


def hf_export(root: Path, model_cfg: Any, tokenizer: Any) -> Callable[[StepInfo], None]:
    """A state hook (`checkpoint.hf_export_every`): write ROOT/<step>/ as an HF directory
    (sharded safetensors + index + configs + tokenizer), atomically, so a schedule of
    exports is loadable by transformers / vLLM while training goes on. Single-process
    runs (each tensor is gathered to this host in turn)."""

    def hook(info: StepInfo) -> None:
        export_params(
            model_params(info.state.params),
            model_cfg,
            root / str(info.step),
            tokenizer=tokenizer,
            overwrite=True,
        )

    return hook
