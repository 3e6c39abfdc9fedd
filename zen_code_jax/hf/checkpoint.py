"""Reading a Hugging Face model directory: config.json, the safetensors index, validation.

An HF directory holds `config.json`, either `model.safetensors` or sharded
`model-0000k-of-0000n.safetensors` plus `model.safetensors.index.json`, `tokenizer.json`
and `generation_config.json`. `HFCheckpoint.open(dir)` checks everything that can be
checked without reading a tensor (supported architecture, every indexed file present,
every expected tensor present with the right shape, one floating dtype) so a bad
directory fails before anything is written, with one line naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from safetensors import safe_open

from zen_code_jax.model.config import ModelConfig
from zen_code_jax.model.hf_convert import model_config_from_hf

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# safetensors dtype names -> our dtype names (the ones ModelConfig accepts).
DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_MOE_KEYS = ("num_experts", "num_local_experts", "moe_intermediate_size", "n_routed_experts")


class HFFormatError(ValueError):
    """An HF directory this package cannot read; the message names the file and the fix."""


def expected_hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF Qwen2 tensor name -> its shape, for `cfg` (what a checkpoint must hold)."""
    d, h, kv, hd, f, v = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.resolved_head_dim,
        cfg.intermediate_size,
        cfg.vocab_size,
    )
    out: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (v, d),
        "model.norm.weight": (d,),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = (v, d)
    for i in range(cfg.num_layers):
        p, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
        out |= {
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            a + "q_proj.weight": (h * hd, d),
            a + "q_proj.bias": (h * hd,),
            a + "k_proj.weight": (kv * hd, d),
            a + "k_proj.bias": (kv * hd,),
            a + "v_proj.weight": (kv * hd, d),
            a + "v_proj.bias": (kv * hd,),
            a + "o_proj.weight": (d, h * hd),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        }
    return out


def read_hf_config(hf_dir: Path) -> dict[str, Any]:
    path = hf_dir / CONFIG_FILE
    if not path.is_file():
        raise HFFormatError(
            f"{path} is missing: {hf_dir} is not a Hugging Face model directory (pass the "
            "folder holding config.json and the *.safetensors files)."
        )
    return json.loads(path.read_text(encoding="utf-8"))


def model_config_of(hf_config: dict[str, Any], where: Path, **overrides: Any) -> ModelConfig:
    """ModelConfig of an HF config.json; unsupported features name the file."""
    moe = [k for k in _MOE_KEYS if hf_config.get(k)]
    if moe:
        raise HFFormatError(
            f"{where}: mixture-of-experts checkpoints ({', '.join(moe)}) are not supported; "
            "this decoder is dense Qwen2. Use a dense Qwen2/Qwen2.5(-Coder) checkpoint."
        )
    try:
        return model_config_from_hf(hf_config, **overrides)
    except (ValueError, KeyError) as e:
        raise HFFormatError(f"{where}: {e}") from None


