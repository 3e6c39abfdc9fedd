"""Write our parameters as an HF Qwen2 directory: sharded safetensors + index + configs.

The output loads with `transformers.AutoModelForCausalLM.from_pretrained(OUT)` (strictly:
no missing or unexpected keys), and so with vLLM and llama.cpp's converter. Tensors are
fetched one at a time (a stacked layer tensor one layer at a time) from the sharded
arrays, mapped back with the inverse of `load.py`'s transpose + reshape, cast to the
export dtype and written straight to its place in its output file (shards of at most
`max_shard_size` bytes, laid out up front; `safetensors_io.SafetensorsWriter`), so host
memory holds one tensor, never a shard. `params` may also be a function of the leaf path
(`export_run` restores one leaf at a time with it, so the parameters are never all
resident). Everything goes into a temporary sibling directory renamed at the end: a
crash leaves no half-written model.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from zen_code_jax.hf.checkpoint import CONFIG_FILE, GENERATION_CONFIG_FILE, INDEX_FILE, SINGLE_FILE
from zen_code_jax.hf.load import leaf_sources
from zen_code_jax.hf.safetensors_io import SafetensorsWriter
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
    """One HF tensor from our (possibly sharded, possibly stacked) leaf.

    Only this tensor reaches the host: a leaf on one CPU device is viewed in place (no
    copy, no compiled slice); otherwise the layer is sliced on the devices, then gathered.
    """
    single_cpu = (
        isinstance(leaf, jax.Array)
        and len(leaf.sharding.device_set) == 1
        and next(iter(leaf.sharding.device_set)).platform == "cpu"
    )
    if single_cpu or not isinstance(leaf, jax.Array):
        x = np.asarray(leaf)
        x = x[layer] if layer is not None else x
    else:
        x = np.asarray(leaf[layer] if layer is not None else leaf)
    inverse = tuple(int(i) for i in np.argsort(perm))
    hf_shape = tuple(math.prod(g) for g in split)
    return np.ascontiguousarray(x.transpose(inverse).reshape(hf_shape)).astype(dtype, copy=False)


def hf_config_dict(cfg: ModelConfig, dtype: str, tokenizer: Any | None) -> dict[str, Any]:
    out = hf_config_from_model_config(cfg) | {"torch_dtype": dtype}
    if tokenizer is not None:
        out |= {"bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id}
    return out


def export_params(
    params: Mapping[str, Any] | Callable[[str], Any],
    cfg: ModelConfig,
    out_dir: str | Path,
    *,
    tokenizer: Any | None = None,
    dtype: str | None = None,
    max_shard_size: str | int = "5GB",
    generation_config: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `params` as an HF directory at `out_dir`; returns it.

    `params`: our tree, or a function of a leaf path ("layers/mlp/up_proj/kernel") giving
    that leaf, called once per leaf (so a caller can fetch leaves one at a time).
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass a new --hf_dir or delete it first.")
    if isinstance(params, Mapping) and "params" in params and "embed" not in params:
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
    get_leaf: Callable[[str], Any] = (
        functools.partial(_get, params) if isinstance(params, Mapping) else params
    )
    writers: list[SafetensorsWriter] = []
    try:
        weight_map: dict[str, str] = {}
        where: dict[int, SafetensorsWriter] = {}
        for fname, group in zip(names, groups):
            specs = []
            for k in group:
                name, _, _, split, _ = plan[k]
                specs.append((name, np_dtype, tuple(math.prod(g) for g in split)))
                weight_map[name] = fname
            writers.append(SafetensorsWriter(tmp / fname, specs, metadata={"format": "pt"}))
            where |= {k: writers[-1] for k in group}
        # Leaf by leaf (each leaf fetched once), one tensor in flight.
        by_leaf: dict[str, list[int]] = {}
        for k, (_, path, _, _, _) in enumerate(plan):
            by_leaf.setdefault(path, []).append(k)
        for path, ks in by_leaf.items():
            leaf = get_leaf(path)
            for k in ks:
                name, _, layer, split, perm = plan[k]
                where[k].write(name, to_hf_tensor(leaf, layer, split, perm, np_dtype))
            del leaf
            if not isinstance(params, Mapping):
                gc.collect()  # a fetched leaf can sit in a reference cycle: free it now
        for w in writers:
            w.close()
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
        for w in writers:
            w.close(check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return out
