"""Stream an HF checkpoint into sharded parameters, one tensor (slice) at a time.

Why streaming: the peers' top complaint is host RAM (a whole-state-dict converter needs
the checkpoint several times over in memory). Here every parameter leaf is built from
the safetensors files directly into its target sharding:

* a device's shard of one HF tensor is read with `SafetensorsReader.get_slice` (only its
  rows/columns, by `os.preadv` into our own buffer: no mmap, so no shard page stays in the
  process's resident set once consumed; see `safetensors_io.py`), reshaped and transposed as a view into our layout (the same mapping as
  `model/hf_convert.py`: transpose + reshape only);
* shards up to `CHUNK_BYTES` go through `jax.make_array_from_callback` (the callback
  returns that view, which `device_put` copies once);
* larger shards (the embedding, stacked layer tensors) are filled in row chunks of at
  most `CHUNK_BYTES`: on CPU devices into an aligned host buffer that `device_put` adopts
  without copying (the parameters' own memory); on accelerators into a device buffer by a
  donated `dynamic_update_slice`. Host memory above the resident parameters stays at
  about one chunk instead of a whole tensor plus its copy (measured: tests/test_hf.py,
  benchmarks/hf_import.py).

The checkpoint's dtype is kept unless the target says otherwise (bf16 stays bf16).
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from zen_code_jax.hf.checkpoint import HFCheckpoint
from zen_code_jax.hf.safetensors_io import SafetensorsReader
from zen_code_jax.model.config import ModelConfig
from zen_code_jax.model.params import abstract_params
from zen_code_jax.parallel.mesh import make_mesh
from zen_code_jax.parallel.rules import DEFAULT_RULES

CHUNK_BYTES = 2 << 20


def _release_host_memory() -> None:
    """Return freed heap pages to the OS (glibc keeps them in its arenas otherwise: a
    200M-parameter import held ~80 MB of freed chunk and compile buffers without this)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


# our layer key -> (HF suffix, split of each HF axis, permutation to our layout).
# Split sizes use symbols resolved per config: D hidden, H heads, K kv heads, E head_dim,
# F intermediate. `our = hf.reshape(flat(split)).transpose(perm)`.
_LAYER_MAP: dict[str, tuple[str, tuple[tuple[str, ...], ...], tuple[int, ...]]] = {
    "attn_norm/scale": ("input_layernorm.weight", (("D",),), (0,)),
    "mlp_norm/scale": ("post_attention_layernorm.weight", (("D",),), (0,)),
    "attn/q_proj/kernel": ("self_attn.q_proj.weight", (("H", "E"), ("D",)), (2, 0, 1)),
    "attn/q_proj/bias": ("self_attn.q_proj.bias", (("H", "E"),), (0, 1)),
    "attn/k_proj/kernel": ("self_attn.k_proj.weight", (("K", "E"), ("D",)), (2, 0, 1)),
    "attn/k_proj/bias": ("self_attn.k_proj.bias", (("K", "E"),), (0, 1)),
    "attn/v_proj/kernel": ("self_attn.v_proj.weight", (("K", "E"), ("D",)), (2, 0, 1)),
    "attn/v_proj/bias": ("self_attn.v_proj.bias", (("K", "E"),), (0, 1)),
    "attn/o_proj/kernel": ("self_attn.o_proj.weight", (("D",), ("H", "E")), (1, 2, 0)),
    "mlp/gate_proj/kernel": ("mlp.gate_proj.weight", (("F",), ("D",)), (1, 0)),
    "mlp/up_proj/kernel": ("mlp.up_proj.weight", (("F",), ("D",)), (1, 0)),
    "mlp/down_proj/kernel": ("mlp.down_proj.weight", (("D",), ("F",)), (1, 0)),
}
_TOP_MAP = {
    "embed/embedding": ("model.embed_tokens.weight", (("V",), ("D",)), (0, 1)),
    "final_norm/scale": ("model.norm.weight", (("D",),), (0,)),
    "lm_head/kernel": ("lm_head.weight", (("V",), ("D",)), (1, 0)),
}