@dataclasses.dataclass
class HFCheckpoint:
    """A validated HF directory: its config, ModelConfig, tensor -> file map and dtype."""

    directory: Path
    hf_config: dict[str, Any]
    model_cfg: ModelConfig
    weight_map: dict[str, str]  # tensor name -> file name (relative to directory)
    dtype: str  # the checkpoint's floating dtype ("bfloat16", ...)

    @classmethod
    def open(cls, hf_dir: str | Path, **model_overrides: Any) -> HFCheckpoint:
        """Validate `hf_dir` (see the module docstring) and describe it.

        `model_overrides` set our own ModelConfig fields (scan_layers, remat_policy, ...);
        by default parameters and compute keep the checkpoint's dtype.
        """
        d = Path(hf_dir)
        hf_config = read_hf_config(d)
        weight_map = _weight_map(d)
        dtypes, shapes = _headers(d, weight_map)
        kinds = sorted(set(dtypes.values()))
        bad = [k for k in kinds if k not in DTYPES]
        if bad:
            name = next(n for n, k in dtypes.items() if k in bad)
            raise HFFormatError(
                f"{d / weight_map[name]}: tensor {name} has dtype {bad[0]}; only F32, BF16 "
                "and F16 checkpoints load (dequantize the checkpoint first)."
            )
        if len(kinds) > 1:
            raise HFFormatError(
                f"{d}: the checkpoint mixes dtypes {kinds}; re-save it in one dtype "
                "(model.to(dtype).save_pretrained(...))."
            )
        dtype = DTYPES[kinds[0]] if kinds else "float32"
        fields = {"dtype": dtype, "param_dtype": dtype} | model_overrides
        cfg = model_config_of(hf_config, d / CONFIG_FILE, **fields)
        expected = expected_hf_shapes(cfg)
        for name, shape in expected.items():
            if name not in shapes:
                raise HFFormatError(
                    f"{d}: tensor {name} is in no safetensors file (config.json expects "
                    f"{cfg.num_layers} layers); the checkpoint is incomplete or not Qwen2."
                )
            if shapes[name] != shape:
                raise HFFormatError(
                    f"{d / weight_map[name]}: tensor {name} has shape {shapes[name]}, but "
                    f"config.json implies {shape}; the config and the weights disagree."
                )
        extra = sorted(
            n
            for n in shapes
            if n not in expected and not n.endswith("inv_freq") and n != "lm_head.weight"
        )
        if extra:
            raise HFFormatError(
                f"{d / weight_map[extra[0]]}: unexpected tensors {extra[:3]} (e.g. "
                "num_hidden_layers too small in config.json, or another architecture)."
            )
        return cls(d, hf_config, cfg, weight_map, dtype)

    def files(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    def total_bytes(self) -> int:
        return sum((self.directory / f).stat().st_size for f in self.files())


def _weight_map(d: Path) -> dict[str, str]:
    index = d / INDEX_FILE
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        wm = dict(data.get("weight_map") or {})
        if not wm:
            raise HFFormatError(f"{index} has no weight_map; re-save the checkpoint.")
        for f in sorted(set(wm.values())):
            if not (d / f).is_file():
                raise HFFormatError(
                    f"{index} names {f}, which is not in {d}: a shard is missing; copy "
                    "every model-*.safetensors file listed in the index."
                )
        return wm
    single = d / SINGLE_FILE
    if single.is_file():
        with safe_open(single, framework="numpy") as f:
            return {k: SINGLE_FILE for k in f.keys()}
    shards = sorted(p.name for p in d.glob("model-*-of-*.safetensors"))
    hint = f" (found {shards[:3]} but no {INDEX_FILE})" if shards else ""
    raise HFFormatError(
        f"{d} has neither {SINGLE_FILE} nor {INDEX_FILE}{hint}; copy the checkpoint's "
        "safetensors files and their index (PyTorch .bin checkpoints are not read)."
    )


def _headers(d: Path, weight_map: dict[str, str]) -> tuple[dict[str, str], dict[str, tuple]]:
    """Dtype and shape of every tensor, read from the safetensors headers only."""
    dtypes: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    by_file: dict[str, list[str]] = {}
    for name, f in weight_map.items():
        by_file.setdefault(f, []).append(name)
    for f, names in sorted(by_file.items()):
        try:
            with safe_open(d / f, framework="numpy") as h:
                present = set(h.keys())
                for name in names:
                    if name not in present:
                        raise HFFormatError(
                            f"{d / f}: the index says it holds {name}, but it does not; the "
                            "shard is from another checkpoint or truncated. Re-copy it."
                        )
                    s = h.get_slice(name)
                    dtypes[name] = s.get_dtype()
                    shapes[name] = tuple(int(x) for x in s.get_shape())
        except HFFormatError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise HFFormatError(f"{d / f} is not a readable safetensors file ({e}).") from None
    return dtypes, shapes
