"""Convert between Hugging Face Qwen2 checkpoints and this package's parameter tree.

Works on numpy arrays only (never imports torch), so it runs anywhere: a caller turns a
torch state dict into numpy (`{k: v.float().numpy() for k, v in sd.items()}`) or reads
safetensors with `safetensors.numpy.load_file`.

Because our RoPE uses the same rotate-half layout as HF Qwen2, the mapping is a pure
transpose + reshape per tensor:

| HF name (layer i)                              | ours                         |
|------------------------------------------------|------------------------------|
| model.embed_tokens.weight [V, D]               | embed/embedding [V, D]       |
| model.layers.i.input_layernorm.weight [D]      | layers/attn_norm/scale       |
| model.layers.i.self_attn.q_proj.weight [H*Dh, D] | layers/attn/q_proj/kernel [D, H, Dh] |
| model.layers.i.self_attn.q_proj.bias [H*Dh]    | layers/attn/q_proj/bias [H, Dh] |
| (k_proj, v_proj likewise with KV heads)        |                              |
| model.layers.i.self_attn.o_proj.weight [D, H*Dh] | layers/attn/o_proj/kernel [H, Dh, D] |
| model.layers.i.post_attention_layernorm.weight | layers/mlp_norm/scale        |
| model.layers.i.mlp.{gate,up}_proj.weight [F, D] | layers/mlp/{gate,up}_proj/kernel [D, F] |
| model.layers.i.mlp.down_proj.weight [D, F]     | layers/mlp/down_proj/kernel [F, D] |
| model.norm.weight [D]                          | final_norm/scale             |
| lm_head.weight [V, D]                          | lm_head/kernel [D, V]        |

With `scan_layers=True` the per-layer tensors are stacked on a leading axis under
`layers`; otherwise they live under `layers_0`, `layers_1`, ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from zen_code_jax.model.config import ModelConfig

_LAYER_KEYS = (
    "attn_norm/scale",
    "attn/q_proj/kernel",
    "attn/q_proj/bias",
    "attn/k_proj/kernel",
    "attn/k_proj/bias",
    "attn/v_proj/kernel",
    "attn/v_proj/bias",
    "attn/o_proj/kernel",
    "mlp_norm/scale",
    "mlp/gate_proj/kernel",
    "mlp/up_proj/kernel",
    "mlp/down_proj/kernel",
)


def model_config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """A ModelConfig from an HF Qwen2 `config.json` dict; `overrides` set our own fields
    (dtype, remat_policy, scan_layers, attention_impl, ...).

    Raises for features this decoder does not implement (sliding-window attention, RoPE
    scaling, activations other than SiLU) instead of silently loading a different model.
    """
    mt = hf_config.get("model_type", "qwen2")
    if mt not in ("qwen2", "qwen2_5"):
        raise ValueError(
            f"model_type={mt!r}: only Qwen2-architecture checkpoints convert. "
            "Use a Qwen2/Qwen2.5(-Coder) checkpoint."
        )
    if hf_config.get("use_sliding_window", False):
        raise ValueError(
            "use_sliding_window=True is not supported (this decoder uses full causal "
            "attention); set use_sliding_window=False in the HF config if it is unused."
        )
    act = hf_config.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act={act!r} is not supported; the MLP is SwiGLU (silu).")
    rope = dict(hf_config.get("rope_parameters") or {})
    scaling = hf_config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    if rope_type not in (None, "default"):
        raise ValueError(
            f"RoPE scaling {rope_type!r} is not supported; only default RoPE converts."
        )
    theta = rope.get("rope_theta", hf_config.get("rope_theta", 10_000.0))
    hidden, heads = int(hf_config["hidden_size"]), int(hf_config["num_attention_heads"])
    head_dim = hf_config.get("head_dim")
    fields: dict[str, Any] = dict(
        vocab_size=int(hf_config["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(hf_config["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf_config.get("num_key_value_heads") or heads),
        head_dim=None if head_dim in (None, hidden // heads) else int(head_dim),
        intermediate_size=int(hf_config["intermediate_size"]),
        rope_theta=float(theta),
        rms_norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(hf_config.get("max_position_embeddings", 32_768)),
        qkv_bias=True,
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
        initializer_range=float(hf_config.get("initializer_range", 0.02)),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def _get(tree: Mapping[str, Any], path: str) -> Any:
    for part in path.split("/"):
        tree = tree[part]
    return tree


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split("/")
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def _hf_layer_tensors(sd: Mapping[str, np.ndarray], i: int, cfg: ModelConfig) -> dict:
    d, h, kv, hd, f = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.resolved_head_dim,
        cfg.intermediate_size,
    )
    p = f"model.layers.{i}."
    a = p + "self_attn."
    out = {
        "attn_norm/scale": _take(sd, p + "input_layernorm.weight", (d,)),
        "attn/q_proj/kernel": _take(sd, a + "q_proj.weight", (h * hd, d)).T.reshape(d, h, hd),
        "attn/q_proj/bias": _take(sd, a + "q_proj.bias", (h * hd,)).reshape(h, hd),
        "attn/k_proj/kernel": _take(sd, a + "k_proj.weight", (kv * hd, d)).T.reshape(d, kv, hd),
        "attn/k_proj/bias": _take(sd, a + "k_proj.bias", (kv * hd,)).reshape(kv, hd),
        "attn/v_proj/kernel": _take(sd, a + "v_proj.weight", (kv * hd, d)).T.reshape(d, kv, hd),
        "attn/v_proj/bias": _take(sd, a + "v_proj.bias", (kv * hd,)).reshape(kv, hd),
        "attn/o_proj/kernel": _take(sd, a + "o_proj.weight", (d, h * hd)).T.reshape(h, hd, d),
        "mlp_norm/scale": _take(sd, p + "post_attention_layernorm.weight", (d,)),
        "mlp/gate_proj/kernel": _take(sd, p + "mlp.gate_proj.weight", (f, d)).T,
        "mlp/up_proj/kernel": _take(sd, p + "mlp.up_proj.weight", (f, d)).T,
        "mlp/down_proj/kernel": _take(sd, p + "mlp.down_proj.weight", (d, f)).T,
    }
    return out


def _take(sd: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in sd:
        raise KeyError(
            f"HF state dict has no {name!r}; is this a Qwen2 checkpoint matching the config "
            "(num_hidden_layers, attention bias)? Build the config with model_config_from_hf."
        )
    x = np.asarray(sd[name])
    if x.shape != shape:
        raise ValueError(
            f"{name} has shape {x.shape}, expected {shape} from the ModelConfig; build the "
            "config from the checkpoint's config.json with model_config_from_hf."
        )
    return x


def hf_to_params(
    state_dict: Mapping[str, np.ndarray], cfg: ModelConfig, dtype: Any = None
) -> dict[str, Any]:
    """HF Qwen2 state dict (numpy) -> our unboxed params tree (numpy, `param_dtype`).

    Every HF tensor must be used: leftover names (other than rotary buffers) raise, so a
    checkpoint of a different architecture cannot load half-way.
    """
    dt = np.dtype(dtype or cfg.param_dtype)
    d, v = cfg.hidden_size, cfg.vocab_size
    params: dict[str, Any] = {}
    params["embed"] = {"embedding": _take(state_dict, "model.embed_tokens.weight", (v, d))}
    params["final_norm"] = {"scale": _take(state_dict, "model.norm.weight", (d,))}
    used = {"model.embed_tokens.weight", "model.norm.weight"}
    if not cfg.tie_embeddings:
        params["lm_head"] = {"kernel": _take(state_dict, "lm_head.weight", (v, d)).T}
        used.add("lm_head.weight")
    elif "lm_head.weight" in state_dict:
        if not np.array_equal(
            state_dict["lm_head.weight"], state_dict["model.embed_tokens.weight"]
        ):
            raise ValueError(
                "tie_embeddings=True but lm_head.weight differs from the embedding; "
                "set tie_embeddings=False (tie_word_embeddings in config.json)."
            )
        used.add("lm_head.weight")
    layers = [_hf_layer_tensors(state_dict, i, cfg) for i in range(cfg.num_layers)]
    used.update(
        f"model.layers.{i}.{suffix}" for i in range(cfg.num_layers) for suffix in _HF_LAYER_SUFFIXES
    )
    leftover = sorted(k for k in state_dict if k not in used and not k.endswith("inv_freq"))
    if leftover:
        raise ValueError(
            f"Unused HF tensors {leftover[:5]}{' ...' if len(leftover) > 5 else ''}: the "
            "checkpoint has more layers or modules than the ModelConfig describes; build "
            "the config with model_config_from_hf(config.json)."
        )
    if cfg.scan_layers:
        for key in _LAYER_KEYS:
            _set(params, "layers/" + key, np.stack([lay[key] for lay in layers]))
    else:
        for i, lay in enumerate(layers):
            for key in _LAYER_KEYS:
                _set(params, f"layers_{i}/" + key, lay[key])
    return _map(params, lambda x: np.ascontiguousarray(x, dtype=dt))


_HF_LAYER_SUFFIXES = (
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.k_proj.weight",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.weight",
    "self_attn.v_proj.bias",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)


def _map(tree: Any, fn) -> Any:
    if isinstance(tree, Mapping):
        return {k: _map(v, fn) for k, v in tree.items()}
    return fn(tree)


def params_to_hf(params: Mapping[str, Any], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Our params (boxed or unboxed, jax or numpy) -> HF Qwen2 state dict of float32 numpy.

    The inverse of `hf_to_params`; `tie_embeddings=True` emits no `lm_head.weight`
    (HF re-ties it from `tie_word_embeddings`).
    """
    if "params" in params and "embed" not in params:
        params = params["params"]

    def arr(x: Any) -> np.ndarray:
        if hasattr(x, "unbox"):
            x = x.unbox()
        return np.asarray(x, dtype=np.float32)

    d, h, kv, hd, _ = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.resolved_head_dim,
        cfg.intermediate_size,
    )
    sd: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": arr(params["embed"]["embedding"]),
        "model.norm.weight": arr(params["final_norm"]["scale"]),
    }
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = arr(params["lm_head"]["kernel"]).T
    for i in range(cfg.num_layers):
        if cfg.scan_layers:
            lay = {k: arr(_get(params["layers"], k))[i] for k in _LAYER_KEYS}
        else:
            lay = {k: arr(_get(params[f"layers_{i}"], k)) for k in _LAYER_KEYS}
        p = f"model.layers.{i}."
        a = p + "self_attn."
        sd[p + "input_layernorm.weight"] = lay["attn_norm/scale"]
        sd[a + "q_proj.weight"] = lay["attn/q_proj/kernel"].reshape(d, h * hd).T
        sd[a + "q_proj.bias"] = lay["attn/q_proj/bias"].reshape(h * hd)
        sd[a + "k_proj.weight"] = lay["attn/k_proj/kernel"].reshape(d, kv * hd).T
        sd[a + "k_proj.bias"] = lay["attn/k_proj/bias"].reshape(kv * hd)
        sd[a + "v_proj.weight"] = lay["attn/v_proj/kernel"].reshape(d, kv * hd).T
        sd[a + "v_proj.bias"] = lay["attn/v_proj/bias"].reshape(kv * hd)
        sd[a + "o_proj.weight"] = lay["attn/o_proj/kernel"].reshape(h * hd, d).T
        sd[p + "post_attention_layernorm.weight"] = lay["mlp_norm/scale"]
        sd[p + "mlp.gate_proj.weight"] = lay["mlp/gate_proj/kernel"].T
        sd[p + "mlp.up_proj.weight"] = lay["mlp/up_proj/kernel"].T
        sd[p + "mlp.down_proj.weight"] = lay["mlp/down_proj/kernel"].T
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def hf_config_from_model_config(cfg: ModelConfig) -> dict[str, Any]:
    """The HF Qwen2 `config.json` fields describing `cfg` (for exporting checkpoints)."""
    return {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.resolved_head_dim,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "silu",
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_sliding_window": False,
        "initializer_range": cfg.initializer_range,
    }
