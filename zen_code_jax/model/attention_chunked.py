"""The `chunked` attention kernel: blockwise online softmax with a recomputing custom VJP.

FlashAttention-2 style, in pure JAX: memory is O(length x block) in both passes, and in
index mode key blocks entirely above the causal diagonal are skipped. Queries use the
grouped layout `[B, KV, block*G, Dh]`, one GEMM per KV head. The masking rule
(`attention_mask`) lives here because this kernel, the `xla` reference in `attention.py`
and the cuDNN fallback all apply it.

Why its own module: `attention.py` dispatches between implementations, and three callers
use this kernel directly (the dispatcher, the cuDNN path's fallback for rows with too
many segments, and `context_parallel.py`'s ring, which calls `_flash` per device).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_NEG = -1e30  # finite "minus infinity": keeps fully masked rows NaN-free


def attention_mask(
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    q_positions: jax.Array,
    kv_positions: jax.Array,
) -> jax.Array:
    """Boolean `[B, S, T]`: same non-zero segment and key position <= query position."""
    same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    valid = (q_segment_ids != 0)[:, :, None]
    causal = kv_positions[:, None, :] <= q_positions[:, :, None]
    return same & valid & causal


# ------------------------------------------------------------------------- chunked


def _pad_to(x: jax.Array, axis: int, multiple: int, value=0) -> jax.Array:
    n = x.shape[axis]
    pad = (-n) % multiple
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def _chunked_attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, *, scale, block_size, causal_skip):
    b, s, h, dh = q.shape
    t, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    bq = min(block_size, s)
    bkv = min(block_size, t)
    if causal_skip:  # index mode: S == T and identical blocks make the diagonal block-aligned
        bq = bkv = min(block_size, s)
    # Grouped layout: q [B, KV, S, G, Dh]; k, v [B, KV, T, Dh].
    qt = q.reshape(b, s, kvh, g, dh).transpose(0, 2, 1, 3, 4)
    kt = k.transpose(0, 2, 1, 3)
    vt = v.transpose(0, 2, 1, 3)
    qt = _pad_to(qt, 2, bq)
    kt = _pad_to(kt, 2, bkv)
    vt = _pad_to(vt, 2, bkv)
    q_seg_p = _pad_to(q_seg, 1, bq)  # padded queries: segment 0 -> see nothing
    q_pos_p = _pad_to(q_pos, 1, bq)
    kv_seg_p = _pad_to(kv_seg, 1, bkv)  # padded keys: segment 0 -> never seen
    kv_pos_p = _pad_to(kv_pos, 1, bkv)
    q_blk = jnp.arange(qt.shape[2] // bq, dtype=jnp.int32)
    out = _flash(
        qt, kt, vt, q_seg_p, kv_seg_p, q_pos_p, kv_pos_p, q_blk, scale, bq, bkv, causal_skip
    )
    out = out[:, :, :s]  # [B, KV, S, G, Dh]
    return out.transpose(0, 2, 1, 3, 4).reshape(b, s, h, dh)


def _block_mask(q_seg_b, kv_seg_b, q_pos_b, kv_pos_b, g):
    """`[B, 1, bq*G, bkv]` mask for one (query block, key block) pair."""
    m = attention_mask(q_seg_b, kv_seg_b, q_pos_b, kv_pos_b)  # [B, bq, bkv]
    bsz, bq, bkv = m.shape
    m = jnp.broadcast_to(m[:, :, None, :], (bsz, bq, g, bkv)).reshape(bsz, bq * g, bkv)
    return m[:, None]


def _slice(x, axis, start, size):
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _n_kv_blocks(diag, nk, causal_skip):
    """Key blocks a query block visits: up to its diagonal block `diag` when skipping."""
    return jnp.minimum(diag + 1, nk) if causal_skip else nk


def _first_q_block(q_blk, j, causal_skip):
    """First query block that sees key block j (q_blk increases)."""
    return jnp.sum(q_blk < j).astype(jnp.int32) if causal_skip else 0


def _scores(qb, kb, scale):
    return jnp.einsum("bkqd,bktd->bkqt", qb, kb, preferred_element_type=jnp.float32) * scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10, 11))
def _flash(qt, kt, vt, q_seg, kv_seg, q_pos, kv_pos, q_blk, scale, bq, bkv, causal_skip):
    """Blockwise attention. `q_blk` (int [nq]): the key block on the causal diagonal of
    each query block (`arange(nq)` in index mode; a shard's global block numbers under
    context parallelism). It must increase, so the query blocks that see key block j are
    a suffix. Only read when `causal_skip`."""
    out, _ = _flash_fwd_impl(
        qt, kt, vt, q_seg, kv_seg, q_pos, kv_pos, q_blk, scale, bq, bkv, causal_skip
    )
    return out


def _flash_fwd_impl(qt, kt, vt, q_seg, kv_seg, q_pos, kv_pos, q_blk, scale, bq, bkv, causal_skip):
    b, kvh, s, g, dh = qt.shape
    nq, nk = s // bq, kt.shape[2] // bkv

    def q_block(_, i):
        qb = _slice(qt, 2, i * bq, bq).reshape(b, kvh, bq * g, dh)
        qs, qp = _slice(q_seg, 1, i * bq, bq), _slice(q_pos, 1, i * bq, bq)

        def kv_step(j, carry):
            m, denom, acc = carry
            kb, vb = _slice(kt, 2, j * bkv, bkv), _slice(vt, 2, j * bkv, bkv)
            mask = _block_mask(
                qs, _slice(kv_seg, 1, j * bkv, bkv), qp, _slice(kv_pos, 1, j * bkv, bkv), g
            )
            sc = jnp.where(mask, _scores(qb, kb, scale), _NEG)
            m_new = jnp.maximum(m, sc.max(-1))
            corr = jnp.exp(m - m_new)
            p = jnp.where(mask, jnp.exp(sc - m_new[..., None]), 0.0)
            denom = denom * corr + p.sum(-1)
            pv = jnp.einsum(
                "bkqt,bktd->bkqd", p.astype(vt.dtype), vb, preferred_element_type=jnp.float32
            )
            return m_new, denom, acc * corr[..., None] + pv

        init = (
            jnp.full((b, kvh, bq * g), _NEG, jnp.float32),
            jnp.zeros((b, kvh, bq * g), jnp.float32),
            jnp.zeros((b, kvh, bq * g, dh), jnp.float32),
        )
        m, denom, acc = jax.lax.fori_loop(0, _n_kv_blocks(q_blk[i], nk, causal_skip), kv_step, init)
        seen = denom > 0
        out = acc / jnp.where(seen, denom, 1.0)[..., None]
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, denom, 1.0)), 0.0)
        return None, (out.astype(qt.dtype), lse)

    _, (out, lse) = jax.lax.scan(q_block, None, jnp.arange(nq))
    # [nq, B, KV, bq*G, Dh] -> [B, KV, S, G, Dh]
    out = out.reshape(nq, b, kvh, bq, g, dh).transpose(1, 2, 0, 3, 4, 5).reshape(qt.shape)
    lse = lse.reshape(nq, b, kvh, bq, g).transpose(1, 2, 0, 3, 4).reshape(b, kvh, s, g)
    return out, lse


def _flash_fwd(qt, kt, vt, q_seg, kv_seg, q_pos, kv_pos, q_blk, scale, bq, bkv, causal_skip):
    out, lse = _flash_fwd_impl(
        qt, kt, vt, q_seg, kv_seg, q_pos, kv_pos, q_blk, scale, bq, bkv, causal_skip
    )
    return out, (qt, kt, vt, q_seg, kv_seg, q_pos, kv_pos, q_blk, out, lse)


def _flash_bwd(scale, bq, bkv, causal_skip, res, dout):
    qt, kt, vt, q_seg, kv_seg, q_pos, kv_pos, q_blk, out, lse = res
    b, kvh, s, g, dh = qt.shape
    nq, nk = s // bq, kt.shape[2] // bkv
    cdt = qt.dtype
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B,KV,S,G]

    def q_rows(x, i, last=None):
        shape = (b, kvh, bq * g) if last is None else (b, kvh, bq * g, last)
        return _slice(x, 2, i * bq, bq).reshape(shape)

    def probs(i, j):
        """Recomputed probabilities and mask for (q block i, kv block j)."""
        qb = q_rows(qt, i, dh)
        kb = _slice(kt, 2, j * bkv, bkv)
        mask = _block_mask(
            _slice(q_seg, 1, i * bq, bq),
            _slice(kv_seg, 1, j * bkv, bkv),
            _slice(q_pos, 1, i * bq, bq),
            _slice(kv_pos, 1, j * bkv, bkv),
            g,
        )
        sc = _scores(qb, kb, scale)
        p = jnp.where(mask, jnp.exp(sc - q_rows(lse, i)[..., None]), 0.0)
        return qb, kb, p

    def dscores(i, j, p):
        vb = _slice(vt, 2, j * bkv, bkv)
        dp = jnp.einsum(
            "bkqd,bktd->bkqt",
            q_rows(dout, i, dh).astype(cdt),
            vb,
            preferred_element_type=jnp.float32,
        )
        return p * (dp - q_rows(delta, i)[..., None])

    # dq: for each query block, accumulate over the key blocks it sees.
    def dq_block(_, i):
        def step(j, dq):
            _, kb, p = probs(i, j)
            ds = dscores(i, j, p)
            return dq + jnp.einsum(
                "bkqt,bktd->bkqd", ds.astype(cdt), kb, preferred_element_type=jnp.float32
            )

        dq = jax.lax.fori_loop(
            0,
            _n_kv_blocks(q_blk[i], nk, causal_skip),
            step,
            jnp.zeros((b, kvh, bq * g, dh), jnp.float32),
        )
        return None, (dq * scale).astype(cdt)

    _, dq = jax.lax.scan(dq_block, None, jnp.arange(nq))
    dq = dq.reshape(nq, b, kvh, bq, g, dh).transpose(1, 2, 0, 3, 4, 5).reshape(qt.shape)

    # dk, dv: for each key block, accumulate over the query blocks that see it.
    def dkv_block(_, j):
        def step(i, carry):
            dk, dv = carry
            qb, _, p = probs(i, j)
            ds = dscores(i, j, p)
            dv = dv + jnp.einsum(
                "bkqt,bkqd->bktd",
                p.astype(cdt),
                q_rows(dout, i, dh).astype(cdt),
                preferred_element_type=jnp.float32,
            )
            dk = dk + jnp.einsum(
                "bkqt,bkqd->bktd", ds.astype(cdt), qb, preferred_element_type=jnp.float32
            )
            return dk, dv

        zeros = jnp.zeros((b, kvh, bkv, dh), jnp.float32)
        start = _first_q_block(q_blk, j, causal_skip)
        dk, dv = jax.lax.fori_loop(start, nq, step, (zeros, zeros))
        return None, ((dk * scale).astype(kt.dtype), dv.astype(vt.dtype))

    _, (dk, dv) = jax.lax.scan(dkv_block, None, jnp.arange(nk))
    dk = dk.transpose(1, 2, 0, 3, 4).reshape(kt.shape)
    dv = dv.transpose(1, 2, 0, 3, 4).reshape(vt.shape)
    return dq, dk, dv, None, None, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)
