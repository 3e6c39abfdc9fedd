"""Whole-process peak memory of the HF `import` and `export` commands (slow).

The bound of docs/hf.md: a command's peak resident set stays within the baseline (a
Python process that imports jax and our package and does nothing) + the parameters + 1.2
x the largest tensor. Measured like `/usr/bin/time`: `ru_maxrss` of the one child,
collected with `os.wait4`, so memory-mapped shard pages, compile buffers and the
checkpoint save all count. The fixture is a random bf16 Qwen2 saved by transformers into
several shards, with a small vocabulary so the layers (not the embedding) dominate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_hf import QWEN_SPECIALS, _stdlib_texts

from zen_code_jax.hf.safetensors_io import SafetensorsReader

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
# One CPU device, as a user runs the command (conftest's 8 simulated devices would not be).
ENV = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
}


def build_small_tokenizer(out: Path) -> None:
    """A byte-level BPE of ~1,000 pieces plus Qwen2.5-Coder's special tokens (by name)."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_stdlib_texts()[:6], trainer)
    tok.add_special_tokens(QWEN_SPECIALS)
    tok.save(str(out / "tokenizer.json"))


# Forks and waits on the command, like /usr/bin/time. A direct child of pytest would not
# do: Linux carries a process's peak RSS across exec, so the child would start at pytest's.
_TIME = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(f"maxrss_kib={usage.ru_maxrss} rc={os.waitstatus_to_exitcode(status)}")
"""


def peak_rss_bytes(args: list[str]) -> int:
    """Peak RSS of one process running `args` (its `ru_maxrss`, as /usr/bin/time reports)."""
    r = subprocess.run(
        [sys.executable, "-c", _TIME, *args], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    last = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0 and last.endswith(" rc=0"), r.stdout[-2000:] + r.stderr[-3000:]
    return int(last.split()[0].split("=")[1]) * 1024  # KiB on Linux


def _tensors(d: Path) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with SafetensorsReader(f) as r:
            out |= {k: r.get_slice(k)[:] for k in r.keys()}
    return out


@pytest.mark.slow
def test_import_and_export_commands_peak_rss_within_bound(tmp_path):
    hf = tmp_path / "hf"
    cfg = transformers.Qwen2Config(
        vocab_size=32_000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
        num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=4096,
        tie_word_embeddings=False, use_sliding_window=False, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(hf, max_shard_size="120MB")
    del model
    build_small_tokenizer(hf)
    shards = sorted(hf.glob("model-*.safetensors"))
    assert len(shards) >= 3
    sizes = []
    for f in shards:
        with SafetensorsReader(f) as r:
            sizes += [int(np.prod(r.get_slice(k).shape)) * 2 for k in r.keys()]
    params, largest = sum(sizes), max(sizes)
    assert params > 290e6 and largest == 32_000 * 1024 * 2  # bf16, ~155M parameters

    py = sys.executable
    base = peak_rss_bytes([py, "-c", "import jax, zen_code_jax.hf.__main__"])
    bound = base + params + 1.2 * largest
    run, out = tmp_path / "run", tmp_path / "export"
    imp = peak_rss_bytes(
        [py, "-m", "zen_code_jax.hf", "import", "--hf_dir", str(hf), "--run_dir", str(run)]
    )
    exp = peak_rss_bytes(
        [py, "-m", "zen_code_jax.hf", "export", "--run_dir", str(run), "--hf_dir", str(out),
         "--max_shard_size", "120MB"]
    )  # fmt: skip
    report = {"baseline": base, "params": params, "largest": largest, "import": imp,
              "export": exp, "bound": bound}  # fmt: skip
    print(json.dumps(report))
    assert imp <= bound, report
    assert exp <= bound, report
    # The round trip is exact: every exported tensor is the original's, bit for bit.
    a, b = _tensors(hf), _tensors(out)
    assert sorted(a) == sorted(b)
    for name, x in a.items():
        assert x.dtype == b[name].dtype and np.array_equal(
            x.view(np.uint16), b[name].view(np.uint16)
        )
