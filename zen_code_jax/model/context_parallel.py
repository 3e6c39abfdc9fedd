"""All-gather context parallelism: attention over a sequence split across devices.

When the logical `length` axis maps to a mesh axis of size N > 1 (the `sequence` axis
of `parallel/rules.py`), leaving attention to XLA's SPMD partitioner gives no control
over what each device computes. Here, inside `jax.shard_map` over the whole mesh:

* queries stay sharded: each device keeps its `S/N` query positions;
* keys, values and the key segment ids are all-gathered over the sequence axis, once
  per layer (the transpose, in the backward pass, is a reduce-scatter of dK, dV);
* each device runs the blockwise kernel of `attention_chunked.py` (`_flash`, custom VJP) on its
  own queries against the gathered keys, skipping key blocks above the causal diagonal
  of *its* query blocks, so no device computes another device's queries.

Load balance (`context_parallel_layout`). With contiguous shards, causal attention gives
the last device N times the key blocks of the first. `dual_chunk` (the default, as in
MaxText's load-balanced layout and Megatron's) cuts the sequence into 2N chunks and
gives device d chunks d and 2N-1-d: every device then visits exactly the same number of
(query block, key block) pairs (`block_schedule`). The decoder applies the layout once
per step to its inputs (tokens, positions, segment ids: `to_layout`) and undoes it on
the final hidden states (`from_layout`), so callers see the original order; each is
two collective-permutes of one activation, against 2 all-gathers per layer.

Masking uses each token's original index (`j <= i`) and segment ids, so packed
documents and padding behave exactly as in `dot_product_attention`'s index mode; RoPE
positions travel with the tokens. The kernel is the pure-JAX `chunked` one whatever
`attention_impl` says: the fused kernels (cuDNN, splash) do not take a shard's global
query offsets.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from zen_code_jax.model import attention_chunked

MODES = ("off", "all_gather")
LAYOUTS = ("dual_chunk", "contiguous")


def _mesh_axis(logical: str) -> Any:
    """Mesh axis (str, tuple or None) the active flax rules give a logical axis."""
    return nn.logical_to_mesh_axes((logical,))[0]


def sequence_axis(mode: str) -> tuple[str, int] | None:
    """(mesh axis, size) when context parallelism applies under the current mesh and
    logical rules, else None (mode 'off', no mesh, or `length` not split)."""
    if mode not in MODES:
        raise ValueError(f"context_parallel={mode!r}; use one of {MODES}.")
    if mode == "off":
        return None
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    axis = _mesh_axis("length")
    if isinstance(axis, tuple):
        if len(axis) != 1:
            raise ValueError(
                f"context parallelism needs `length` on one mesh axis, the rules give {axis}."
            )
        axis = axis[0]
    if axis is None or mesh.shape[axis] == 1:
        return None
    return axis, int(mesh.shape[axis])


def _spec(*logical: str | None) -> P:
    return P(*(None if name is None else _mesh_axis(name) for name in logical))


# ------------------------------------------------------------------------------ layout


def _original_chunks(n: int, layout: str) -> np.ndarray:
    """For each position in device order (device 0's chunks, then device 1's, ...), the
    original chunk it holds; 2 chunks per device."""
    if layout == "contiguous":
        return np.arange(2 * n)
    return np.array([c for d in range(n) for c in (d, 2 * n - 1 - d)])


def layout_permutation(seq_len: int, n: int, layout: str) -> np.ndarray:
    """`perm` with `x_layout = x[:, perm]` (for tests and the schedule)."""
    chunk = seq_len // (2 * n)
    idx = np.arange(seq_len).reshape(2 * n, chunk)
    return idx[_original_chunks(n, layout)].reshape(-1)


def _local_index(d: jax.Array, n: int, s_local: int, layout: str) -> jax.Array:
    """Original (global) index of each of device d's `s_local` positions."""
    if layout == "contiguous":
        return d * s_local + jnp.arange(s_local, dtype=jnp.int32)
    c = s_local // 2
    ar = jnp.arange(c, dtype=jnp.int32)
    return jnp.concatenate([d * c + ar, (2 * n - 1 - d) * c + ar])


