"""Causal, segment-aware grouped-query attention behind one function.

`dot_product_attention(q, k, v, ...)` takes `q [B, S, H, Dh]` and `k, v [B, T, KV, Dh]`
(H a multiple of KV) and returns `[B, S, H, Dh]` in `q.dtype`. Which keys a query sees:

* **index mode** (`q_positions` and `kv_positions` both None; needs S == T): query i sees
  key j iff `j <= i` and both carry the same non-zero segment id. This is the training
  path: packed documents never see each other and padding (segment 0) sees nothing.
* **position mode** (both positions given): query at position p sees key slot j iff
  `kv_positions[j] <= p` and the segment ids match and are non-zero. This is the KV-cache
  path, where key slot j holds the token at position j.

A query that sees no key (padding) gets a zero output and zero gradients, identically in
every implementation, so implementations can be compared row for row.

Implementations (`impl`):

* `xla`: the plain reference, materializes `[B, H, S, T]` scores.
* `chunked`: blockwise online softmax (FlashAttention-2 style) in pure JAX with a
  custom VJP that recomputes blocks in the backward pass, so memory is O(length x block)
  in both passes. In index mode it skips key blocks entirely above the causal diagonal.
  Queries use the grouped layout `[B, KV, block*G, Dh]`, one GEMM per KV head. It lives
  in `attention_chunked.py` with the masking rule `attention_mask`.
* `cudnn`: cuDNN flash attention (NVIDIA GPUs, bf16/f16), the kernel behind
  `jax.nn.dot_product_attention(implementation='cudnn')`. The public function takes only
  one length per row (`query_seq_lengths`, shape `[B]`), which cannot express packing, so
  we call its packed ("THD") form in `jax._src.cudnn.fused_attention_stablehlo` (same
  signature in jax 0.10.2 and 0.11.2): per row, the start offset and length of each
  segment (`[B, M+1]`, `[B, M]`, -1 filled), O(S) per row instead of a dense `[B,1,S,S]`
  mask. A row with more than `max_segments` segments falls back to `chunked` at run time.
* `splash`: the Pallas splash-attention kernel (TPUs).
* `auto`: splash on TPU; on GPU cudnn for bf16/f16 *only if* cuDNN was verified to honour
  segments (`cudnn_segments_verified()`), else chunked; elsewhere chunked when the
  sequence is longer than one block and xla otherwise. The fused kernels only implement
  index mode, so position mode (decoding) always resolves to xla/chunked.

Why `auto` needs the verification: MaxText's `cudnn_flash_jax` silently ignored segment
ids (issue #4476), letting packed documents attend to each other, and no run here has yet
checked cuDNN on a GPU. `launch/gpu_check.sh`'s attention stage compares it with `xla` on
packed rows and records `cudnn_segments_ok`; the stages after it run with
`ZEN_CUDNN_SEGMENTS=1` only when that passed. Once a lending has recorded a pass (in
docs/measurements.md), set `CUDNN_SEGMENTS_VERIFIED = True` below.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zen_code_jax.model.attention_chunked import _NEG, _chunked_attention, attention_mask

IMPLEMENTATIONS = ("auto", "xla", "chunked", "cudnn", "splash")

# Whether cuDNN's packed attention was seen honouring segments on a GPU (see the module
# docstring). False until a lending of launch/gpu_check.sh records a pass.
CUDNN_SEGMENTS_VERIFIED = False
CUDNN_SEGMENTS_ENV = "ZEN_CUDNN_SEGMENTS"  # "1"/"0" overrides the constant for one process
CUDNN_MAX_SEGMENTS = 64  # static segments per row of the packed cuDNN call


def cudnn_segments_verified() -> bool:
    """True when `auto` may use cuDNN: the env override if set, else the recorded result."""
    env = os.environ.get(CUDNN_SEGMENTS_ENV, "").strip()
    if env in ("0", "1"):
        return env == "1"
    if env:
        raise ValueError(f"{CUDNN_SEGMENTS_ENV}={env!r}; set it to 1 or 0, or unset it.")
    return CUDNN_SEGMENTS_VERIFIED


def resolve_impl(
    impl: str, *, position_mode: bool, q_len: int, block_size: int, dtype: Any = None
) -> str:
    """Map `impl` (maybe 'auto') to a concrete implementation for this call.

    `dtype` (of q): on GPU, `auto` uses cuDNN only for bfloat16/float16, which is all
    cuDNN flash attention supports, and only once `cudnn_segments_verified()`; otherwise
    it falls back to `chunked`.
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown attention impl {impl!r}. Use one of {IMPLEMENTATIONS} (model.attention_impl)."
        )
    small = q_len <= block_size
    if position_mode:
        # Decoding / KV-cache prefill: arbitrary slot masks, which the fused kernels lack.
        if impl in ("auto", "cudnn", "splash"):
            return "xla" if small else "chunked"
        return impl
    if impl != "auto":
        return impl
    backend = jax.default_backend()
    if backend == "tpu":
        return "splash"
    if backend == "gpu":
        half = dtype is None or jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
        return "cudnn" if half and cudnn_segments_verified() else "chunked"
    return "xla" if small else "chunked"


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    impl: str = "auto",
    block_size: int = 512,
    scale: float | None = None,
) -> jax.Array:
    """Causal GQA attention; see the module docstring for the masking rule and impls.

    Args:
      q: `[B, S, H, Dh]` queries (RoPE already applied).
      k, v: `[B, T, KV, Dh]` keys and values; H must be a multiple of KV.
      q_segment_ids, kv_segment_ids: int `[B, S]` / `[B, T]`; 0 is padding. None = all 1.
      q_positions, kv_positions: int `[B, S]` / `[B, T]` for position mode, or both None.
      impl: 'auto' | 'xla' | 'chunked' | 'cudnn' | 'splash'.
      block_size: query/key block of the chunked implementation.
      scale: logit scale; default `1/sqrt(Dh)`.
    """
    b, s, h, dh = q.shape
    bk, t, kvh, dhk = k.shape
    if v.shape != k.shape or bk != b or dhk != dh:
        raise ValueError(
            f"Attention shapes disagree: q {q.shape}, k {k.shape}, v {v.shape}; "
            "expected q [B,S,H,Dh] and k, v [B,T,KV,Dh] with the same B and Dh."
        )
    if h % kvh != 0:
        raise ValueError(
            f"{h} query heads is not a multiple of {kvh} KV heads; pick num_kv_heads "
            "dividing num_heads."
        )
    if (q_positions is None) != (kv_positions is None):
        raise ValueError(
            "Pass both q_positions and kv_positions (position mode, KV cache) or neither "
            "(index mode, training)."
        )
    position_mode = q_positions is not None
    if not position_mode and s != t:
        raise ValueError(
            f"Index-mode attention needs equal query and key lengths, got {s} and {t}; "
            "pass q_positions/kv_positions to attend to a longer key cache."
        )
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}.")
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(dh)
    if q_segment_ids is None:
        q_segment_ids = jnp.ones((b, s), jnp.int32)
    if kv_segment_ids is None:
        kv_segment_ids = jnp.ones((b, t), jnp.int32)
    if not position_mode:
        q_positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
        kv_positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    q_segment_ids = q_segment_ids.astype(jnp.int32)
    kv_segment_ids = kv_segment_ids.astype(jnp.int32)
    q_positions = q_positions.astype(jnp.int32)
    kv_positions = kv_positions.astype(jnp.int32)

    chosen = resolve_impl(
        impl, position_mode=position_mode, q_len=s, block_size=block_size, dtype=q.dtype
    )
    if chosen == "xla":
        return _xla_attention(
            q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, scale
        )
    if chosen == "chunked":
        return _chunked_attention(
            q,
            k,
            v,
            q_segment_ids,
            kv_segment_ids,
            q_positions,
            kv_positions,
            scale=scale,
            block_size=block_size,
            causal_skip=not position_mode,
        )
    if chosen == "cudnn":
        return _cudnn_attention(
            q, k, v, q_segment_ids, kv_segment_ids, scale=scale, block_size=block_size
        )
    if chosen == "splash":
        return _splash_attention(q, k, v, q_segment_ids, kv_segment_ids, scale, block_size)
    raise AssertionError(chosen)


