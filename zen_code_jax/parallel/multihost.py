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


def is_primary() -> bool:
    """True on the process that writes shared files (logs, reports, run metadata)."""
    return jax.process_index() == 0


_barrier_count = 0


def barrier(name: str, timeout_s: float = 6 * 3600) -> None:
    """Wait until every process reaches this point (no-op with one process).

    Uses the distributed runtime's coordination-service barrier, which waits up to
    `timeout_s` without holding a device collective open: one process may spend an hour
    evaluating while the others wait here. Every process must call the same barriers in
    the same order (the name gets a sequence number, as barrier ids are single-use).
    """
    global _barrier_count
    if jax.process_count() == 1:
        return
    _barrier_count += 1
    from jax._src import distributed

    client = distributed.global_state.client
    key = f"zen_code_jax:{name}:{_barrier_count}"
    if client is None:  # a runtime started some other way: a device collective instead
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(key)
        return
    client.wait_at_barrier(key, int(timeout_s * 1000))


def preemption_sync_available() -> bool:
    """Whether jax's preemption sync manager runs (multi-process runs by default).

    It catches SIGTERM on any host and picks one step at which every host stops, so a
    checkpoint save never waits on a host that is still training (a per-process signal
    flag would deadlock when only one host is told)."""
    if jax.process_count() == 1:
        return False
    from jax._src import distributed

    return distributed.global_state.preemption_sync_manager is not None


def reached_preemption(step: int) -> bool:
    """True at the agreed step after any host got SIGTERM; call at every step, on every host."""
    from jax.experimental import multihost_utils

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
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def global_from_full(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict:
    """Global arrays from a batch every process holds in full (e.g. fixed held-out batches):
    each process contributes the slices its devices own."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        out[k] = jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
    return out


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
