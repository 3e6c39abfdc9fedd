"""The Beam runner of the offline teacher-logit preparation (train/distill_beam.py) against
the local runner: the same records in the same order, read back by the same Grain reader,
the same loss; at k = vocabulary size both equal the online loss with the teacher run
directly. A tiny teacher checkpoint, 5 batches of 2 x 16 tokens, the in-process
DirectRunner."""

from __future__ import annotations

import grain
import jax.numpy as jnp
import numpy as np
import pytest
from test_resolve import write_run

from zen_code_jax.config import base_config
from zen_code_jax.data.batch import Batch
from zen_code_jax.data.teacher_logits import (
    LogitsMeta,
    TeacherLogitsError,
    data_key,
    shard_file,
    shard_paths,
    with_teacher_logits,
)
from zen_code_jax.model import transformer as tm
from zen_code_jax.parallel import make_mesh
from zen_code_jax.resolve import load_model
from zen_code_jax.train import distill_beam
from zen_code_jax.train.distill import distill_sums
from zen_code_jax.train.distill_offline import prepare_teacher_logits

beam = pytest.importorskip("apache_beam")

STEPS, ROWS, SEQ, T = 5, 2, 16, 1.5
CORPUS = "fake-corpus"


class Batches:
    """The student's pipeline stand-in: batch i of a seed (deterministic, checkpointable)."""

    def __init__(self, vocab: int, seed: int) -> None:
        self.vocab, self.seed, self.i = vocab, seed, 0

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        rng = np.random.default_rng((self.seed, self.i))
        self.i += 1
        x = rng.integers(0, self.vocab, (ROWS, SEQ + 1)).astype(np.int32)
        mask = (rng.random((ROWS, SEQ)) > 0.2).astype(np.int32)
        pos = np.broadcast_to(np.arange(SEQ, dtype=np.int32), (ROWS, SEQ)).copy()
        return Batch(x[:, :-1], x[:, 1:], np.ones_like(pos), pos, mask)

    def get_state(self) -> dict:
        return {"i": self.i}

    def set_state(self, state: dict) -> None:
        self.i = int(state["i"])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("exp") / "teacher"
    cfg, _ = write_run(path, tiny_tokenizer, steps=(2,))
    return path, cfg


def _config(teacher_path, runner: str, top_k: int):
    c = base_config()
    c.train.objective = "distill"
    c.train.steps, c.train.seq_len, c.train.global_batch_size = STEPS, SEQ, ROWS
    c.distill.teacher = str(teacher_path)
    c.distill.teacher_dtype = "float32"
    c.distill.temperature = T
    c.distill.chunk = 8  # two strided chunks per row
    c.distill.top_k = top_k
    c.distill.logits_runner = runner
    return c


def _prepare(config, directory, vocab: int) -> LogitsMeta:
    def make_data(corpus, cfg, *, split, seq_len, batch_size, seed, shard_index, shard_count):
        assert (split, seq_len, batch_size) == ("train", SEQ, ROWS)
        return Batches(vocab, seed)

    mesh = make_mesh(config.mesh)
    return prepare_teacher_logits(config, CORPUS, make_data, directory, mesh, log=lambda _: None)


def _read_back(config, directory, vocab: int) -> list[Batch]:
    it = with_teacher_logits(
        Batches(vocab, int(config.seed)),
        directory,
        key=data_key(CORPUS, config, 0, 1),
        temperature=T,
        top_k=int(config.distill.top_k),
        seq_len=SEQ,
    )
    return [next(it) for _ in range(STEPS)]


def _records(paths) -> list[bytes]:
    src = grain.sources.ArrayRecordDataSource([str(p) for p in paths])
    return [src[i] for i in range(len(src))]


def _loss(batch: Batch, vocab: int, **teacher) -> dict[str, float]:
    """The distill sums of a fixed random student against the teacher given."""
    rng = np.random.default_rng(5)
    h = jnp.asarray(rng.normal(size=(ROWS, SEQ, 8)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(8, vocab)).astype(np.float32))
    out = distill_sums(
        h, w, batch.targets, batch.loss_mask, chunk_size=8, temperature=T, kl="forward", **teacher
    )
    return {k: float(v) for k, v in out.items()}


