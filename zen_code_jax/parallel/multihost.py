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

import jax
import numpy as np
from jax.sharding import NamedSharding

log = logging.getLogger(__name__)

_initialized = False


def _auto_cluster_detected() -> bool:
    env = os.environ
    return bool(
        env.get("SLURM_JOB_ID") and env.get("SLURM_NTASKS", "1") != "1"
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


def make_global_batch(
    local_batch: Mapping[str, np.ndarray], sharding: NamedSharding, global_batch_size: int
) -> dict[str, jax.Array]:
    """Assemble per-process numpy rows into global jax.Arrays with `sharding`.

    `local_batch[k]` holds this process's rows ([global_batch_size / process_count, S]).
    With one process this is a sharded `device_put`.
    """
    out = {}
    for k, v in local_batch.items():
        v = np.asarray(v)
        global_shape = (global_batch_size, *v.shape[1:])
        out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
    return out
