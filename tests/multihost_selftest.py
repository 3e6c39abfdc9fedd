"""A data-parallel train step of the tiny model, for the two-process test (test_parallel).

    launch/local_multiprocess.sh 2 python tests/multihost_selftest.py

prints `LOSSES [...]` per process; `selftest_losses(multiprocess=False)` gives the
one-device reference. Test harness code lives here, not in the library.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zen_code_jax.config import base_config, model_config_from, model_group  # noqa: E402
from zen_code_jax.data.batch import Batch  # noqa: E402
from zen_code_jax.parallel import multihost  # noqa: E402
from zen_code_jax.parallel.mesh import make_mesh  # noqa: E402
from zen_code_jax.parallel.rules import batch_sharding  # noqa: E402
from zen_code_jax.train.state import create_train_state  # noqa: E402
from zen_code_jax.train.step import make_train_step  # noqa: E402


def selftest_losses(multiprocess: bool, steps: int = 2) -> list[float]:
    """Losses of `steps` data-parallel steps on a fixed batch.

    multiprocess=True: a (data=all devices) mesh over every process, each feeding its rows
    through `make_global_batch`. False: one local device, the whole batch.
    """
    cfg = base_config()
    with cfg.unlocked():
        cfg.model = model_group("tiny")
    cfg.train.seq_len, cfg.train.global_batch_size = 16, 4
    cfg.optimizer.warmup_steps = 0
    mcfg = model_config_from(cfg.model)
    gbs, s = cfg.train.global_batch_size, cfg.train.seq_len
    toks = np.random.default_rng(0).integers(0, mcfg.vocab_size, (gbs, s + 1)).astype(np.int32)
    full = Batch(
        inputs=toks[:, :-1],
        targets=toks[:, 1:],
        segment_ids=np.ones((gbs, s), np.int32),
        positions=np.tile(np.arange(s, dtype=np.int32), (gbs, 1)),
        loss_mask=np.ones((gbs, s), np.int32),
    )
    if multiprocess:
        mesh = make_mesh({"data": -1})
        rows = multihost.process_batch_slice(gbs)
        local = jax.tree.map(lambda v: v[rows], full)
        batch = multihost.make_global_batch(local, batch_sharding(mesh), gbs)
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
    multihost.initialize()
    print("LOSSES " + json.dumps(selftest_losses(multiprocess=True)), flush=True)