def _sizes(cfg: ModelConfig) -> dict[str, int]:
    return {
        "D": cfg.hidden_size,
        "H": cfg.num_heads,
        "K": cfg.num_kv_heads,
        "E": cfg.resolved_head_dim,
        "F": cfg.intermediate_size,
        "V": cfg.vocab_size,
    }


def param_shardings(cfg: ModelConfig, mesh: Mesh) -> Any:
    """Abstract params (ShapeDtypeStruct with NamedSharding) of `cfg` on `mesh`."""
    boxed = abstract_params(cfg)
    specs = nn.get_partition_spec(boxed)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, list(DEFAULT_RULES))
    unboxed = nn.meta.unbox(boxed)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), unboxed, shardings
    )


def leaf_sources(cfg: ModelConfig) -> dict[str, tuple[list[str], tuple, tuple[int, ...]]]:
    """Our leaf path -> (HF names, one per stacked layer or one, resolved split, perm)."""
    sz = _sizes(cfg)
    out = {}
    for path, (name, split, perm) in _TOP_MAP.items():
        if path == "lm_head/kernel" and cfg.tie_embeddings:
            continue
        out[path] = ([name], tuple(tuple(sz[s] for s in g) for g in split), perm)
    for key, (suffix, split, perm) in _LAYER_MAP.items():
        rsplit = tuple(tuple(sz[s] for s in g) for g in split)
        names = [f"model.layers.{i}.{suffix}" for i in range(cfg.num_layers)]
        if cfg.scan_layers:
            out[f"layers/{key}"] = (names, rsplit, perm)
        else:
            for i, n in enumerate(names):
                out[f"layers_{i}/{key}"] = ([n], rsplit, perm)
    return out


def read_region(get_slice: Any, split: tuple, perm: tuple[int, ...], idx: tuple) -> np.ndarray:
    """`our[idx]` of one HF tensor, reading only the HF rows/columns it needs.

    `our = hf.reshape(flat(split)).transpose(perm)`; `idx` holds (start, stop) per our axis.
    Each HF axis is split into (lead, *rest); the read covers the lead range in full rows
    of `rest`, then the rest are sliced after the reshape.
    """
    flat = [s for g in split for s in g]
    want: list[tuple[int, int]] = [(0, n) for n in flat]
    for i, p in enumerate(perm):
        want[p] = idx[i]
    hf_sl, post, shape = [], [], []
    k = 0
    for g in split:
        inner = math.prod(g[1:])
        a0, a1 = want[k]
        hf_sl.append(slice(a0 * inner, a1 * inner))
        shape.extend((a1 - a0, *g[1:]))
        post.append(slice(None))
        post.extend(slice(*want[k + j]) for j in range(1, len(g)))
        k += len(g)
    x = get_slice[tuple(hf_sl)]
    return np.asarray(x).reshape(shape)[tuple(post)].transpose(perm)


@functools.partial(jax.jit, donate_argnums=(0,))
def _update(buf: jax.Array, x: jax.Array, offsets: jax.Array) -> jax.Array:
    return jax.lax.dynamic_update_slice(buf, x.astype(buf.dtype), tuple(offsets))


def _bounds(index: tuple, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(s.start or 0, shape[i] if s.stop is None else s.stop) for i, s in enumerate(index)]


