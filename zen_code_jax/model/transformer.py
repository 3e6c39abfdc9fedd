"""The Qwen2-style decoder (Linen): embedding, N x (RMSNorm, GQA+RoPE, RMSNorm, SwiGLU),
final RMSNorm, LM head.

Interface (shared contract, see docs/model.md):

* `Transformer(cfg).init(rng, tokens, positions, segment_ids)`
* `model.apply({'params': p}, tokens, positions, segment_ids)` -> float32 logits [B, S, V]
* `model.apply(..., return_hidden=True)` -> [B, S, D] after the final norm; logits equal
  `matmul(hidden, lm_head_kernel(params, cfg), cfg.dtype)`.
* `model.apply({'params': p}, tokens, positions, kv_cache=cache)` -> (logits, new_cache);
  token t of row b is written to cache slot `positions[b, t]` and a query at position p
  attends to slots 0..p of its row. A row's real tokens in one call sit at consecutive
  positions (padding, segment 0, may follow; it is never written). `kv_window=W` (static)
  reads only slots [0, W): a decode step then costs what its window holds, not the whole
  cache; W must cover what the call attends to (W >= each row's first position).
  `chunk_row=r` (traced) makes it a mixed call for continuous batching: tokens [1, B + C]
  are one token per cache row (B rows; idle ones segment 0), then C tokens of row r, all
  through the dense layers together (one weight pass for decoding and prefill).

Layers are stacked with `nn.scan` (`scan_layers=True`: one compiled layer, params with a
leading `layers` axis) and optionally rematerialized (`remat_policy`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zen_code_jax.model import context_parallel as cp
from zen_code_jax.model.attention import dot_product_attention
from zen_code_jax.model.config import ModelConfig
from zen_code_jax.model.layers import (
    MLP,
    DenseIn,
    DenseOut,
    Embed,
    RMSNorm,
    apply_rope,
    as_dtype,
    matmul,
)

KV_CACHE_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")
ACT_AXES = ("batch", "length", "embed")


def _init(cfg: ModelConfig):
    return nn.initializers.normal(stddev=cfg.initializer_range)


class Attention(nn.Module):
    """Grouped-query self-attention with QKV bias and RoPE; optional KV-cache slots."""

    config: ModelConfig
    kv_window: int | None = None  # cache slots [0, kv_window) are read (None: all)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array | None,
        cache: tuple[jax.Array, jax.Array] | None,
        chunk_row: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        cfg = self.config
        dt, pdt = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        hd = cfg.resolved_head_dim
        kw = dict(dtype=dt, param_dtype=pdt, kernel_init=_init(cfg), use_bias=cfg.qkv_bias)
        q = DenseIn((cfg.num_heads, hd), ("embed", "heads", "head_dim"), name="q_proj", **kw)(x)
        k = DenseIn((cfg.num_kv_heads, hd), ("embed", "kv_heads", "head_dim"), name="k_proj", **kw)(
            x
        )
        v = DenseIn((cfg.num_kv_heads, hd), ("embed", "kv_heads", "head_dim"), name="v_proj", **kw)(
            x
        )
        q = apply_rope(q, positions, cfg.rope_theta)
        k = apply_rope(k, positions, cfg.rope_theta)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
        k = nn.with_logical_constraint(k, ("batch", "length", "kv_heads", "head_dim"))
        v = nn.with_logical_constraint(v, ("batch", "length", "kv_heads", "head_dim"))

        if cache is None and cp.sequence_axis(cfg.context_parallel):
            # `length` is split over the mesh: all-gather K/V, queries stay local; the
            # decoder already put the tokens in `context_parallel_layout` order.
            out = cp.context_parallel_attention(
                q,
                k,
                v,
                segment_ids,
                mode=cfg.context_parallel,
                layout=cfg.context_parallel_layout,
                block_size=cfg.attention_block_size,
            )
            new_cache = None
        elif cache is None:
            out = dot_product_attention(
                q,
                k,
                v,
                q_segment_ids=segment_ids,
                kv_segment_ids=segment_ids,
                impl=cfg.attention_impl,
                block_size=cfg.attention_block_size,
            )
            new_cache = None
        else:
            # The cache is read only here: this call's queries attend to the slots that
            # earlier calls wrote and to this call's own keys; the Transformer writes this
            # call's K/V into the cache once, after all layers (`_write_cache`). Touching
            # the cache once per call, not per layer, keeps a decode step's cost in the
            # window it attends to.
            ck, cv = cache
            if self.kv_window is not None:  # sliced here, so XLA fuses it into its consumer
                ck, cv = ck[:, : self.kv_window], cv[:, : self.kv_window]
            # Keys and values go through the cache dtype, as if written and read back.
            k, v = k.astype(ck.dtype), v.astype(cv.dtype)
            attend = functools.partial(_attend_cached, cfg=cfg, dtype=dt)
            if chunk_row is None:
                out = attend(q, ck, cv, k, v, positions, segment_ids)
            else:
                # Mixed call: one token per cache row, then a chunk of row `chunk_row`.
                b = ck.shape[0]
                seg = jnp.ones(positions.shape, jnp.int32) if segment_ids is None else segment_ids
                dec = attend(
                    q[0, :b, None],
                    ck,
                    cv,
                    k[0, :b, None],
                    v[0, :b, None],
                    positions[0, :b, None],
                    seg[0, :b, None],
                )
                rk, rv = (jax.lax.dynamic_slice_in_dim(c, chunk_row, 1, axis=0) for c in (ck, cv))
                chunk = attend(q[:, b:], rk, rv, k[:, b:], v[:, b:], positions[:, b:], seg[:, b:])
                out = jnp.concatenate([dec[:, 0][None], chunk], axis=1)
            new_cache = (k, v)  # this call's keys and values only
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "head_dim"))
        y = DenseOut(
            cfg.hidden_size,
            ("heads", "head_dim", "embed"),
            dtype=dt,
            param_dtype=pdt,
            kernel_init=_init(cfg),
            num_in_dims=2,
            name="o_proj",
        )(out)
        return y, new_cache


def _attend_cached(q, ck, cv, k, v, positions, segment_ids, *, cfg: ModelConfig, dtype):
    """Queries [B, T] over cache slots j < each row's first new position (slots [0, W) of
    `ck`/`cv`, read only) and this call's own keys at positions <= theirs."""
    b, w = ck.shape[:2]
    valid = jnp.ones(positions.shape, bool) if segment_ids is None else segment_ids != 0
    start = jnp.min(jnp.where(valid, positions, jnp.iinfo(jnp.int32).max), axis=1)
    slot_ids = jnp.broadcast_to(jnp.arange(w, dtype=jnp.int32), (b, w))
    return dot_product_attention(
        q,
        jnp.concatenate([ck, k], axis=1).astype(dtype),
        jnp.concatenate([cv, v], axis=1).astype(dtype),
        q_segment_ids=valid.astype(jnp.int32),
        kv_segment_ids=jnp.concatenate(
            [(slot_ids < start[:, None]).astype(jnp.int32), valid.astype(jnp.int32)], axis=1
        ),
        q_positions=positions,
        kv_positions=jnp.concatenate([slot_ids, positions], axis=1),
        impl=cfg.attention_impl,
        block_size=cfg.attention_block_size,
    )


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)); x + mlp(norm(x))."""

    config: ModelConfig
    kv_window: int | None = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array | None,
        cache: tuple[jax.Array, jax.Array] | None,
        chunk_row: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        cfg = self.config
        dt, pdt = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        x = nn.with_logical_constraint(x, ACT_AXES)
        h = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="attn_norm")(x)
        a, new_cache = Attention(cfg, self.kv_window, name="attn")(
            h, positions, segment_ids, cache, chunk_row
        )
        x = x + a
        h = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="mlp_norm")(x)
        x = x + MLP(cfg.hidden_size, cfg.intermediate_size, dt, pdt, _init(cfg), name="mlp")(h)
        x = nn.with_logical_constraint(x, ACT_AXES)
        return x, new_cache


def _remat(layer_cls: type[nn.Module], policy: str, scanned: bool) -> type[nn.Module]:
    if policy == "none":
        return layer_cls
    jax_policy = None if policy == "full" else jax.checkpoint_policies.dots_saveable
    return nn.remat(layer_cls, policy=jax_policy, prevent_cse=not scanned)


class Transformer(nn.Module):
    """Qwen2-style decoder-only LM; see the module docstring for the call contract."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        *,
        kv_cache: dict[str, jax.Array] | None = None,
        kv_window: int | None = None,
        chunk_row: jax.Array | None = None,
        return_hidden: bool = False,
    ) -> Any:
        cfg = self.config
        dt, pdt = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}.")
        if positions is None:
            if kv_cache is not None:
                raise ValueError(
                    "Decoding with kv_cache needs explicit positions [batch, length]: "
                    "they say which cache slot each token is written to."
                )
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        if positions.shape != tokens.shape or (
            segment_ids is not None and segment_ids.shape != tokens.shape
        ):
            raise ValueError(
                f"tokens {tokens.shape}, positions {positions.shape} and segment_ids "
                f"{None if segment_ids is None else segment_ids.shape} must all be [batch, length]."
            )
        positions = positions.astype(jnp.int32)
        # Context parallelism: run the layers in the load-balanced token order and give
        # the hidden states back in the caller's order (identity without a split length).
        relayout = kv_cache is None and cp.sequence_axis(cfg.context_parallel) is not None
        if relayout:
            mode, layout = cfg.context_parallel, cfg.context_parallel_layout
            tokens, positions = (
                cp.to_layout(tokens, mode, layout),
                cp.to_layout(positions, mode, layout),
            )
            if segment_ids is not None:
                segment_ids = cp.to_layout(segment_ids, mode, layout)

        embed = Embed(cfg.vocab_size, cfg.hidden_size, dt, pdt, _init(cfg), name="embed")
        x = embed(tokens)
        x = nn.with_logical_constraint(x, ACT_AXES)

        cache, window = None, None
        if kv_cache is not None:
            max_len = kv_cache["k"].shape[2]
            window = None if kv_window is None else int(kv_window)
            if window is not None and not 1 <= window <= max_len:
                raise ValueError(
                    f"kv_window={kv_window} must be in [1, {max_len}] (the cache length)."
                )
            # Layers read slots [0, window) only; the caller picks a window covering every
            # position this call attends to (slots a row has not written are masked anyway).
            cache = (kv_cache["k"], kv_cache["v"])
            if chunk_row is not None and not (
                tokens.shape[0] == 1 and tokens.shape[1] > cache[0].shape[1]
            ):
                raise ValueError(
                    f"A mixed call (chunk_row) takes tokens [1, rows + chunk]: one token per "
                    f"cache row ({cache[0].shape[1]}), then the chunk; got {tokens.shape}."
                )
            batch = tokens.shape[0] if chunk_row is None else cache[0].shape[1]
            expected = (cfg.num_layers, batch)
            if cache[0].shape[:2] != expected or cache[0].shape[3:] != (
                cfg.num_kv_heads,
                cfg.resolved_head_dim,
            ):
                raise ValueError(
                    f"kv_cache['k'] has shape {cache[0].shape}, expected "
                    f"[{cfg.num_layers}, {batch}, max_len, {cfg.num_kv_heads}, "
                    f"{cfg.resolved_head_dim}]; build it with init_kv_cache(cfg, batch, max_len)."
                )

        layer_cls = _remat(DecoderLayer, cfg.remat_policy, cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
                length=cfg.num_layers,
                unroll=cfg.scan_unroll,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, window, name="layers")
            x, new_cache = stack(x, positions, segment_ids, cache, chunk_row)
        else:
            new_layers = []
            for i in range(cfg.num_layers):
                layer_cache = None if cache is None else (cache[0][i], cache[1][i])
                x, c = layer_cls(cfg, window, name=f"layers_{i}")(
                    x, positions, segment_ids, layer_cache, chunk_row
                )
                new_layers.append(c)
            new_cache = (
                None
                if cache is None
                else (
                    jnp.stack([c[0] for c in new_layers]),
                    jnp.stack([c[1] for c in new_layers]),
                )
            )

        x = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="final_norm")(x)
        if relayout:
            x = cp.from_layout(x, cfg.context_parallel, cfg.context_parallel_layout)
        x = nn.with_logical_constraint(x, ACT_AXES)
        if return_hidden:
            out = x
        else:
            if cfg.tie_embeddings:
                kernel = embed.embedding.T
            else:
                kernel = _LMHead(cfg, name="lm_head")()
            out = matmul(x, kernel, dt)
            out = nn.with_logical_constraint(out, ("batch", "length", "vocab"))
        if kv_cache is not None:
            rows = None
            if chunk_row is not None:
                b = kv_cache["k"].shape[1]
                rows = jnp.concatenate(
                    [jnp.arange(b, dtype=jnp.int32), jnp.full((tokens.shape[1] - b,), chunk_row)]
                )[None].astype(jnp.int32)
            return out, _write_cache(kv_cache, new_cache, positions, segment_ids, rows)
        return out


