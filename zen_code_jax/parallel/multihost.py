"""Multi-host start-up and global batches.

`initialize()` is the one call every launcher (`launch/`) makes before touching devices.
It reads, in order:
  1. explicit env: ZEN_COORDINATOR_ADDRESS (host:port), ZEN_NUM_PROCESSES, ZEN_PROCESS_ID
     (and optional ZEN_LOCAL_DEVICE_IDS, comma-separated) — any cluster, and local
     multi-process CPU tests;
  2. a cluster jax detects by itself: TPU pod slices (metadata server), SLURM
     (SLURM_JOB_ID + srun), Open MPI, Kubernetes — `jax.distributed.initialize()` with
     no arguments;
  3. otherwise a single process: nothing to do.
Each process then feeds only its own rows of the global batch (`make_global_batch`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

log = logging.getLogger(__name__)

_initialized = False


def _auto_cluster_detected() -> bool:
    env = os.environ
    return bool(
        env.get("SLURM_JOB_ID")
        and env.get("SLURM_NTASKS", "1") != "1"
        or env.get("OMPI_COMM_WORLD_SIZE", "1") != "1"
        or env.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
        or env.get("ZEN_AUTO_DISTRIBUTED") == "1"
    )


def initialize(env: Mapping[str, str] | None = None) -> bool:
    """Call `jax.distributed.initialize` if this is a multi-process run.

    Returns True when distributed mode was initialized (now or earlier), False for a
    single-process run. Must run before any other jax call that touches devices.
    """
    global _initialized
    if _initialized:
        return True
    env = os.environ if env is None else env
    addr = env.get("ZEN_COORDINATOR_ADDRESS")
    if addr:
        missing = [k for k in ("ZEN_NUM_PROCESSES", "ZEN_PROCESS_ID") if k not in env]
        if missing:
            raise ValueError(
                f"ZEN_COORDINATOR_ADDRESS={addr!r} is set but {missing} are not: set all of "
                "ZEN_COORDINATOR_ADDRESS (host:port), ZEN_NUM_PROCESSES and ZEN_PROCESS_ID "
                "on every process (see launch/README.md)."
            )
        kwargs = dict(
            coordinator_address=addr,
            num_processes=int(env["ZEN_NUM_PROCESSES"]),
            process_id=int(env["ZEN_PROCESS_ID"]),
        )
        if env.get("ZEN_LOCAL_DEVICE_IDS"):
            kwargs["local_device_ids"] = [int(i) for i in env["ZEN_LOCAL_DEVICE_IDS"].split(",")]
        jax.distributed.initialize(**kwargs)
    elif _auto_cluster_detected():
        jax.distributed.initialize()
    else:
        return False
    _initialized = True
    log.info(
        "jax.distributed: process %d/%d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def is_primary() -> bool:
    """True on the process that writes shared files (logs, reports, run metadata)."""
    return jax.process_index() == 0


_barrier_count = 0


def barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op with one process).

    A device collective through jax's public `sync_global_devices` (the coordination
    service's own barrier, which waits without a collective, is not public API). It waits
    as long as the backend's collective timeout allows, so keep the work one process does
    while the others wait (process-0 evaluation at ablation scale) within minutes. Every
    process must call the same barriers in the same order.
    """
    global _barrier_count
    if jax.process_count() == 1:
        return
    _barrier_count += 1
    multihost_utils.sync_global_devices(f"zen_code_jax:{name}:{_barrier_count}")


def preemption_sync_available() -> bool:
    """Whether jax's preemption sync manager runs (multi-process runs by default).

    It catches SIGTERM on any host and picks one step at which every host stops, so a
    checkpoint save never waits on a host that is still training (a per-process signal
    flag would deadlock when only one host is told)."""
    # jax.distributed.initialize starts the manager with the runtime (the default), and
    # only a multi-process runtime needs an agreed step.
    return jax.process_count() > 1 and jax.distributed.is_initialized()


def reached_preemption(step: int) -> bool:
    """True at the agreed step after any host got SIGTERM; call at every step, on every host."""
    return bool(multihost_utils.reached_preemption_sync_point(int(step)))


def primary_first(fn, *args, **kwargs):
    """Run `fn` on process 0, then on the others (after a barrier).

    For idempotent, cached work on a shared filesystem (corpus preparation): process 0
    builds, the others then find the result cached. On per-host disks each host builds
    its own (deterministic) copy.
    """
    if jax.process_count() == 1:
        return fn(*args, **kwargs)
    out = fn(*args, **kwargs) if is_primary() else None
    barrier(f"primary_first:{getattr(fn, '__name__', 'fn')}")
    return out if is_primary() else fn(*args, **kwargs)


def host_local_copy(tree):
    """A full numpy copy of every (possibly cross-process sharded) array on this host.

    A collective: every process must call it. For evaluation of models that fit one host
    (the ablation scales); with one process the tree is returned as it is.
    """
    if jax.process_count() == 1:
        return tree
    return multihost_utils.process_allgather(tree, tiled=True)


def global_from_full(batch: Any, sharding: NamedSharding) -> Any:
    """Global arrays from a batch (any pytree of arrays) every process holds in full (e.g.
    fixed held-out batches): each process contributes the slices its devices own."""

    def one(v: Any) -> jax.Array:
        v = np.asarray(v)
        return jax.make_array_from_callback(v.shape, sharding, lambda idx: v[idx])

    return jax.tree.map(one, batch)


def process_batch_slice(global_batch_size: int) -> slice:
    """Rows of the global batch this process loads (contiguous, equal per process).

    Matches `make_array_from_process_local_data`, which places each process's rows on its
    own devices when the batch axis is sharded over devices in process order.
    """
    n, i = jax.process_count(), jax.process_index()
    if global_batch_size % n:
        raise ValueError(
            f"global batch {global_batch_size} is not divisible by {n} processes; make "
            "train.global_batch_size a multiple of the process count."
        )
    per = global_batch_size // n
    return slice(i * per, (i + 1) * per)


def make_global_batch(local_batch: Any, sharding: NamedSharding, global_batch_size: int) -> Any:
    """Assemble per-process numpy rows into global jax.Arrays with `sharding`.

    Every leaf of `local_batch` (a `Batch` or any pytree) holds this process's rows
    ([global_batch_size / process_count, S]). With one process this is a sharded
    `device_put`.
    """

    def one(v: Any) -> jax.Array:
        v = np.asarray(v)
        global_shape = (global_batch_size, *v.shape[1:])
        return jax.make_array_from_process_local_data(sharding, v, global_shape)

    return jax.tree.map(one, local_batch)