def _build_leaf(
    opener: Callable[[str], Any],
    names: list[str],
    split: tuple,
    perm: tuple[int, ...],
    target: jax.ShapeDtypeStruct,
    stacked: bool,
) -> jax.Array:
    shape, dtype, sharding = tuple(target.shape), np.dtype(target.dtype), target.sharding
    dev_index = sharding.addressable_devices_indices_map(shape)
    some = _bounds(next(iter(dev_index.values())), shape)
    shard_bytes = math.prod(b - a for a, b in some) * dtype.itemsize
    if not stacked and shard_bytes <= CHUNK_BYTES:

        def cb(index: tuple) -> np.ndarray:
            return read_region(opener(names[0]), split, perm, tuple(_bounds(index, shape)))

        out = jax.make_array_from_callback(shape, sharding, cb)
        _release_host_memory()
        return out
    arrays = []
    for device, index in dev_index.items():
        b = _bounds(index, shape)
        layer_b, inner = (b[0], b[1:]) if stacked else ((0, 1), b)
        a0, a1 = inner[0]
        row_bytes = max(1, math.prod(hi - lo for lo, hi in inner[1:]) * dtype.itemsize)
        step = max(1, CHUNK_BYTES // row_bytes)
        shard_shape = [hi - lo for lo, hi in b]
        on_host = device.platform == "cpu"
        if on_host:
            # CPU: fill an aligned host buffer that device_put then adopts without a copy.
            buf: Any = _aligned_empty(shard_shape, dtype)
        else:
            # Accelerators: a device buffer updated in place (donated) chunk by chunk.
            buf = jax.device_put(np.zeros(shard_shape, dtype), device)
        for j, layer in enumerate(range(*layer_b)):
            sl = opener(names[layer])
            for r in range(a0, a1, step):
                region = [(r, min(a1, r + step)), *inner[1:]]
                x = read_region(sl, split, perm, tuple(region))
                if on_host:
                    rows = slice(r - a0, min(a1, r + step) - a0)
                    buf[(j, rows) if stacked else (rows,)] = x
                    continue
                x = jax.device_put(np.asarray(x, dtype), device)
                if stacked:
                    x = x[None]
                offsets = ([j] if stacked else []) + [r - a0] + [0] * (len(inner) - 1)
                buf = _update(buf, x, jnp.asarray(offsets, jnp.int32))
                del x
        arrays.append(jax.device_put(buf, device) if on_host else buf)
        del buf
    _update.clear_cache()  # per-shape programs, never reused by the next leaf
    _release_host_memory()
    return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def _aligned_empty(shape: list[int], dtype: np.dtype, align: int = 64) -> np.ndarray:
    """An uninitialized array whose data is `align`-byte aligned (what XLA's CPU client
    needs to adopt a host buffer zero-copy; a plain np.empty is only 16-byte aligned)."""
    n = math.prod(shape) * dtype.itemsize
    raw = np.empty(n + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off : off + n].view(dtype).reshape(shape)


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split("/")
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def _get(tree: Mapping[str, Any], path: str) -> Any:
    for part in path.split("/"):
        tree = tree[part]
    return tree


def load_params(
    ckpt: HFCheckpoint,
    model_cfg: ModelConfig | None = None,
    *,
    mesh: Mesh | None = None,
    target: Any | None = None,
) -> dict[str, Any]:
    """Our unboxed params tree (sharded jax arrays) streamed from `ckpt`.

    `target`: abstract params (ShapeDtypeStruct with shardings, e.g. a train state's) to
    load into, casting on the way; otherwise `param_shardings(model_cfg, mesh)` (default:
    all local devices on a data axis, so parameters are replicated) in the checkpoint's dtype.
    """
    cfg = model_cfg or ckpt.model_cfg
    if target is None:
        if mesh is None:
            mesh = default_mesh()
        target = param_shardings(cfg, mesh)
    if "params" in target and "embed" not in target:
        target = target["params"]
    params: dict[str, Any] = {}
    with ExitStack() as stack:
        handles: dict[str, Any] = {}

        def opener(name: str) -> Any:
            f = ckpt.weight_map[name]
            if f not in handles:
                path = ckpt.directory / f
                handles[f] = stack.enter_context(SafetensorsReader(path))
            return handles[f].get_slice(name)

        for path, (names, split, perm) in leaf_sources(cfg).items():
            leaf = _get(target, path)
            _set(
                params,
                path,
                _build_leaf(
                    opener, names, split, perm, leaf, len(names) > 1 or path.startswith("layers/")
                ),
            )
    return params


def default_mesh() -> Mesh:
    """One-device mesh (the CLI's import target when no mesh is given)."""
    return make_mesh({"data": 1}, devices=jax.local_devices()[:1])
