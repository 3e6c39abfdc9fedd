"""The accelerator check's CPU-testable parts: cuDNN's packed-segment tables, the `auto`
decision, the `data.max_bytes` cap, and `launch/gpu_check.sh --dry-run` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zen_code_jax.config import base_config
from zen_code_jax.data import sources
from zen_code_jax.model import attention as att

ROOT = Path(__file__).resolve().parent.parent


def packed_mask_from_offsets(offsets: np.ndarray, lengths: np.ndarray, s: int) -> np.ndarray:
    """cuDNN's packed ("THD") rule, written independently: run m covers
    [offsets[m], offsets[m] + lengths[m]); query i sees key j iff both lie in one run and
    j <= i. Tokens in no run see nothing."""
    b = offsets.shape[0]
    mask = np.zeros((b, s, s), bool)
    for r in range(b):
        for o, n in zip(offsets[r, :-1], lengths[r], strict=True):
            if n < 0:
                continue
            for i in range(o, o + n):
                mask[r, i, o : i + 1] = True
    return mask


def random_rows(rng: np.random.Generator, b: int, s: int) -> np.ndarray:
    """Packed rows with padding at the end, in the middle, and non-consecutive ids."""
    seg = np.zeros((b, s), np.int32)
    for r in range(b):
        i, sid = 0, int(rng.integers(1, 4))
        while i < s:
            n = int(rng.integers(1, s // 3 + 1))
            if rng.random() < 0.25:
                i += n  # a stretch of padding (0)
                continue
            seg[r, i : i + n] = sid
            sid += int(rng.integers(1, 3))
            i += n
    return seg


@pytest.mark.parametrize("seed", range(6))
def test_segment_offsets_express_exactly_the_segment_mask(seed):
    rng = np.random.default_rng(seed)
    b, s = 3, 40
    seg = random_rows(rng, b, s)
    offsets, lengths, n = (np.asarray(x) for x in att.segment_offsets(jnp.asarray(seg), s))
    pos = np.broadcast_to(np.arange(s), (b, s))
    want = np.asarray(att.attention_mask(*(jnp.asarray(x) for x in (seg, seg, pos, pos))))
    np.testing.assert_array_equal(packed_mask_from_offsets(offsets, lengths, s), want)
    runs = [int(((seg[r] != 0) & (seg[r] != np.r_[0, seg[r, :-1]])).sum()) for r in range(b)]
    assert n.tolist() == runs
    for r in range(b):  # -1 filled after the runs; offset M+1 closes the last run
        k = runs[r]
        assert (lengths[r, k:] == -1).all() and (offsets[r, k + 1 :] == -1).all()
        if k:
            assert offsets[r, k] == offsets[r, k - 1] + lengths[r, k - 1]


def test_segment_offsets_report_rows_with_more_runs_than_the_table():
    seg = jnp.asarray([[1, 1, 2, 2, 3, 3, 4, 4], [1, 1, 1, 1, 0, 0, 0, 0]], jnp.int32)
    offsets, lengths, n = att.segment_offsets(seg, 2)
    assert n.tolist() == [4, 1]  # row 0 overflows M=2: _cudnn_attention falls back
    assert offsets.shape == (2, 3) and lengths.shape == (2, 2)
    assert offsets[1].tolist() == [0, 4, -1] and lengths[1].tolist() == [4, -1]


def test_auto_picks_cudnn_on_gpu_only_once_segments_are_verified(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    kw = dict(position_mode=False, q_len=4096, block_size=512, dtype=jnp.bfloat16)
    monkeypatch.delenv(att.CUDNN_SEGMENTS_ENV, raising=False)
    assert att.resolve_impl("auto", **kw) == ("cudnn" if att.CUDNN_SEGMENTS_VERIFIED else "chunked")
    monkeypatch.setenv(att.CUDNN_SEGMENTS_ENV, "0")
    assert att.resolve_impl("auto", **kw) == "chunked"
    monkeypatch.setenv(att.CUDNN_SEGMENTS_ENV, "1")
    assert att.resolve_impl("auto", **kw) == "cudnn"
    assert att.resolve_impl("auto", **{**kw, "dtype": jnp.float32}) == "chunked"
    assert att.resolve_impl("auto", **{**kw, "position_mode": True}) == "chunked"
    monkeypatch.setenv(att.CUDNN_SEGMENTS_ENV, "yes")
    with pytest.raises(ValueError, match="ZEN_CUDNN_SEGMENTS"):
        att.resolve_impl("auto", **kw)


def test_max_bytes_caps_the_listing_deterministically():
    cfg = base_config().data
    full = sources.list_corpus(cfg)
    cap = sum(f.size for f in full.files) // 5
    cfg.max_bytes = cap
    a, b = sources.list_corpus(cfg), sources.list_corpus(cfg)
    assert 0 < sum(f.size for f in a.files) <= cap
    assert len(a.files) < len(full.files)
    assert [f.path for f in a.files] == [f.path for f in b.files]
    assert a.path_skips["max_bytes"] == len(full.files) - len(a.files)
    assert a.signature() != full.signature()  # so the prepared-corpus cache key moves


STAGES = ("install", "env", "attention", "train", "decode", "ablation")


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_stage_and_writes_its_result(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "OUT")}
    env.update(PYTHON=sys.executable, ZEN_CHECK_WORK=str(tmp_path / "work"))
    (tmp_path / "work").mkdir()
    proc = subprocess.run(
        ["bash", str(ROOT / "launch" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = (out / "log.txt").read_text() if (out / "log.txt").is_file() else proc.stdout
    assert proc.returncode == 0, log[-4000:]
    status = json.loads((out / "status.json").read_text())
    for stage in STAGES:
        assert status[stage]["ok"], (stage, status[stage], log[-4000:])
    for name in ("env", "attention", "train", "decode"):
        res = json.loads((out / f"{name}.json").read_text())
        assert res.get("done", name == "env") and "error" not in res, (name, res)
    attn = json.loads((out / "attention.json").read_text())
    row = attn["rows"][0]
    assert row["chunked"]["cross_segment_leak"] == 0.0 and row["chunked"]["padding_max_abs"] == 0
    assert attn["cudnn_segments_ok"] is False  # no GPU: never claims cuDNN
    train = json.loads((out / "train.json").read_text())
    assert train["best"]["tokens_per_s"] > 0
    decode = json.loads((out / "decode.json").read_text())
    assert {r["batch"] for r in decode["runs"] if "decode_tokens_per_s" in r} == {1, 16}
    abl = json.loads((out / "ablation.json").read_text())
    assert set(abl["arms"]) == {"fim0", "fim25", "fim50", "fim75"}
    assert all(abl["arms"].values()), abl["arms"]
    assert (out / "report.md").is_file() and (out / "report.png").is_file()
    files = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert len([p for p in files if p.name != "log.txt"]) <= 8  # the device tool's limit
