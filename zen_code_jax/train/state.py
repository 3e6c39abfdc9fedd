"""Train state created directly in its sharded layout.

The state is a typed `TrainState` (a `flax.struct` dataclass, so a pytree that Orbax
checkpoints and jit passes like a dict) of unboxed arrays. Its shardings come from the
model's logical annotations: `jax.eval_shape` of the boxed init gives
`nn.LogicallyPartitioned` leaves, `nn.get_partition_spec` turns them into logical
PartitionSpecs and `nn.logical_to_mesh_sharding` maps those through `DEFAULT_RULES`.
The real init then runs under `jax.jit(out_shardings=...)`, so every device creates
only its own shard; nothing is ever gathered on one host.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct
from flax.core import meta
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from zen_code_jax.model.config import ModelConfig
from zen_code_jax.model.params import AUX_PARAMS_KEY
from zen_code_jax.model.transformer import Transformer
from zen_code_jax.parallel.rules import DEFAULT_RULES, Rules
from zen_code_jax.train.objectives import auxiliary_init
from zen_code_jax.train.optimizer import make_optimizer

AUX_FOLD = 0x415558  # fold_in constant of the objective heads' init key; the model's is `rng`


@struct.dataclass
class TrainState:
    """What one optimizer step reads and writes: the update count, params, AdamW state."""

    step: Any
    params: Any
    opt_state: Any


def unbox(tree: Any) -> Any:
    """Strip flax partitioning boxes without applying sharding constraints.

    (`nn.unbox` applies constraints with whatever mesh is active, which raised a
    TypeError under `jax.set_mesh` on abstract values; placement comes from jit
    out_shardings instead.)
    """
    return jax.tree_util.tree_map(
        lambda x: x.unbox(apply_constraint=False) if isinstance(x, meta.AxisMetadata) else x,
        tree,
        is_leaf=lambda x: isinstance(x, meta.AxisMetadata),
    )


def _init_inputs(model_cfg: ModelConfig, mesh: Mesh | None, seq_len: int):
    """Smallest dummy batch whose shape divides the mesh (rows = data*fsdp)."""
    rows = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    length = seq_len
    tokens = jnp.zeros((rows, length), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (rows, length))
    segment_ids = jnp.ones((rows, length), jnp.int32)
    return tokens, positions, segment_ids


def _boxed_init_fn(model_cfg: ModelConfig, config: Any, mesh: Mesh | None):
    model = Transformer(model_cfg)
    tx, _ = make_optimizer(config)
    seq_len = int(config.train.seq_len)
    aux_init = auxiliary_init(model_cfg, config)

    def init(rng: jax.Array) -> TrainState:
        variables = model.init(rng, *_init_inputs(model_cfg, mesh, seq_len))
        params = variables["params"]
        if aux_init is not None:  # an objective's heads (HLP), from their own key
            params = {**params, AUX_PARAMS_KEY: aux_init(jax.random.fold_in(rng, AUX_FOLD))}
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            # tx.init maps over the boxes, so Adam moments inherit the params' axes.
            opt_state=tx.init(params),
        )

    return init


def abstract_train_state(
    model_cfg: ModelConfig, config: Any, mesh: Mesh | None = None
) -> TrainState:
    """Shapes/dtypes of the (boxed) state without allocating anything."""
    init = _boxed_init_fn(model_cfg, config, mesh)
    return jax.eval_shape(init, jax.random.key(0))


def state_shardings_from_abstract(
    abstract_boxed: TrainState, mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> TrainState:
    """NamedSharding tree (unboxed structure) for a boxed abstract state."""
    specs = nn.get_partition_spec(abstract_boxed)
    return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def train_state_shardings(
    model_cfg: ModelConfig, config: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> tuple[TrainState, TrainState]:
    """(abstract unboxed state, its NamedShardings) — what the plan and the step need."""
    boxed = abstract_train_state(model_cfg, config, mesh)
    return unbox(boxed), state_shardings_from_abstract(boxed, mesh, rules)


def create_train_state(
    model_cfg: ModelConfig,
    config: Any,
    mesh: Mesh,
    rng: jax.Array,
    rules: Rules = DEFAULT_RULES,
    compiler_options: dict[str, Any] | None = None,
) -> tuple[TrainState, TrainState]:
    """Initialize params + AdamW state sharded over `mesh`; returns (state, shardings).

    Deterministic: the same `rng` gives the same parameters on any mesh.
    """
    _, shardings = train_state_shardings(model_cfg, config, mesh, rules)
    boxed_init = _boxed_init_fn(model_cfg, config, mesh)

    def init(key: jax.Array) -> TrainState:
        return unbox(boxed_init(key))

    key_sharding = NamedSharding(mesh, PartitionSpec())
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
        state = jax.jit(
            init,
            in_shardings=key_sharding,
            out_shardings=shardings,
            compiler_options=compiler_options,
        )(rng)
    return state, shardings


def count_params(params: Any) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
