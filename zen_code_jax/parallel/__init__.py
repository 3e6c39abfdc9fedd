"""Mesh from config, logical-axis rules, shardings and multi-host start-up."""

from zen_code_jax.parallel.mesh import MESH_AXES, make_mesh, resolve_mesh_shape
from zen_code_jax.parallel.rules import DEFAULT_RULES, batch_sharding, logical_sharding

__all__ = [
    "DEFAULT_RULES",
    "MESH_AXES",
    "batch_sharding",
    "logical_sharding",
    "make_mesh",
    "resolve_mesh_shape",
]
