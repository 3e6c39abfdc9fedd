"""The Beam runner against the local one: same files kept, same shards, identical batches."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from zen_code_jax.config import base_config
from zen_code_jax.data.pipeline import build_dataset
from zen_code_jax.data.prepare import prepare_corpus

beam = pytest.importorskip("apache_beam")

VOCAB = 300
BEAM_1 = "--runner=DirectRunner --direct_num_workers=1 --direct_running_mode=in_memory"
BEAM_2 = "--runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing"


def _cfg(runner: str, options: str = ""):
    c = base_config()
    c.data.source = "stdlib"
    c.data.max_files = 120
    c.data.heldout_fraction = 0.2
    c.data.num_prepare_processes = 1
    c.data.prepare_runner = runner
    if options:
        c.data.beam_options = options
    c.train.seq_len, c.train.global_batch_size, c.model.vocab_size = 128, 4, VOCAB
    return c


def _kept(corpus) -> dict[str, list[tuple[str, str]]]:
    out = {}
    for split in ("train", "heldout"):
        src = corpus.source(split)
        out[split] = [(src[i]["repo"], src[i]["path"]) for i in range(len(src))]
    return out


def _comparable(m) -> dict:
    d = m.to_dict()
    d.pop("timings"), d.pop("processes")
    return d


@pytest.mark.slow
def test_beam_and_local_prepare_the_same_corpus(tmp_path) -> None:
    corpora = {}
    for name, runner, opts in (
        ("local", "local", ""),
        ("beam1", "beam", BEAM_1),
        ("beam2", "beam", BEAM_2),
    ):
        cfg = _cfg(runner, opts)
        corpora[name] = (cfg, prepare_corpus(cfg.data, VOCAB, tmp_path / name))
    _, local = corpora["local"]
    assert local.manifest["counts"]["kept"] > 50
    for name in ("beam1", "beam2"):
        cfg, other = corpora[name]
        assert _kept(other) == _kept(local), name
        assert _comparable(other.manifest) == _comparable(local.manifest), name
        assert other.tokenizer.fingerprint() == local.tokenizer.fingerprint()
        for split in ("train", "heldout"):
            for shard in local.manifest["splits"][split]["shards"]:
                assert (other.directory / shard).read_bytes() == (
                    local.directory / shard
                ).read_bytes()
            assert np.array_equal(
                np.load(other.directory / f"{split}.groups.npy"),
                np.load(local.directory / f"{split}.groups.npy"),
            )
        # What training sees: the Grain pipeline's first batches are identical.
        got = list(itertools.islice(iter(build_dataset(other, cfg, num_workers=0)), 6))
        want = list(
            itertools.islice(iter(build_dataset(local, corpora["local"][0], num_workers=0)), 6)
        )
        for a, b in zip(got, want):
            for field in ("inputs", "targets", "segment_ids", "positions", "loss_mask"):
                assert np.array_equal(getattr(a, field), getattr(b, field)), (name, field)
    assert json.dumps(local.manifest["dedup"]["near"]["candidate_probability"])
