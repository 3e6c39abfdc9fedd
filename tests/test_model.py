"""The Qwen2-style decoder: interface contract, masking, KV cache, remat/scan, config errors."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zen_code_jax.model import (
    ModelConfig,
    Transformer,
    get_preset,
    init_kv_cache,
    lm_head_kernel,
    param_count,
)
from zen_code_jax.model.layers import matmul

TINY = get_preset("tiny")  # float32 compute, 2 layers, hidden 64, 4/2 heads


@functools.cache
def _apply(cfg: ModelConfig, return_hidden: bool = False):
    """One jitted forward per (config, output); tests share compilations through this."""
    model = Transformer(cfg)
    return jax.jit(
        lambda p, t, pos, seg: model.apply({"params": p}, t, pos, seg, return_hidden=return_hidden)
    )


@functools.cache
def _init(cfg: ModelConfig):
    model = Transformer(cfg)
    return jax.jit(lambda rng, t, pos, seg: model.init(rng, t, pos, seg))


def _batch(b=2, s=16, seed=0, vocab=TINY.vocab_size):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (b, s)).astype(np.int32)
    positions = np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy()
    seg = np.ones((b, s), np.int32)
    return tokens, positions, seg


@pytest.fixture(scope="module")
def tiny_params():
    tokens, positions, seg = _batch()
    return _init(TINY)(jax.random.PRNGKey(0), tokens, positions, seg)["params"]


@pytest.fixture(scope="module")
def apply_fn():
    return _apply(TINY)


def _paths(tree):
    flat = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)
    )[0]
    return {"/".join(k.key for k in path): leaf for path, leaf in flat}


def test_param_tree_names_shapes_and_logical_axes(tiny_params):
    c = TINY
    hd, L = c.resolved_head_dim, c.num_layers
    expected = {
        "embed/embedding": ((c.vocab_size, c.hidden_size), ("vocab", "embed")),
        "layers/attn_norm/scale": ((L, c.hidden_size), ("layers", "embed")),
        "layers/attn/q_proj/kernel": (
            (L, c.hidden_size, c.num_heads, hd),
            ("layers", "embed", "heads", "head_dim"),
        ),
        "layers/attn/q_proj/bias": ((L, c.num_heads, hd), ("layers", "heads", "head_dim")),
        "layers/attn/k_proj/kernel": (
            (L, c.hidden_size, c.num_kv_heads, hd),
            ("layers", "embed", "kv_heads", "head_dim"),
        ),
        "layers/attn/k_proj/bias": ((L, c.num_kv_heads, hd), ("layers", "kv_heads", "head_dim")),
        "layers/attn/v_proj/kernel": (
            (L, c.hidden_size, c.num_kv_heads, hd),
            ("layers", "embed", "kv_heads", "head_dim"),
        ),
        "layers/attn/v_proj/bias": ((L, c.num_kv_heads, hd), ("layers", "kv_heads", "head_dim")),
        "layers/attn/o_proj/kernel": (
            (L, c.num_heads, hd, c.hidden_size),
            ("layers", "heads", "head_dim", "embed"),
        ),
        "layers/mlp_norm/scale": ((L, c.hidden_size), ("layers", "embed")),
        "layers/mlp/gate_proj/kernel": (
            (L, c.hidden_size, c.intermediate_size),
            ("layers", "embed", "mlp"),
        ),
        "layers/mlp/up_proj/kernel": (
            (L, c.hidden_size, c.intermediate_size),
            ("layers", "embed", "mlp"),
        ),
        "layers/mlp/down_proj/kernel": (
            (L, c.intermediate_size, c.hidden_size),
            ("layers", "mlp", "embed"),
        ),
        "final_norm/scale": ((c.hidden_size,), ("embed",)),
        "lm_head/kernel": ((c.hidden_size, c.vocab_size), ("embed", "vocab")),
    }
    got = _paths(tiny_params)
    assert set(got) == set(expected)
    for name, (shape, axes) in expected.items():
        leaf = got[name]
        assert isinstance(leaf, nn.LogicallyPartitioned), name
        assert leaf.value.shape == shape, name
        assert tuple(leaf.names) == axes, name
        assert leaf.value.dtype == jnp.float32, name
    n = sum(x.size for x in jax.tree_util.tree_leaves(nn.unbox(tiny_params)))
    assert n == param_count(TINY)


def test_unscanned_tree_and_tied_embeddings_count():
    cfg = TINY.replace(scan_layers=False, tie_embeddings=True)
    tokens, positions, seg = _batch(s=4)
    shapes = jax.eval_shape(
        lambda: Transformer(cfg).init(jax.random.PRNGKey(0), tokens, positions, seg)
    )["params"]
    got = _paths(shapes)
    assert "lm_head/kernel" not in got
    assert {k.split("/")[0] for k in got} == {"embed", "final_norm", "layers_0", "layers_1"}
    assert got["layers_1/attn/q_proj/kernel"].value.shape == (64, 4, 16)
    assert sum(leaf.value.size for leaf in got.values()) == param_count(cfg)


def test_init_statistics_and_determinism(tiny_params):
    p = nn.unbox(tiny_params)
    emb = np.asarray(p["embed"]["embedding"])
    assert abs(emb.std() - TINY.initializer_range) < 0.002
    np.testing.assert_array_equal(np.asarray(p["final_norm"]["scale"]), 1.0)
    np.testing.assert_array_equal(np.asarray(p["layers"]["attn"]["q_proj"]["bias"]), 0.0)
    # Each scanned layer gets its own random init.
    qk = np.asarray(p["layers"]["attn"]["q_proj"]["kernel"])
    assert not np.allclose(qk[0], qk[1])
    tokens, positions, seg = _batch()
    again = _init(TINY)(jax.random.PRNGKey(0), tokens, positions, seg)["params"]
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(nn.unbox(again))):
        np.testing.assert_array_equal(a, b)


def _random_params(cfg, seed=1, std=0.2):
    """Params with non-trivial norms and biases (init has ones/zeros, which hide bugs)."""
    tokens, positions, seg = _batch(s=4)
    shapes = jax.eval_shape(
        lambda: Transformer(cfg).init(jax.random.PRNGKey(0), tokens, positions, seg)
    )["params"]
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: (0.2 * rng.standard_normal(x.shape) + (path[-1].key == "scale")).astype(
            np.float32
        ),
        nn.unbox(shapes),
    )


@pytest.fixture(scope="module")
def rparams():
    return _random_params(TINY)


def test_logits_shape_dtype_and_hidden_contract(rparams, apply_fn):
    tokens, positions, seg = _batch()
    logits = apply_fn(rparams, tokens, positions, seg)
    assert logits.shape == (2, 16, TINY.vocab_size) and logits.dtype == jnp.float32
    hidden = _apply(TINY, True)(rparams, tokens, positions, seg)
    assert hidden.shape == (2, 16, TINY.hidden_size)
    again = matmul(hidden, lm_head_kernel(rparams, TINY), jnp.float32)
    np.testing.assert_allclose(np.asarray(again), np.asarray(logits), atol=1e-5, rtol=1e-5)
    # lm_head_kernel accepts the boxed tree and a {'params': ...} wrapper too.
    assert lm_head_kernel({"params": rparams}, TINY).shape == (64, 512)


def test_tied_lm_head_is_embedding_transpose():
    cfg = TINY.replace(tie_embeddings=True)
    p = _random_params(cfg)
    tokens, positions, seg = _batch(s=8)
    k = lm_head_kernel(p, cfg)
    np.testing.assert_array_equal(np.asarray(k), np.asarray(p["embed"]["embedding"]).T)
    logits = _apply(cfg)(p, tokens, positions, seg)
    hidden = _apply(cfg, True)(p, tokens, positions, seg)
    np.testing.assert_allclose(np.asarray(hidden @ k), np.asarray(logits), atol=1e-5, rtol=1e-5)


def test_packed_segments_match_separate_sequences(rparams, apply_fn):
    """Two documents packed in one row (positions restart) == each run alone; padding inert."""
    rng = np.random.default_rng(3)
    docs = rng.integers(0, 512, (2, 7)).astype(np.int32)
    pad = 2
    row = np.concatenate([docs[0], docs[1], np.zeros(pad, np.int32)])
    tokens = np.stack([row, row])  # [2, 16], the shape apply_fn is compiled for
    positions = np.tile(np.concatenate([np.arange(7), np.arange(7), np.zeros(pad)]), (2, 1))
    positions = positions.astype(np.int32)
    seg = np.tile(np.concatenate([np.full(7, 1), np.full(7, 2), np.zeros(pad)]), (2, 1))
    seg = seg.astype(np.int32)
    packed = np.asarray(apply_fn(rparams, tokens, positions, seg))
    pos7 = np.broadcast_to(np.arange(7, dtype=np.int32), (2, 7))
    alone = np.asarray(_apply(TINY)(rparams, docs, pos7, np.ones((2, 7), np.int32)))
    np.testing.assert_allclose(packed[0, :7], alone[0], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(packed[0, 7:14], alone[1], atol=2e-5, rtol=1e-5)
    # Changing a padding token or a token of document 2 leaves document 1 unchanged.
    tokens2 = tokens.copy()
    tokens2[0, -1] = 5
    tokens2[0, 9] = (tokens2[0, 9] + 1) % 512
    packed2 = np.asarray(apply_fn(rparams, tokens2, positions, seg))
    np.testing.assert_array_equal(packed2[0, :7], packed[0, :7])
    assert not np.allclose(packed2[0, 9:14], packed[0, 9:14])


def test_causality(rparams, apply_fn):
    tokens, positions, seg = _batch()
    base = np.asarray(apply_fn(rparams, tokens, positions, seg))
    t2 = tokens.copy()
    t2[:, 10] = (t2[:, 10] + 7) % 512
    changed = np.asarray(apply_fn(rparams, t2, positions, seg))
    np.testing.assert_array_equal(changed[:, :10], base[:, :10])
    assert not np.allclose(changed[:, 10:], base[:, 10:])


def test_rope_uses_positions_and_is_relative(rparams, apply_fn):
    """Shifting all positions by a constant leaves logits unchanged (relative encoding);
    permuting them does not."""
    tokens, positions, seg = _batch()
    base = np.asarray(apply_fn(rparams, tokens, positions, seg))
    shifted = np.asarray(apply_fn(rparams, tokens, positions + 100, seg))
    np.testing.assert_allclose(shifted, base, atol=5e-4, rtol=1e-4)
    other = np.asarray(apply_fn(rparams, tokens, positions * 2, seg))
    assert np.abs(other - base).max() > 1e-2


@pytest.mark.parametrize("scan", [True, False])
def test_kv_cache_prefill_and_decode_equal_full_forward(scan):
    """Right-padded prompts of different lengths, prefill then per-row decode == full forward."""
    cfg = TINY.replace(scan_layers=scan)
    p = _random_params(cfg)
    model = Transformer(cfg)
    rng = np.random.default_rng(5)
    total = 12
    seqs = rng.integers(0, 512, (2, total)).astype(np.int32)
    full = np.asarray(
        _apply(cfg)(
            p,
            seqs,
            np.broadcast_to(np.arange(total, dtype=np.int32), (2, total)),
            np.ones((2, total), np.int32),
        )
    )
    prompt_len = np.array([5, 3])
    plen = prompt_len.max()
    prompt = np.zeros((2, plen), np.int32)
    pos = np.zeros((2, plen), np.int32)
    seg = np.zeros((2, plen), np.int32)
    for r, n in enumerate(prompt_len):
        prompt[r, :n] = seqs[r, :n]
        pos[r] = np.arange(plen)  # padding continues the positions; it is overwritten later
        seg[r, :n] = 1
    cache = init_kv_cache(cfg, 2, 16)
    step = jax.jit(lambda p, t, pos, c: model.apply({"params": p}, t, pos, kv_cache=c))
    logits, cache = step(p, prompt, pos, cache)
    for r, n in enumerate(prompt_len):
        np.testing.assert_allclose(np.asarray(logits)[r, :n], full[r, :n], atol=2e-5, rtol=1e-5)
    cur = prompt_len.copy()
    for _ in range(3):
        tok = seqs[np.arange(2), cur][:, None]
        logits, cache = step(p, tok, cur[:, None].astype(np.int32), cache)
        for r in range(2):
            np.testing.assert_allclose(
                np.asarray(logits)[r, 0], full[r, cur[r]], atol=2e-5, rtol=1e-5
            )
        cur = cur + 1
    assert cache["k"].shape == (cfg.num_layers, 2, 16, cfg.num_kv_heads, cfg.resolved_head_dim)


@pytest.mark.parametrize("scan", [True, False])
def test_mixed_call_and_windows_equal_full_forward(scan):
    """Continuous batching's mixed call (one decode token per cache row plus a prefill
    chunk of another row, `chunk_row`) and a read window (`kv_window`) give the logits of
    the full forward, and write the cache a later decode step reads."""
    cfg = TINY.replace(scan_layers=scan)
    p = _random_params(cfg)
    model = Transformer(cfg)
    rng = np.random.default_rng(7)
    seqs = rng.integers(0, 512, (3, 12)).astype(np.int32)
    ar = np.broadcast_to(np.arange(12, dtype=np.int32), (3, 12))
    full = np.asarray(_apply(cfg)(p, seqs, ar, np.ones((3, 12), np.int32)))
    step = jax.jit(
        lambda t, pos, seg, c, row, window: model.apply(
            {"params": p}, t, pos, seg, kv_cache=c, kv_window=window, chunk_row=row
        ),
        static_argnums=5,
    )
    # Rows 0 and 2 prefill 5 tokens; row 1 is idle (segment 0 writes nothing).
    cache = init_kv_cache(cfg, 3, 16)
    seg = np.array([[1] * 5, [0] * 5, [1] * 5], np.int32)
    _, cache = step(seqs[:, :5], ar[:, :5], seg, cache, None, 8)
    # Mixed: rows 0 and 2 decode position 5, row 1 idle; then row 1's chunk of 7 tokens
    # (positions 0..6) plus one padding token.
    toks = np.concatenate([seqs[:, 5], seqs[1, :7], [0]])[None].astype(np.int32)
    pos = np.concatenate([[5, 0, 5], np.arange(8)])[None].astype(np.int32)
    mseg = np.concatenate([[1, 0, 1], [1] * 7, [0]])[None].astype(np.int32)
    logits, cache = step(toks, pos, mseg, cache, np.int32(1), 8)
    logits = np.asarray(logits)[0]
    tol = dict(atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(logits[0], full[0, 5], **tol)
    np.testing.assert_allclose(logits[2], full[2, 5], **tol)
    np.testing.assert_allclose(logits[3:10], full[1, :7], **tol)
    # A plain decode step over the cache the mixed call wrote (window 8, then the whole).
    cur = np.array([6, 7, 6], np.int32)
    for window in (8, None):
        out, _ = step(seqs[np.arange(3), cur][:, None], cur[:, None], None, cache, None, window)
        for r in range(3):
            np.testing.assert_allclose(np.asarray(out)[r, 0], full[r, cur[r]], **tol)
    with pytest.raises(ValueError, match="kv_window=17"):
        step(toks, pos, mseg, cache, np.int32(1), 17)
    with pytest.raises(ValueError, match=r"tokens \[1, rows \+ chunk\]"):
        step(seqs[:, :2], ar[:, :2], None, cache, np.int32(1), 8)


def test_kv_cache_drops_padding_writes():
    """With segment_ids, padding tokens are not written, so they cannot clobber slot 0."""
    p = _random_params(TINY)
    model = Transformer(TINY)
    step = jax.jit(
        lambda t, pos, seg: model.apply(
            {"params": p}, t, pos, seg, kv_cache=init_kv_cache(TINY, 1, 8)
        )[1]["k"]
    )
    tokens = np.array([[3, 4, 9, 9]], np.int32)
    bad = np.asarray(step(tokens, np.array([[0, 1, 0, 0]], np.int32), np.array([[1, 1, 0, 0]])))
    ref = np.asarray(step(tokens, np.array([[0, 1, 2, 3]], np.int32), np.ones((1, 4), np.int32)))
    np.testing.assert_array_equal(bad[:, :, :2], ref[:, :, :2])
    assert np.all(bad[:, :, 2:] == 0) and np.any(ref[:, :, 2:4] != 0)


def test_scan_and_unrolled_layers_agree(rparams):
    tokens, positions, seg = _batch(s=8)
    unrolled = {k: v for k, v in rparams.items() if k != "layers"}
    for i in range(TINY.num_layers):
        unrolled[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], rparams["layers"])
    a = _apply(TINY)(rparams, tokens, positions, seg)
    b = _apply(TINY.replace(scan_layers=False))(unrolled, tokens, positions, seg)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_remat_policies_same_loss_and_grads(rparams):
    tokens, positions, seg = _batch(s=8)

    def loss_for(policy):
        model = Transformer(TINY.replace(remat_policy=policy))

        def loss(p):
            lg = model.apply({"params": p}, tokens, positions, seg)
            return jnp.mean(jax.nn.logsumexp(lg, -1) - lg[..., 0])

        return jax.jit(jax.value_and_grad(loss))(rparams)

    ref_l, ref_g = loss_for("none")
    for policy in ("full", "dots_saveable"):
        val, g = loss_for(policy)
        np.testing.assert_allclose(float(val), float(ref_l), rtol=1e-6)
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(ref_g)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def test_bfloat16_compute_close_to_float32(rparams):
    tokens, positions, seg = _batch(s=8)
    f32 = _apply(TINY)(rparams, tokens, positions, seg)
    bf16 = TINY.replace(dtype="bfloat16")
    bf = _apply(bf16)(rparams, tokens, positions, seg)
    hidden = jax.eval_shape(_apply(bf16, True), rparams, tokens, positions, seg)
    assert bf.dtype == jnp.float32 and hidden.dtype == jnp.bfloat16
    err = np.abs(np.asarray(bf) - np.asarray(f32)).max()
    assert err < 0.05 * np.abs(np.asarray(f32)).max(), err


# --------------------------------------------------------------------------- bad input


def test_unknown_preset_names_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown model preset 'huge'.*tiny"):
        get_preset("huge")


def test_heads_not_divisible_by_kv_heads():
    with pytest.raises(
        ValueError, match=r"num_heads=6 is not divisible by num_kv_heads=4.*divisors"
    ):
        TINY.replace(num_heads=6, num_kv_heads=4, hidden_size=48)


def test_hidden_not_divisible_by_heads():
    with pytest.raises(
        ValueError, match=r"hidden_size=66 is not divisible by num_heads=4.*head_dim"
    ):
        TINY.replace(hidden_size=66)


def test_unknown_config_key_and_bad_enums():
    with pytest.raises(ValueError, match=r"Unknown ModelConfig key.*hidden_sise.*Valid keys"):
        ModelConfig.from_dict({"hidden_sise": 3})
    with pytest.raises(ValueError, match=r"remat_policy.*'full'"):
        TINY.replace(remat_policy="some")
    with pytest.raises(ValueError, match=r"attention_impl.*'chunked'"):
        TINY.replace(attention_impl="flash")


def test_bad_dtypes_and_nonpositive_fields():
    with pytest.raises(ValueError, match=r"dtype='bf16'; use 'float32', 'bfloat16'"):
        TINY.replace(dtype="bf16")
    with pytest.raises(ValueError, match=r"attention_block_size must be positive"):
        TINY.replace(attention_block_size=0)
    with pytest.raises(ValueError, match=r"rope_theta must be positive"):
        TINY.replace(rope_theta=0.0)
    with pytest.raises(ValueError, match=r"num_kv_heads must be positive"):
        TINY.replace(num_kv_heads=0)


def test_bad_call_shapes_name_the_fix(rparams):
    model = Transformer(TINY)
    tokens, positions, seg = _batch(s=8)
    with pytest.raises(ValueError, match=r"must all be \[batch, length\]"):
        model.apply({"params": rparams}, tokens, positions[:, :4], seg)
    with pytest.raises(ValueError, match=r"needs explicit positions"):
        model.apply({"params": rparams}, tokens, kv_cache=init_kv_cache(TINY, 2, 8))
    with pytest.raises(ValueError, match=r"init_kv_cache\(cfg, batch, max_len\)"):
        model.apply({"params": rparams}, tokens, positions, kv_cache=init_kv_cache(TINY, 3, 8))


def test_long_positions_beyond_max_position_embeddings_are_fine(rparams):
    tokens, positions, seg = _batch()
    out = _apply(TINY)(rparams, tokens, positions + TINY.max_position_embeddings + 5, seg)
    assert np.isfinite(np.asarray(out)).all()


def test_param_count_table1():
    n = param_count(get_preset("zen_code_14b"))
    assert n == 12_487_442_432 or abs(n - 12.49e9) < 0.01e9
    assert abs(n / 1e9 - 12.49) < 0.005
