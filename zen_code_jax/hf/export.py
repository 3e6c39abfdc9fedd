"""Write our parameters as an HF Qwen2 directory: sharded safetensors + index + configs.

The output loads with `transformers.AutoModelForCausalLM.from_pretrained(OUT)` (strictly:
no missing or unexpected keys), and so with vLLM and llama.cpp's converter. Tensors are
fetched one at a time (a stacked layer tensor one layer at a time) from the sharded
arrays, mapped back with the inverse of `load.py`'s transpose + reshape, cast to the
export dtype and gathered into shards of at most `max_shard_size` bytes, so host memory
stays at about one shard. Everything goes into a temporary sibling directory renamed at
the end: a crash leaves no half-written model.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from zen_code_jax.hf.checkpoint import CONFIG_FILE, GENERATION_CONFIG_FILE, INDEX_FILE, SINGLE_FILE
from zen_code_jax.hf.load import leaf_sources
from zen_code_jax.model.config import ModelConfig
from zen_code_jax.model.hf_convert import hf_config_from_model_config

NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str | int) -> int:
    """'5GB' -> 5e9 bytes (HF's convention: KB/MB/GB are powers of 10, KiB/MiB/GiB of 2)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"--max_shard_size={text!r}: give a size like 5GB, 500MB or 2GiB.")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()])


def _get(tree: Any, path: str) -> Any:
    for part in path.split("/"):
        tree = tree[part]
    return tree


def hf_tensor_plan(cfg: ModelConfig) -> list[tuple[str, str, int | None, tuple, tuple]]:
    """(HF name, our leaf path, layer index or None, split, perm) in HF's order."""
    plan = []
    for path, (names, split, perm) in leaf_sources(cfg).items():
        stacked = path.startswith("layers/")
        for i, name in enumerate(names):
            plan.append((name, path, i if stacked else None, split, perm))

    def order(item: tuple) -> tuple:
        m = re.match(r"model\.layers\.(\d+)\.", item[0])
        if m:
            return (1, int(m.group(1)), item[0])
        return (0 if "embed" in item[0] else 2, 0, item[0])

    return sorted(plan, key=order)


def to_hf_tensor(leaf: Any, layer: int | None, split: tuple, perm: tuple, dtype: Any) -> np.ndarray:
    """One HF tensor from our (possibly sharded, possibly stacked) leaf."""
    x = leaf[layer] if layer is not None else leaf
    x = np.asarray(x)  # gathers this one tensor to the host
    inverse = tuple(int(i) for i in np.argsort(perm))
    hf_shape = tuple(math.prod(g) for g in split)
    return np.ascontiguousarray(x.transpose(inverse).reshape(hf_shape).astype(dtype))


def hf_config_dict(cfg: ModelConfig, dtype: str, tokenizer: Any | None) -> dict[str, Any]:
    out = hf_config_from_model_config(cfg) | {"torch_dtype": dtype}
    if tokenizer is not None:
        out |= {"bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id}
    return out


def export_params(
    params: Any,
    cfg: ModelConfig,
    out_dir: str | Path,
    *,
    tokenizer: Any | None = None,
    dtype: str | None = None,
    max_shard_size: str | int = "5GB",
    generation_config: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `params` (our tree) as an HF directory at `out_dir`; returns it."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass a new --hf_dir or delete it first.")
    if "params" in params and "embed" not in params:
        params = params["params"]
    dtype = dtype or cfg.param_dtype
    if dtype not in NP_DTYPES:
        raise ValueError(f"--dtype={dtype!r}: use one of {sorted(NP_DTYPES)}.")
    np_dtype = np.dtype(NP_DTYPES[dtype])
    limit = parse_size(max_shard_size)
    plan = hf_tensor_plan(cfg)
    sizes = [
        math.prod(math.prod(g) for g in split) * np_dtype.itemsize for _, _, _, split, _ in plan
    ]
    groups: list[list[int]] = [[]]
    used = 0
    for k, size in enumerate(sizes):
        if groups[-1] and used + size > limit:
            groups.append([])
            used = 0
        groups[-1].append(k)
        used += size
    n = len(groups)
    names = (
        [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        weight_map: dict[str, str] = {}
        for fname, group in zip(names, groups):
            tensors = {}
            for k in group:
                name, path, layer, split, perm = plan[k]
                tensors[name] = to_hf_tensor(_get(params, path), layer, split, perm, np_dtype)
                weight_map[name] = fname
            save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
            del tensors
        if n > 1:
            index = {"metadata": {"total_size": int(sum(sizes))}, "weight_map": weight_map}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        (tmp / CONFIG_FILE).write_text(
            json.dumps(hf_config_dict(cfg, dtype, tokenizer), indent=2, sort_keys=True) + "\n"
        )
        gen = dict(generation_config or {})
        if tokenizer is not None:
            gen.setdefault("bos_token_id", tokenizer.eot_id)
            gen.setdefault("eos_token_id", tokenizer.eot_id)
        (tmp / GENERATION_CONFIG_FILE).write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)
            if (
                getattr(tokenizer, "backend", "") == "hf"
                and not (tmp / "tokenizer_config.json").exists()
            ):
                eot = tokenizer.decode([tokenizer.eot_id])
                tcfg = {
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "eos_token": eot,
                    "pad_token": eot,
                }
                (tmp / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
