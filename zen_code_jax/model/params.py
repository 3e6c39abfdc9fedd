"""The abstract parameter tree of a model: the one place its shapes and logical axes are
computed.

Every consumer that needs the tree without the values asks here: placing parameters on a
mesh (`infer.engine`), restoring a checkpoint straight into shardings (`resolve`),
streaming an HF checkpoint (`hf.load.param_shardings`) and drawing random test weights
(`infer.engine.random_params`). Before, each traced the model's `init` on its own, with
its own dummy inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from zen_code_jax.model.config import ModelConfig
from zen_code_jax.model.transformer import Transformer


def abstract_params(cfg: ModelConfig) -> Any:
    """The model's `params` tree as `jax.ShapeDtypeStruct`s, boxed in `nn.Partitioned`
    (so `nn.get_partition_spec` gives the logical axes and `nn.unbox` the plain tree).

    Traced with `jax.eval_shape`, so nothing is allocated or compiled; the shapes do not
    depend on the dummy inputs' length.
    """
    dummy = np.zeros((1, 1), np.int32)
    return jax.eval_shape(
        lambda: Transformer(cfg).init(jax.random.key(0), dummy, dummy, dummy + 1)
    )["params"]


def param_partition_specs(cfg: ModelConfig) -> Any:
    """Logical `PartitionSpec`s of the model's params (map them onto a mesh with
    `nn.logical_to_mesh_sharding(specs, mesh, rules)`)."""
    return nn.get_partition_spec(abstract_params(cfg))


# Trainable parameters that an objective adds beside the model's (the Horizon-Length
# Prediction head, `train/hlp.py`) live in the train state's params tree under this one
# top-level key, so the optimizer, checkpoints and resumption treat them like any weight,
# while everything that *uses* the model (serving, evaluation, HF export, init from a
# checkpoint) reads `model_params(params)`: the tree without it. A checkpoint with or without
# the key therefore loads the same model. The Flax model has no submodule of this name.
AUX_PARAMS_KEY = "aux_heads"


def model_params(params: Any) -> Any:
    """The model's own params: `params` without the objective heads of `AUX_PARAMS_KEY`
    (the same object when there are none, so plain runs pass through untouched)."""
    if isinstance(params, Mapping) and AUX_PARAMS_KEY in params:
        return {k: v for k, v in params.items() if k != AUX_PARAMS_KEY}
    return params