# ----------------------------------------------------------------------------- xla


def _xla_attention(q, k, v, q_seg, kv_seg, q_pos, kv_pos, scale):
    b, s, h, dh = q.shape
    t, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    # Grouped layout [B, KV, S*G, Dh]: one plain batched GEMM per KV head (2.5x faster on
    # XLA:CPU than contracting a 5-D einsum with interleaved batch dims).
    qt = q.reshape(b, s, kvh, g, dh).transpose(0, 2, 1, 3, 4).reshape(b, kvh, s * g, dh)
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkqd,bktd->bkqt", qt, kt, preferred_element_type=jnp.float32) * scale
    mask = attention_mask(q_seg, kv_seg, q_pos, kv_pos)  # [B, S, T]
    mask = jnp.broadcast_to(mask[:, :, None, :], (b, s, g, t)).reshape(b, 1, s * g, t)
    scores = jnp.where(mask, scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(mask, probs, 0.0)
    out = jnp.einsum(
        "bkqt,bktd->bkqd", probs.astype(v.dtype), vt, preferred_element_type=jnp.float32
    )
    out = out.reshape(b, kvh, s, g, dh).transpose(0, 2, 1, 3, 4).reshape(b, s, h, dh)
    return out.astype(q.dtype)


# ---------------------------------------------------------------- fused kernels


def segment_offsets(seg: jax.Array, max_segments: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Packed-row layout of `seg [B, S]` for cuDNN: `(offsets [B, M+1], lengths [B, M], n)`.

    A segment is a maximal run of one non-zero id (0 = padding, in no segment). Row b's
    runs, left to right, get `offsets[b, m]` (first index) and `lengths[b, m]`; unused
    entries are -1, and `offsets[b, n_b]` is the end of the last run (cuDNN's M+1-th
    offset). `n [B]` counts the runs, so callers can detect rows with more than M.
    O(S) per row: no [S, S] mask is formed.
    """
    b, s = seg.shape
    prev = jnp.pad(seg[:, :-1], ((0, 0), (1, 0)))
    nxt = jnp.pad(seg[:, 1:], ((0, 0), (0, 1)))
    starts = (seg != 0) & (seg != prev)
    ends = (seg != 0) & (seg != nxt)
    idx = jnp.arange(s, dtype=jnp.int32)

    def first_m(flags):  # indices of the first M set flags per row, -1 filled
        key = jnp.where(flags, idx, s)
        got = jnp.sort(key, axis=-1)[:, :max_segments] if max_segments < s else jnp.sort(key)
        if got.shape[1] < max_segments:
            got = jnp.pad(got, ((0, 0), (0, max_segments - got.shape[1])), constant_values=s)
        return jnp.where(got < s, got, -1).astype(jnp.int32)

    st, en = first_m(starts), first_m(ends)
    used = st >= 0
    lengths = jnp.where(used, en - st + 1, -1).astype(jnp.int32)
    n = starts.sum(-1).astype(jnp.int32)
    last_end = jnp.max(jnp.where(used, en + 1, -1), axis=-1, keepdims=True)
    offsets = jnp.concatenate([st, jnp.full((b, 1), -1, jnp.int32)], axis=-1)
    # The M+1-th offset closes the last used segment: place it right after the used ones.
    m_used = jnp.minimum(n, max_segments)[:, None]
    col = jnp.arange(max_segments + 1, dtype=jnp.int32)[None, :]
    offsets = jnp.where(col == m_used, last_end, offsets).astype(jnp.int32)
    return offsets, lengths, n


def _cudnn_packed_call(q, k, v, offsets, lengths, scale):
    try:
        from jax._src.cudnn import fused_attention_stablehlo as fa
    except ImportError as e:  # private module: name the jax versions we know it in
        raise RuntimeError(
            "attention impl 'cudnn' needs jax._src.cudnn.fused_attention_stablehlo (present "
            f"in jax 0.10.2 and 0.11.2), which this jax {jax.__version__} lacks; set "
            "model.attention_impl='chunked'."
        ) from e
    return fa.dot_product_attention(
        q,
        k,
        v,
        None,
        None,
        lengths,
        lengths,
        offsets,
        offsets,
        scale=scale,
        mask_type=fa.MaskType.PADDING_CAUSAL,
        qkv_layout="BTNH",
    )


def _cudnn_attention(
    q, k, v, q_seg, kv_seg, *, scale, block_size=512, max_segments=CUDNN_MAX_SEGMENTS
):
    if jax.default_backend() != "gpu":
        raise RuntimeError(
            "attention impl 'cudnn' needs an NVIDIA GPU (jax[cuda12]), but the JAX backend "
            f"is {jax.default_backend()!r}. Set model.attention_impl='auto' or 'chunked'."
        )
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(
            f"attention impl 'cudnn' needs bfloat16 or float16 inputs, got {q.dtype}; set "
            "model.dtype='bfloat16' or model.attention_impl='chunked'."
        )
    # Index mode: queries and keys share the row, so one segment table serves both; causal
    # masking is per segment (each run is its own sequence in cuDNN's packed layout).
    m = min(max_segments, q.shape[1])
    offsets, lengths, n = segment_offsets(q_seg, m)

    def fused(q, k, v):
        out = _cudnn_packed_call(q, k, v, offsets, lengths, scale)
        return jnp.where((q_seg != 0)[:, :, None, None], out, 0).astype(q.dtype)

    def fallback(q, k, v):  # a row packs more than M segments: exact, slower
        pos = jnp.broadcast_to(jnp.arange(q.shape[1], dtype=jnp.int32), q_seg.shape)
        return _chunked_attention(
            q,
            k,
            v,
            q_seg,
            kv_seg,
            pos,
            pos,
            scale=scale,
            block_size=block_size,
            causal_skip=True,
        )

    return jax.lax.cond(jnp.all(n <= m), fused, fallback, q, k, v)


def _splash_attention(q, k, v, q_seg, kv_seg, scale, block_size, interpret=False):
    if jax.default_backend() != "tpu" and not interpret:
        raise RuntimeError(
            "attention impl 'splash' needs a TPU (jax[tpu]), but the JAX backend is "
            f"{jax.default_backend()!r}. Set model.attention_impl='auto' or 'chunked'."
        )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as sk,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as sm,
    )

    b, s, h, dh = q.shape
    kvh = k.shape[2]
    g = h // kvh
    blk = min(block_size, s)
    mask = sm.MultiHeadMask([sm.CausalMask((s, s)) for _ in range(g)])
    kernel = sk.make_splash_mqa(
        mask,
        block_sizes=sk.BlockSizes(
            block_q=blk,
            block_kv=blk,
            block_kv_compute=blk,
            block_q_dkv=blk,
            block_kv_dkv=blk,
            block_kv_dkv_compute=blk,
            block_q_dq=blk,
            block_kv_dq=blk,
        ),
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )
    # Splash wants per-example [heads, S, Dh]; one MQA call per KV head.
    qh = (q * jnp.asarray(scale, q.dtype)).reshape(b, s, kvh, g, dh).transpose(0, 2, 3, 1, 4)
    kh = k.transpose(0, 2, 1, 3)
    vh = v.transpose(0, 2, 1, 3)

    def one(qx, kx, vx, qs, ks):
        return kernel(qx, kx, vx, segment_ids=sk.SegmentIds(q=qs, kv=ks))

    per_head = jax.vmap(one, in_axes=(0, 0, 0, None, None))  # over KV heads
    out = jax.vmap(per_head)(qh, kh, vh, q_seg, kv_seg)  # [B, KV, G, S, Dh]
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, s, h, dh)
    return jnp.where((q_seg != 0)[:, :, None, None], out, 0).astype(q.dtype)


def reference_attention_numpy(q, k, v, q_seg, kv_seg, q_pos, kv_pos, scale=None):
    """Brute-force float64 numpy attention, loops over heads; for tests only."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, s, h, dh = q.shape
    kvh = k.shape[2]
    g = h // kvh
    scale = scale if scale is not None else 1.0 / math.sqrt(dh)
    q_seg, kv_seg, q_pos, kv_pos = (np.asarray(x) for x in (q_seg, kv_seg, q_pos, kv_pos))
    mask = (
        (q_seg[:, :, None] == kv_seg[:, None, :])
        & (q_seg != 0)[:, :, None]
        & (kv_pos[:, None, :] <= q_pos[:, :, None])
    )
    out = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            sc = q[bi, :, hi] @ k[bi, :, hi // g].T * scale
            for si in range(s):
                m = mask[bi, si]
                if not m.any():
                    continue
                w = np.exp(sc[si, m] - sc[si, m].max())
                out[bi, si, hi] = (w / w.sum()) @ v[bi, m, hi // g]
    return out