def _check_len(seq_len: int, n: int, layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"context_parallel_layout={layout!r}; use one of {LAYOUTS}.")
    if seq_len % (2 * n):
        raise ValueError(
            f"context parallelism over {n} shards needs seq_len divisible by {2 * n} "
            f"(2 chunks per shard), got {seq_len}; pad train.seq_len or change mesh.sequence."
        )


def _permute_local(x: jax.Array, axis: str, n: int, inverse: bool) -> jax.Array:
    """Dual-chunk relayout of a shard's two halves with two collective-permutes.

    Forward: original chunk c (held by device c//2, half c%2) goes to device c (slot 0)
    if c < N, else to device 2N-1-c (slot 1). `inverse` undoes it.
    """
    dest = [c if c < n else 2 * n - 1 - c for c in range(2 * n)]
    perm_even = [(d, dest[2 * d]) for d in range(n)]
    perm_odd = [(d, dest[2 * d + 1]) for d in range(n)]
    d = jax.lax.axis_index(axis)
    even_device = (d % 2) == 0
    h = x.shape[1] // 2
    a, b = x[:, :h], x[:, h:]
    if not inverse:
        ra = jax.lax.ppermute(a, axis, perm_even)  # an even original chunk
        rb = jax.lax.ppermute(b, axis, perm_odd)  # an odd original chunk
        # Device e's slot 0 holds chunk e: even chunk iff e is even.
        first = jnp.where(even_device, ra, rb)
        second = jnp.where(even_device, rb, ra)
        return jnp.concatenate([first, second], axis=1)
    even_chunk = jnp.where(even_device, a, b)
    odd_chunk = jnp.where(even_device, b, a)
    ra = jax.lax.ppermute(even_chunk, axis, [(j, i) for i, j in perm_even])
    rb = jax.lax.ppermute(odd_chunk, axis, [(j, i) for i, j in perm_odd])
    return jnp.concatenate([ra, rb], axis=1)


def _relayout(x: jax.Array, logical: tuple[str | None, ...], mode: str, layout: str, inverse):
    cp = sequence_axis(mode)
    if cp is None or layout == "contiguous":
        return x
    axis, n = cp
    _check_len(x.shape[1], n, layout)
    spec = _spec(*logical)
    fn = jax.shard_map(
        lambda y: _permute_local(y, axis, n, inverse),
        in_specs=(spec,),
        out_specs=spec,
        check_vma=False,
    )
    return fn(x)


def to_layout(x: jax.Array, mode: str, layout: str) -> jax.Array:
    """Reorder `[B, S, ...]` (batch, length, replicated rest) into the balanced layout."""
    logical = ("batch", "length") + (None,) * (x.ndim - 2)
    return _relayout(x, logical, mode, layout, inverse=False)


def from_layout(x: jax.Array, mode: str, layout: str) -> jax.Array:
    """Undo `to_layout`."""
    logical = ("batch", "length") + (None,) * (x.ndim - 2)
    return _relayout(x, logical, mode, layout, inverse=True)


# --------------------------------------------------------------------------- attention


def _block(s_local: int, n: int, block_size: int) -> int:
    chunk = s_local // 2
    b = min(block_size, chunk)
    if chunk % b:
        raise ValueError(
            f"context-parallel attention needs attention_block_size dividing the chunk of "
            f"{chunk} positions per shard half, got {block_size}; use a power of two."
        )
    return b


def q_block_diagonals(d: jax.Array | int, n: int, s_local: int, bq: int, layout: str):
    """Global key-block index on the causal diagonal of each of device d's query blocks
    (increasing): the loop bounds the kernel runs, so also its block schedule."""
    return _local_index(jnp.asarray(d, jnp.int32), n, s_local, layout)[::bq] // bq


def block_schedule(seq_len: int, n: int, block_size: int, layout: str) -> np.ndarray:
    """(query block, key block) pairs each shard's forward pass visits, `[n]`.

    Sums `min(diag + 1, blocks)` over the shard's query blocks, from the same
    `q_block_diagonals` the kernel's loops use. The backward pass visits the same pairs
    twice (dq, then dk/dv), so attention FLOPs per shard are proportional to this.
    """
    _check_len(seq_len, n, layout)
    s_local = seq_len // n
    bq = _block(s_local, n, block_size)
    nk = seq_len // bq
    return np.array(
        [
            int(np.minimum(np.asarray(q_block_diagonals(d, n, s_local, bq, layout)) + 1, nk).sum())
            for d in range(n)
        ]
    )


