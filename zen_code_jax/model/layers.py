"""Building blocks of the decoder: embedding, RMSNorm, projections, RoPE, SwiGLU MLP.

Every parameter is created with `nn.with_logical_partitioning`, so the parallel layer can
map the logical names (`embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `vocab`) to mesh
axes without the model knowing about meshes. Parameters live in `param_dtype` (float32);
matmuls take their inputs in `dtype` (bfloat16 by default) and accumulate in float32
(`preferred_element_type`), which is both the accurate and (on XLA:CPU) the fast choice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype
Initializer = Callable[..., jax.Array]


def as_dtype(name: str | Dtype) -> Dtype:
    """`'bfloat16'` -> `jnp.bfloat16`; passes dtypes through."""
    return jnp.dtype(name)


def matmul(x: jax.Array, w: jax.Array, dtype: Dtype) -> jax.Array:
    """`x[..., K] @ w[K, ...]` with inputs cast to `dtype` and a float32 result.

    Leading dimensions of `x` are flattened into one row dimension first: XLA:CPU runs a
    plain 2-D GEMM much faster than a dot with several free dimensions (measured: it halved
    the MLP's forward and backward time on a small Qwen2-style step). The
    backward pass also multiplies in `dtype` with float32 accumulation (see `_mm`).
    """
    lead = x.shape[:-1]
    y = _mm(x.reshape(-1, x.shape[-1]), w.reshape(w.shape[0], -1), jnp.dtype(dtype))
    return y.reshape(*lead, *w.shape[1:])


def _dot(a: jax.Array, b: jax.Array, contract: tuple[int, int]) -> jax.Array:
    dims = (((contract[0],), (contract[1],)), ((), ()))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _mm(x: jax.Array, w: jax.Array, dtype: Dtype) -> jax.Array:
    """2-D matmul in `dtype` with float32 accumulation and a float32 result.

    A custom VJP because autodiff of `dot_general(preferred_element_type=f32)` feeds the
    float32 cotangent into mixed f32 x bf16 dots, which XLA:CPU runs as slow f32 GEMMs.
    Here the cotangent is cast to `dtype` (as torch autocast does) and the gradients come
    back in the dtypes of the inputs (float32 for float32 parameters), accumulated in f32.
    """
    return _dot(x.astype(dtype), w.astype(dtype), (1, 0))


def _mm_fwd(x, w, dtype):
    xc, wc = x.astype(dtype), w.astype(dtype)
    # Zero-size arrays carry the input dtypes to the backward pass.
    return _dot(xc, wc, (1, 0)), (xc, wc, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _mm_bwd(dtype, res, g):
    xc, wc, x_dt, w_dt = res
    gc = g.astype(dtype)
    dx = _dot(gc, wc, (1, 1)).astype(x_dt.dtype)  # [N, M] x [K, M] -> [N, K]
    dw = _dot(xc, gc, (0, 0)).astype(w_dt.dtype)  # [N, K] x [N, M] -> [K, M]
    return dx, dw


_mm.defvjp(_mm_fwd, _mm_bwd)


class Embed(nn.Module):
    """Token embedding table `embedding [V, D]` (logical axes vocab, embed)."""

    vocab_size: int
    features: int
    dtype: Dtype
    param_dtype: Dtype
    embedding_init: Initializer

    def setup(self) -> None:
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(self.embedding_init, ("vocab", "embed")),
            (self.vocab_size, self.features),
            self.param_dtype,
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        # Un-shard the `embed` dim of the table (an all-gather over the FSDP axis, as for
        # any weight) but keep `vocab` sharded: GSPMD then looks up each vocab shard locally
        # and all-reduces, and the output comes out batch-sharded like the tokens. Looking
        # up from an embed-sharded table instead yields [B, S, D] sharded on D, which GSPMD
        # can only turn into batch sharding by replicating the whole activation.
        table = nn.with_logical_constraint(self.embedding, ("vocab", None))
        return jnp.take(table, tokens, axis=0).astype(self.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32 (as HF Qwen2), with a learned `scale`."""

    eps: float
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.eps)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


class DenseIn(nn.Module):
    """Projection `[..., D] -> [..., *features]` with kernel `[D, *features]` and optional bias.

    Used for Q/K/V (`features=(heads, head_dim)`) and the MLP input (`features=(mlp,)`).
    """

    features: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    dtype: Dtype
    param_dtype: Dtype
    kernel_init: Initializer
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
            (x.shape[-1], *self.features),
            self.param_dtype,
        )
        y = matmul(x, kernel, self.dtype)
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes[1:]),
                self.features,
                self.param_dtype,
            )
            y = y + bias.astype(jnp.float32)
        return y.astype(self.dtype)


class DenseOut(nn.Module):
    """Projection `[..., *in_shape] -> [..., D]` with kernel `[*in_shape, D]` (no bias).

    Used for the attention output (`in_shape=(heads, head_dim)`) and the MLP output.
    """

    features: int
    kernel_axes: tuple[str, ...]
    dtype: Dtype
    param_dtype: Dtype
    kernel_init: Initializer
    num_in_dims: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[-self.num_in_dims :]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
            (*in_shape, self.features),
            self.param_dtype,
        )
        lead = x.shape[: -self.num_in_dims]
        k_flat = 1
        for n in in_shape:
            k_flat *= n
        y = matmul(x.reshape(*lead, k_flat), kernel.reshape(k_flat, self.features), self.dtype)
        return y.astype(self.dtype)


class MLP(nn.Module):
    """SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`."""

    hidden_size: int
    intermediate_size: int
    dtype: Dtype
    param_dtype: Dtype
    kernel_init: Initializer

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init)
        gate = DenseIn((self.intermediate_size,), ("embed", "mlp"), name="gate_proj", **kw)(x)
        up = DenseIn((self.intermediate_size,), ("embed", "mlp"), name="up_proj", **kw)(x)
        # SiLU in float32 for accuracy; the product goes back to the compute dtype.
        h = (jax.nn.silu(gate.astype(jnp.float32)) * up.astype(jnp.float32)).astype(self.dtype)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        return DenseOut(self.hidden_size, ("mlp", "embed"), name="down_proj", **kw)(h)


def rope_frequencies(head_dim: int, theta: float) -> jax.Array:
    """Inverse frequencies `theta ** (-2i / head_dim)`, i < head_dim/2 (float32)."""
    exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    return 1.0 / (theta**exponent)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding in the rotate-half convention of HF Qwen2/Llama.

    x: `[B, S, N, Dh]`; positions: int `[B, S]`. The first and second halves of the head
    dimension form the rotated pairs, so HF q/k projection weights load by pure reshape.
    Computed in float32 and returned in `x.dtype`.
    """
    dh = x.shape[-1]
    inv_freq = rope_frequencies(dh, theta)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, S, Dh/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., : dh // 2], x32[..., dh // 2 :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def logical_axes(*names: str | None) -> Sequence[str | None]:
    """Small helper so call sites read like the batch contract (docs/architecture.md)."""
    return tuple(names)