class _LMHead(nn.Module):
    """Holds the untied output projection `lm_head/kernel [D, V]`."""

    config: ModelConfig

    @nn.compact
    def __call__(self) -> jax.Array:
        cfg = self.config
        return self.param(
            "kernel",
            nn.with_logical_partitioning(_init(cfg), ("embed", "vocab")),
            (cfg.hidden_size, cfg.vocab_size),
            as_dtype(cfg.param_dtype),
        )


def _write_cache(
    kv_cache: dict[str, jax.Array],
    new: tuple[jax.Array, jax.Array],
    positions: jax.Array,
    segment_ids: jax.Array | None,
    rows: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Write this call's keys and values [L, B, T, KV, Dh] at their (row, position): one
    scatter per array, in place when the caller donates the cache. Padding tokens (segment
    0) are sent out of bounds and dropped, so they never clobber a real slot. `rows`
    [B, T]: each token's cache row (default: its batch row)."""
    max_len = kv_cache["k"].shape[2]
    slots = positions if segment_ids is None else jnp.where(segment_ids != 0, positions, max_len)
    if rows is None:
        rows = jnp.broadcast_to(jnp.arange(positions.shape[0])[:, None], positions.shape)
    return {
        name: kv_cache[name].at[:, rows, slots].set(x.astype(kv_cache[name].dtype), mode="drop")
        for name, x in zip(("k", "v"), new)
    }


def _unbox(x: Any) -> Any:
    return x.unbox() if isinstance(x, nn.meta.AxisMetadata) else x


def lm_head_kernel(params: Any, cfg: ModelConfig) -> jax.Array:
    """The `[D, V]` output matrix (the embedding transposed when tied).

    Accepts the params tree boxed or unboxed, with or without an outer {'params': ...}.
    Logits are `matmul(hidden, lm_head_kernel(params, cfg), cfg.dtype)`: inputs in the
    compute dtype, float32 accumulation.
    """
    if "params" in params and "embed" not in params:
        params = params["params"]
    if cfg.tie_embeddings:
        return _unbox(params["embed"]["embedding"]).T
    return _unbox(params["lm_head"]["kernel"])


def init_kv_cache(
    cfg: ModelConfig, batch: int, max_len: int, dtype: str | jnp.dtype | None = None
) -> dict[str, jax.Array]:
    """Zeroed cache `{'k','v': [L, B, max_len, KV, Dh]}` in `dtype` (default cfg.dtype).

    Logical axes: `KV_CACHE_AXES` = (layers, batch, length, kv_heads, head_dim).
    """
    if batch <= 0 or max_len <= 0:
        raise ValueError(f"init_kv_cache needs batch > 0 and max_len > 0, got {batch}, {max_len}.")
    dt = as_dtype(dtype if dtype is not None else cfg.dtype)
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.resolved_head_dim)
    return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}