def _local_attention(q, k, v, seg, *, axis, n, layout, block_size, scale):
    """Per-shard body: local queries against all-gathered keys and values."""
    b, s_local, h, dh = q.shape
    kvh = k.shape[2]
    g = h // kvh
    d = jax.lax.axis_index(axis)
    k_all = jax.lax.all_gather(k, axis, axis=1, tiled=True)
    v_all = jax.lax.all_gather(v, axis, axis=1, tiled=True)
    seg_all = jax.lax.all_gather(seg, axis, axis=1, tiled=True)
    s = k_all.shape[1]
    # Gathered in device order; put keys back in original order (a local copy).
    order = np.argsort(_original_chunks(n, layout))
    if layout != "contiguous":
        chunk = s // (2 * n)

        def orig(x):
            y = x.reshape(b, 2 * n, chunk, *x.shape[2:])
            return jnp.take(y, order, axis=1).reshape(x.shape)

        k_all, v_all, seg_all = orig(k_all), orig(v_all), orig(seg_all)
    bq = _block(s_local, n, block_size)
    q_idx = jnp.broadcast_to(_local_index(d, n, s_local, layout), (b, s_local))
    kv_idx = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    q_blk = q_block_diagonals(d, n, s_local, bq, layout)
    qt = q.reshape(b, s_local, kvh, g, dh).transpose(0, 2, 1, 3, 4)
    kt, vt = k_all.transpose(0, 2, 1, 3), v_all.transpose(0, 2, 1, 3)
    out = attention_chunked._flash(
        qt, kt, vt, seg, seg_all, q_idx, kv_idx, q_blk, scale, bq, bq, True
    )
    return out.transpose(0, 2, 1, 3, 4).reshape(b, s_local, h, dh)


def context_parallel_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array | None,
    *,
    mode: str = "all_gather",
    layout: str = "dual_chunk",
    block_size: int = 512,
    scale: float | None = None,
) -> jax.Array:
    """Causal, segment-aware GQA attention with the sequence split over the mesh.

    q `[B, S, H, Dh]`, k, v `[B, S, KV, Dh]` and segment_ids `[B, S]` (None = one
    segment) are global arrays in `layout` order (see `to_layout`). Returns `[B, S, H,
    Dh]` equal to `dot_product_attention` on the original order. Needs
    `sequence_axis(mode)` to be active (call it first).
    """
    cp = sequence_axis(mode)
    if cp is None:
        raise ValueError("context_parallel_attention needs a mesh with `length` split.")
    axis, n = cp
    b, s, h, dh = q.shape
    _check_len(s, n, layout)
    _block(s // n, n, block_size)
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(dh)
    if segment_ids is None:
        segment_ids = jnp.ones((b, s), jnp.int32)
    q_spec = _spec("batch", "length", "heads", None)
    kv_spec = _spec("batch", "length", "kv_heads", None)
    mesh = jax.sharding.get_abstract_mesh()
    for name, spec, size in (("batch", q_spec[0], b), ("heads", q_spec[2], h)):
        axes = () if spec is None else (spec if isinstance(spec, tuple) else (spec,))
        ways = math.prod(mesh.shape[a] for a in axes)
        if size % ways:
            raise ValueError(
                f"context-parallel attention shards {name} ({size}) over {axes} = {ways} "
                "devices, which does not divide it; change the batch size or mesh."
            )
    fn = jax.shard_map(
        lambda *xs: _local_attention(
            *xs, axis=axis, n=n, layout=layout, block_size=block_size, scale=scale
        ),
        in_specs=(q_spec, kv_spec, kv_spec, P(q_spec[0], q_spec[1])),
        out_specs=q_spec,
        check_vma=False,
    )
    return fn(q, k, v, segment_ids.astype(jnp.int32)).astype(q.dtype)