@pytest.mark.parametrize("top_k", ["vocab", 7])
def test_beam_runner_writes_what_the_local_runner_writes(teacher, tmp_path, monkeypatch, top_k):
    path, cfg = teacher
    vocab = cfg.vocab_size
    k = vocab if top_k == "vocab" else top_k
    monkeypatch.setattr(distill_beam, "PART_BATCHES", 2)  # 5 batches -> parts of 2, 2, 1
    local_cfg, beam_cfg = _config(path, "local", k), _config(path, "beam", k)
    meta_l = _prepare(local_cfg, tmp_path / "local", vocab)
    meta_b = _prepare(beam_cfg, tmp_path / "beam", vocab)
    assert meta_b == meta_l and meta_l.batches == STEPS and meta_l.teacher.endswith("@2")
    parts = shard_paths(tmp_path / "beam", 0, 1)
    assert [p.name.split(".part-")[1] for p in parts] == [
        f"{i:05d}-of-00003.array_record" for i in range(3)
    ]
    assert not shard_file(tmp_path / "beam", 0, 1).exists()
    # The parts in order are the local file's records, byte for byte.
    assert _records(parts) == _records([shard_file(tmp_path / "local", 0, 1)])
    # Read back by the same Grain reader: the same rows, the same loss.
    got_b = _read_back(beam_cfg, tmp_path / "beam", vocab)
    got_l = _read_back(local_cfg, tmp_path / "local", vocab)
    for b, loc in zip(got_b, got_l, strict=True):
        np.testing.assert_array_equal(b.inputs, loc.inputs)
        assert _loss(b, vocab, top=b.teacher) == _loss(loc, vocab, top=loc.teacher)
    if top_k != "vocab":
        return
    # At k = V the Beam output gives the online loss: the teacher run directly.
    t = load_model(path, dtype=jnp.float32)
    for b in got_b:
        hidden = tm.Transformer(t.model_cfg).apply(
            {"params": t.params}, b.inputs, b.positions, b.segment_ids, return_hidden=True
        )
        online = _loss(
            b, vocab, teacher_hidden=hidden, teacher_head=tm.lm_head_kernel(t.params, t.model_cfg)
        )
        offline = _loss(b, vocab, top=b.teacher)
        for key in ("ce_sum", "kl_sum", "teacher_ce_sum", "count"):
            np.testing.assert_allclose(offline[key], online[key], rtol=2e-5)
        assert online["kl_sum"] > 0


def test_missing_part_is_a_clear_error(teacher, tmp_path, monkeypatch):
    path, cfg = teacher
    monkeypatch.setattr(distill_beam, "PART_BATCHES", 2)
    config = _config(path, "beam", 3)
    _prepare(config, tmp_path, cfg.vocab_size)
    shard_paths(tmp_path, 0, 1)[1].unlink()
    with pytest.raises(TeacherLogitsError, match="holds 2 of the 3 parts .* did not finish"):
        _read_back(config, tmp_path, cfg.vocab_size)
    config.distill.logits_runner = "spark"
    with pytest.raises(ValueError, match="distill.logits_runner='spark' must be one of"):
        _prepare(config, tmp_path, cfg.vocab_size)


@pytest.mark.slow
def test_beam_runner_with_worker_processes(teacher, tmp_path, monkeypatch):
    """Two DirectRunner worker processes, each loading the teacher: the same records."""
    path, cfg = teacher
    monkeypatch.setattr(distill_beam, "PART_BATCHES", 2)
    local = _config(path, "local", 7)
    _prepare(local, tmp_path / "local", cfg.vocab_size)
    config = _config(path, "beam", 7)
    config.distill.beam_options = (
        "--runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing"
    )
    _prepare(config, tmp_path / "beam", cfg.vocab_size)
    parts = shard_paths(tmp_path / "beam", 0, 1)
    assert len(parts) == 3
    assert _records(parts) == _records([shard_file(tmp_path / "local", 0, 1)])
