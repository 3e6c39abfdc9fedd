"""Device mesh from the config's `mesh` group.

The mesh always has the four axes ('data', 'fsdp', 'tensor', 'sequence'), in that order,
so that sharding rules (see `rules.py`) can name any of them whatever the run's layout;
an axis of size 1 costs nothing. One size may be -1: it takes the devices left over.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor", "sequence")


def _as_dict(mesh_cfg: Any) -> dict[str, int]:
    if hasattr(mesh_cfg, "to_dict"):
        mesh_cfg = mesh_cfg.to_dict()
    if not isinstance(mesh_cfg, Mapping):
        raise TypeError(
            f"mesh config must be a mapping like {{'data': -1, 'fsdp': 1, 'tensor': 1, "
            f"'sequence': 1}}, got {type(mesh_cfg).__name__}."
        )
    unknown = sorted(set(mesh_cfg) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"Unknown mesh axis/axes {unknown}. Valid axes: {list(MESH_AXES)}.")
    return {a: int(mesh_cfg.get(a, 1)) for a in MESH_AXES}


def resolve_mesh_shape(mesh_cfg: Any, num_devices: int) -> dict[str, int]:
    """Return {axis: size} with -1 resolved; raise naming the fix if it cannot fit.

    Accepts a ConfigDict or a plain dict; missing axes default to 1.
    """
    sizes = _as_dict(mesh_cfg)
    fill = [a for a, s in sizes.items() if s == -1]
    bad = {a: s for a, s in sizes.items() if s == 0 or s < -1}
    if bad:
        raise ValueError(f"Mesh sizes must be positive or -1 (fill), got {bad}.")
    if len(fill) > 1:
        raise ValueError(
            f"Only one mesh axis may be -1 (fill the rest), got {fill}. Give explicit sizes "
            "to all but one of them."
        )
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if fill:
        if num_devices % fixed != 0:
            raise ValueError(
                f"Mesh {sizes} cannot fill {num_devices} devices: the fixed axes multiply to "
                f"{fixed}, which does not divide {num_devices}. Choose sizes whose product "
                f"divides {num_devices} (divisors: {_divisors(num_devices)})."
            )
        sizes[fill[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(
            f"Mesh {sizes} needs {fixed} devices but {num_devices} are available. Make the "
            f"product of the axis sizes equal {num_devices}, or set one axis to -1 "
            "(e.g. mesh.data=-1) to fill the remaining devices."
        )
    return sizes


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Build a Mesh with axes ('data', 'fsdp', 'tensor', 'sequence') from the config.

    With `devices=None` all devices are used and `jax.make_mesh` picks a topology-aware
    device order (ICI rings on TPU, NVLink islands on GPU); with explicit devices they are
    laid out in the order given. Axis types are `Auto` so that `jax.set_mesh(mesh)` plus
    logical constraints (not `with mesh:`, which silently ignores them) drive sharding.
    """
    devs = list(jax.devices()) if devices is None else list(devices)
    sizes = resolve_mesh_shape(mesh_cfg, len(devs))
    shape = tuple(sizes[a] for a in MESH_AXES)
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if devices is None:
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types)
    return Mesh(np.asarray(devs, dtype=object).reshape(shape), MESH_AXES, axis_types=axis_types)


def mesh_shape_str(mesh: Mesh) -> str:
    """'data=2 fsdp=2 tensor=2 sequence=1' — for logs and plan output."""
    return " ".join(f"{a}={mesh.shape[a]}" for a in mesh.axis_names)
