"""Logical-axis -> mesh-axis rules. The model names axes; only this file maps them.

| logical   | mesh axes         | why |
|-----------|-------------------|-----|
| batch     | ('data', 'fsdp')  | data parallel over both; FSDP shards the batch like DP |
| length    | 'sequence'        | sequence/context parallelism for long windows (64K) |
| embed     | 'fsdp'            | ZeRO-3 style: every weight has an embed dim sharded by fsdp |
| heads     | 'tensor'          | Megatron tensor parallelism for attention |
| kv_heads  | 'tensor'          | keeps K/V next to the query heads that use them |
| mlp       | 'tensor'          | column/row parallel MLP |
| vocab     | 'tensor'          | embedding and LM head split by vocabulary |
| layers    | None              | the scan axis stays whole on every device |
| head_dim  | None              | too small to split |

Flax resolves each array's axes left to right and never reuses a mesh axis within one
array: for an activation [batch, length, embed] the batch takes ('data', 'fsdp') so
embed falls back to replicated, which is exactly what FSDP wants (weights sharded,
activations sharded by batch only).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("head_dim", None),
)

LOGICAL_AXES: tuple[str, ...] = tuple(name for name, _ in DEFAULT_RULES)


def logical_sharding(
    mesh: Mesh, logical_axes: Sequence[str | None], rules: Rules = DEFAULT_RULES
) -> NamedSharding:
    """NamedSharding for one array whose dims carry these logical names."""
    spec = nn.logical_to_mesh_axes(tuple(logical_axes), rules)
    return NamedSharding(mesh, spec)


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Sharding of the [batch, length] int32 arrays of a training batch."""
    return logical_sharding(mesh, ("batch", "length"), rules)


def tree_shardings_from_logical(abstract_boxed_tree, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Map a tree with `nn.Partitioned` boxes (e.g. `jax.eval_shape(model.init, ...)`)
    to a tree of NamedShardings with the unboxed structure. Unannotated leaves replicate.

    Must be called outside `jax.set_mesh` (flax unboxing raised there with jax 0.10.2).
    """
    specs = nn.get_partition_spec(abstract_boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def spec_of(x: jax.Array) -> PartitionSpec:
    """The PartitionSpec of a committed jax.Array (for assertions and plan output)."""
    return x.sharding.spec
