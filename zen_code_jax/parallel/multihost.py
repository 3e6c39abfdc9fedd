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


def selftest_losses(multiprocess: bool, steps: int = 2) -> list[float]:
    """Losses of `steps` data-parallel steps of the tiny model on a fixed batch.

    multiprocess=True: a (data=all devices) mesh over every process, each feeding its
    rows through `make_global_batch`. False: one local device, the whole batch. The two
    must agree (tests/test_parallel.py runs the first in 2 processes with Gloo).
    """
    from zen_code_jax.config import base_config, model_config_from, model_group
    from zen_code_jax.parallel.mesh import make_mesh
    from zen_code_jax.parallel.rules import batch_sharding
    from zen_code_jax.train.state import create_train_state
    from zen_code_jax.train.step import make_train_step

    cfg = base_config()
    with cfg.unlocked():
        cfg.model = model_group("tiny")
    cfg.train.seq_len, cfg.train.global_batch_size = 16, 4
    cfg.optimizer.warmup_steps = 0
    mcfg = model_config_from(cfg.model)
    gbs, s = cfg.train.global_batch_size, cfg.train.seq_len
    toks = np.random.default_rng(0).integers(0, mcfg.vocab_size, (gbs, s + 1)).astype(np.int32)
    full = {
        "inputs": toks[:, :-1],
        "targets": toks[:, 1:],
        "segment_ids": np.ones((gbs, s), np.int32),
        "positions": np.tile(np.arange(s, dtype=np.int32), (gbs, 1)),
        "loss_mask": np.ones((gbs, s), np.int32),
    }
    if multiprocess:
        mesh = make_mesh({"data": -1})
        rows = process_batch_slice(gbs)
        batch = make_global_batch({k: v[rows] for k, v in full.items()}, batch_sharding(mesh), gbs)
    else:
        mesh = make_mesh({"data": 1}, devices=jax.local_devices()[:1])
        batch = full
    fast = {"xla_backend_optimization_level": 0}
    state, sh = create_train_state(mcfg, cfg, mesh, jax.random.key(0), compiler_options=fast)
    step = make_train_step(mcfg, cfg, mesh, sh, compiler_options=fast)
    losses = []
    for _ in range(steps):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    return losses


if __name__ == "__main__":
    # launch/local_multiprocess.sh 2 python -m zen_code_jax.parallel.multihost
    import json

    initialize()
    print("LOSSES " + json.dumps(selftest_losses(multiprocess=True)), flush=True)
