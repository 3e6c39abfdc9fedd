"""The abstract parameter tree of a model: the one place its shapes and logical axes are
computed.

Every consumer that needs the tree without the values asks here: placing parameters on a
mesh (`infer.engine`), restoring a checkpoint straight into shardings (`resolve`),
streaming an HF checkpoint (`hf.load.param_shardings`) and drawing random test weights
(`infer.engine.random_params`). Before, each traced the model's `init` on its own, with
its own dummy inputs.
"""

from __future__ import annotations

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
