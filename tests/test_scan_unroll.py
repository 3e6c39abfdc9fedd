"""`ModelConfig.scan_unroll`: the layer scan unrolled keeps the parameter layout and, on the
tiny model, the bits of the loss, every gradient and decoding. (Not every program: held-out
scoring of cpu_small moved at 1e-9 relative, docs/measurements.md, so it is opt-in.)"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_parallel import make_batch, make_config

from zen_code_jax.checkpoint import CheckpointMismatchError, _check_identity
from zen_code_jax.config import model_config_from
from zen_code_jax.model import Transformer
from zen_code_jax.model.config import get_preset
from zen_code_jax.model.transformer import init_kv_cache
from zen_code_jax.train.objectives import make_loss_fn
from zen_code_jax.train.state import unbox


def _loss_and_grads(unroll: int):
    cfg = make_config()
    with cfg.unlocked():
        cfg.model.scan_unroll = unroll
    mcfg = model_config_from(cfg.model)
    batch = make_batch(mcfg.vocab_size)
    args = (batch.inputs, batch.positions, batch.segment_ids)
    params = unbox(jax.jit(Transformer(mcfg).init)(jax.random.key(1), *args)["params"])
    loss = make_loss_fn(mcfg, cfg)

    def f(p):
        s = loss(p, batch)
        return s["ce_sum"] + 1e-4 * s["z_sum"]

    return params, jax.jit(jax.value_and_grad(f))(params)


def test_unrolled_scan_is_bitwise_equal_with_same_layout():
    p1, (v1, g1) = _loss_and_grads(1)
    p2, (v2, g2) = _loss_and_grads(2)  # tiny has 2 layers: fully unrolled
    assert jax.tree.structure(p1) == jax.tree.structure(p2)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), p1, p2)
    assert float(v1) == float(v2)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), g1, g2)


def test_scan_unroll_out_of_range_names_the_fix():
    cfg = make_config()
    with cfg.unlocked():
        cfg.model.scan_unroll = 3
    with pytest.raises(ValueError, match=r"scan_unroll=3 must be in \[1, num_layers=2\]"):
        model_config_from(cfg.model)


def test_unrolled_scan_decodes_bitwise_equal():
    """Prefill then two KV-cache decode steps: logits and cache the same bits unrolled."""
    outs = []
    for unroll in (1, 2):
        cfg = get_preset("tiny").replace(scan_unroll=unroll)
        toks = np.random.default_rng(5).integers(0, cfg.vocab_size, (2, 9)).astype(np.int32)
        model = Transformer(cfg)
        pos = np.broadcast_to(np.arange(6, dtype=np.int32), (2, 6))
        p = jax.jit(model.init)(jax.random.key(2), toks[:, :6], pos)["params"]
        step = jax.jit(lambda p, t, q, c, model=model: model.apply({"params": p}, t, q, kv_cache=c))
        logits, cache = step(p, toks[:, :6], pos, init_kv_cache(cfg, 2, 16))
        got = [logits]
        for i in (6, 7):
            logits, cache = step(p, toks[:, i : i + 1], np.full((2, 1), i, np.int32), cache)
            got.append(logits)
        outs.append([np.asarray(x) for x in (*got, cache["k"], cache["v"])])
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_identity_ignores_scan_unroll(tmp_path):
    """A checkpoint written rolled (or before the field existed) loads into an unrolled run;
    a real architecture change is still refused."""
    cfg = get_preset("tiny")
    old_model = {k: v for k, v in cfg.to_dict().items() if k != "scan_unroll"}
    saved = {"model": old_model, "tokenizer_fingerprint": "abc"}
    _check_identity(
        saved,
        {"model": cfg.replace(scan_unroll=2).to_dict(), "tokenizer_fingerprint": "abc"},
        tmp_path,
    )
    with pytest.raises(CheckpointMismatchError, match="num_layers"):
        bigger = cfg.replace(num_layers=3, scan_unroll=3).to_dict()
        _check_identity(saved, {"model": bigger, "tokenizer_fingerprint": "abc"}, tmp_path)
