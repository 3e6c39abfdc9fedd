"""All-gather context parallelism (model/context_parallel.py) on 8 simulated CPU devices.

Outputs and gradients equal unsharded attention (the `xla` reference and a float64 numpy
brute force) on packed rows with padding, in both layouts; the lowered program carries
the K/V all-gather; and the kernel's block schedule at the 14B 64K shape gives every
device total/devices attention FLOPs (dual_chunk), which the contiguous layout does not.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from zen_code_jax.model import context_parallel as cp
from zen_code_jax.model.attention import dot_product_attention, reference_attention_numpy
from zen_code_jax.model.config import get_preset
from zen_code_jax.parallel import DEFAULT_RULES, make_mesh

B, S, H, KV, DH = 2, 64, 4, 2, 8


def packed_inputs(seed: int = 0):
    """Row 0: three documents then padding; row 1: two documents, no padding."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, S, H, DH)).astype(np.float32)
    k = rng.standard_normal((B, S, KV, DH)).astype(np.float32)
    v = rng.standard_normal((B, S, KV, DH)).astype(np.float32)
    seg = np.zeros((B, S), np.int32)
    seg[0, :13], seg[0, 13:30], seg[0, 30:57] = 1, 2, 3  # 57.. padding
    seg[1, :40], seg[1, 40:] = 1, 2
    return q, k, v, seg


def sharded_attention(mesh, layout, block_size=4):
    """f(q, k, v, seg) in original order: relayout, context-parallel attention, back."""

    def f(q, k, v, seg):
        to = lambda x: cp.to_layout(x, "all_gather", layout)  # noqa: E731
        out = cp.context_parallel_attention(
            to(q), to(k), to(v), to(seg), layout=layout, block_size=block_size
        )
        return cp.from_layout(out, "all_gather", layout)

    def run(fn, *args):
        with jax.set_mesh(mesh), nn.logical_axis_rules(list(DEFAULT_RULES)):
            return jax.jit(fn)(*args)

    return f, run


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 2, "sequence": 4})


@pytest.mark.parametrize("layout", cp.LAYOUTS)
def test_outputs_and_gradients_equal_unsharded(mesh, layout):
    q, k, v, seg = packed_inputs()
    f, run = sharded_attention(mesh, layout)
    out = np.asarray(run(f, q, k, v, seg))
    ref = reference_attention_numpy(q, k, v, seg, seg, *(np.tile(np.arange(S), (B, 1)),) * 2)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6)
    assert np.all(out[0, 57:] == 0)  # padding sees nothing

    w = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)

    def loss_cp(q, k, v):
        return jnp.sum(f(q, k, v, seg) * w)

    def loss_ref(q, k, v):
        o = dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, impl="xla")
        return jnp.sum(o * w)

    got = run(jax.grad(loss_cp, argnums=(0, 1, 2)), q, k, v)
    want = jax.jit(jax.grad(loss_ref, argnums=(0, 1, 2)))(q, k, v)
    for name, a, b in zip("qkv", got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5, err_msg=name)


def test_layout_round_trip_and_permutation(mesh):
    x = np.arange(B * S, dtype=np.int32).reshape(B, S)
    perm = cp.layout_permutation(S, 4, "dual_chunk")
    assert sorted(perm) == list(range(S)) and not np.array_equal(perm, np.arange(S))

    def both(x):
        y = cp.to_layout(x, "all_gather", "dual_chunk")
        return y, cp.from_layout(y, "all_gather", "dual_chunk")

    with jax.set_mesh(mesh), nn.logical_axis_rules(list(DEFAULT_RULES)):
        xs = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"), "sequence")))
        y, back = jax.jit(both)(xs)
    np.testing.assert_array_equal(np.asarray(y), x[:, perm])
    np.testing.assert_array_equal(np.asarray(back), x)


def test_lowered_program_all_gathers_kv(mesh):
    q, k, v, seg = packed_inputs()
    f, _ = sharded_attention(mesh, "dual_chunk")
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(DEFAULT_RULES)):
        text = jax.jit(f).lower(q, k, v, seg).as_text()
    assert text.count("all_gather") >= 3  # k, v, key segment ids
    assert "collective_permute" in text  # the dual-chunk relayout


def test_no_split_means_no_context_parallelism():
    assert cp.sequence_axis("all_gather") is None  # no mesh
    with jax.set_mesh(make_mesh({"data": 8})), nn.logical_axis_rules(list(DEFAULT_RULES)):
        assert cp.sequence_axis("all_gather") is None
    with jax.set_mesh(make_mesh({"data": 2, "sequence": 4})):
        with nn.logical_axis_rules(list(DEFAULT_RULES)):
            assert cp.sequence_axis("all_gather") == ("sequence", 4)
            assert cp.sequence_axis("off") is None


def test_bad_lengths_name_the_fix(mesh):
    with pytest.raises(ValueError, match="divisible by 8"):
        cp.block_schedule(60, 4, 4, "dual_chunk")
    with pytest.raises(ValueError, match="attention_block_size"):
        cp.block_schedule(96, 4, 8, "dual_chunk")  # chunk 12 not a multiple of 8


def _device_diagonals(n: int, s_local: int, bq: int, layout: str) -> np.ndarray:
    """Each device's query-block diagonals, computed on the devices from axis_index, as
    the kernel does inside its shard_map."""
    mesh = make_mesh({"sequence": n}, devices=jax.devices()[:n])

    def body(_):
        d = jax.lax.axis_index("sequence")
        return cp.q_block_diagonals(d, n, s_local, bq, layout)[None]

    fn = jax.shard_map(body, mesh=mesh, in_specs=P("sequence"), out_specs=P("sequence"))
    return np.asarray(jax.jit(fn)(jnp.zeros((n,), jnp.int32)))


@pytest.mark.parametrize("layout, balanced", [("dual_chunk", True), ("contiguous", False)])
def test_64k_attention_flops_per_device_are_total_over_devices(layout, balanced):
    """14B at 64K over sequence=8, block 512: the forward pass of each device's kernel
    visits `block_schedule` (query block, key block) pairs of 4*bq*bkv*H*Dh FLOPs each
    (QK^T and PV; the backward pass repeats the same pairs twice). Compared with the
    unsharded kernel's causal schedule over the whole sequence, divided by 8."""
    cfg = get_preset("zen_code_14b")
    seq, n, blk = 65_536, 8, cfg.attention_block_size
    nb = seq // blk
    diags = _device_diagonals(n, seq // n, blk, layout)
    # Every query block belongs to exactly one device: no device recomputes another's.
    assert sorted(diags.reshape(-1).tolist()) == list(range(nb))
    sched = cp.block_schedule(seq, n, blk, layout)
    np.testing.assert_array_equal(sched, np.minimum(diags + 1, nb).sum(axis=1))
    pair_flops = 4 * blk * blk * cfg.num_heads * cfg.resolved_head_dim
    total = nb * (nb + 1) // 2 * pair_flops  # unsharded causal kernel, all queries
    per_device = sched * pair_flops
    assert per_device.sum() == total
    spread = np.abs(per_device / (total / n) - 1).max()
    if balanced:
        assert spread < 0.10, per_device
    else:
        assert spread > 0.5, per_device  # the imbalance the dual-chunk layout removes
