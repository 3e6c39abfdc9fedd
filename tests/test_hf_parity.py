"""Parity with HF transformers' Qwen2ForCausalLM (PyTorch, CPU, float32) via hf_convert."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from zen_code_jax.model import Transformer
from zen_code_jax.model.hf_convert import (
    hf_config_from_model_config,
    hf_to_params,
    model_config_from_hf,
    params_to_hf,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_KW = dict(
    vocab_size=512,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    rope_theta=31_337.0,
    rms_norm_eps=1e-5,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)
S = 16


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(**HF_KW, attn_implementation="eager")
    model = transformers.Qwen2ForCausalLM(cfg).float().eval()
    # Default init has unit norms and zero biases, which would hide transposition and
    # bias bugs: perturb every tensor.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_state(hf_model):
    return {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}


def _hf_logits(hf_model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.from_numpy(tokens.astype(np.int64))).logits.float().numpy()


def _inputs():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, HF_KW["vocab_size"], (2, S)).astype(np.int32)
    positions = np.broadcast_to(np.arange(S, dtype=np.int32), (2, S)).copy()
    seg = np.ones((2, S), np.int32)
    # Row 1 packs two documents (9 + 5 tokens, positions restart) and 2 padding tokens.
    positions[1] = np.concatenate([np.arange(9), np.arange(5), [0, 0]])
    seg[1] = np.concatenate([np.full(9, 1), np.full(5, 2), [0, 0]])
    return tokens, positions, seg


def test_model_config_from_hf_reads_every_field():
    cfg = model_config_from_hf(transformers.Qwen2Config(**HF_KW).to_dict(), dtype="float32")
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers) == (512, 64, 2)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim) == (4, 2, 16)
    assert cfg.intermediate_size == 128 and cfg.rope_theta == 31_337.0
    assert cfg.rms_norm_eps == 1e-5 and cfg.max_position_embeddings == 256
    assert not cfg.tie_embeddings and cfg.qkv_bias and cfg.dtype == "float32"
    # Our exporter's config.json round-trips, and HF accepts it.
    again = model_config_from_hf(hf_config_from_model_config(cfg), dtype="float32")
    assert again == cfg
    transformers.Qwen2Config(**hf_config_from_model_config(cfg))


def test_model_config_from_hf_rejects_unsupported():
    base = transformers.Qwen2Config(**HF_KW).to_dict()
    with pytest.raises(ValueError, match=r"use_sliding_window=True is not supported"):
        model_config_from_hf({**base, "use_sliding_window": True})
    with pytest.raises(ValueError, match=r"RoPE scaling 'yarn' is not supported"):
        model_config_from_hf(
            {**base, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}
        )
    with pytest.raises(ValueError, match=r"only Qwen2-architecture"):
        model_config_from_hf({**base, "model_type": "llama"})


@pytest.mark.parametrize("scan,impl", [(True, "xla"), (False, "chunked")])
def test_logits_match_hf_including_packed_segments(hf_model, hf_state, scan, impl):
    cfg = model_config_from_hf(
        hf_model.config.to_dict(),
        dtype="float32",
        scan_layers=scan,
        attention_impl=impl,
        attention_block_size=8,
    )
    params = hf_to_params(hf_state, cfg)
    tokens, positions, seg = _inputs()
    ours = np.asarray(
        jax.jit(lambda p, t, pos, s: Transformer(cfg).apply({"params": p}, t, pos, s))(
            params, tokens, positions, seg
        )
    )
    # Row 0: one full sequence.
    ref0 = _hf_logits(hf_model, tokens[:1])[0]
    assert np.abs(ours[0] - ref0).max() <= 1e-4, np.abs(ours[0] - ref0).max()
    # Row 1: each packed document against HF on that document alone.
    for sl in (slice(0, 9), slice(9, 14)):
        ref = _hf_logits(hf_model, tokens[1:2, sl])[0]
        err = np.abs(ours[1, sl] - ref).max()
        assert err <= 1e-4, (sl, err)
    assert np.abs(ref0).max() > 0.5  # the comparison is not between near-zero logits


@pytest.mark.parametrize("scan", [True, False])
def test_round_trip_params_hf_params(hf_state, scan):
    cfg = model_config_from_hf({**HF_KW, "model_type": "qwen2"}, scan_layers=scan)
    params = hf_to_params(hf_state, cfg)
    back = params_to_hf(params, cfg)
    assert set(back) == {k for k in hf_state if not k.endswith("inv_freq")}
    for k, v in back.items():
        np.testing.assert_array_equal(v, hf_state[k], err_msg=k)
    again = hf_to_params(back, cfg)
    flat_a = jax.tree_util.tree_leaves_with_path(params)
    flat_b = jax.tree_util.tree_leaves_with_path(again)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (p, a), (_, b) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(a, b, err_msg=str(p))


def test_params_from_our_init_export_to_hf_loadable(hf_model):
    """Our freshly initialized (boxed) tree exports to a state dict HF loads strictly."""
    cfg = model_config_from_hf(hf_model.config.to_dict(), dtype="float32")
    tokens, positions, seg = _inputs()
    variables = jax.eval_shape(
        lambda: Transformer(cfg).init(jax.random.PRNGKey(0), tokens, positions, seg)
    )
    params = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), variables["params"])
    sd = params_to_hf(params, cfg)
    missing, unexpected = hf_model.__class__(hf_model.config).load_state_dict(
        {k: torch.from_numpy(v) for k, v in sd.items()}, strict=False
    )
    assert not unexpected and all("inv_freq" in k for k in missing), (missing, unexpected)


def test_conversion_errors_name_the_fix(hf_state):
    cfg = model_config_from_hf({**HF_KW, "model_type": "qwen2"})
    bad = dict(hf_state)
    del bad["model.layers.1.self_attn.q_proj.bias"]
    with pytest.raises(KeyError, match=r"q_proj.bias.*model_config_from_hf"):
        hf_to_params(bad, cfg)
    with pytest.raises(ValueError, match=r"Unused HF tensors.*model.layers.1"):
        hf_to_params(hf_state, cfg.replace(num_layers=1))
    with pytest.raises(ValueError, match=r"has shape .* expected"):
        hf_to_params(hf_state, cfg.replace(intermediate_size=64))
