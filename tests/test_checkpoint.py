"""Orbax checkpointing: round trip with a data iterator, keep policy, corrupt and mismatched
checkpoints (fall back or refuse, never load silently)."""

from __future__ import annotations

import shutil

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zen_code_jax.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointMismatchError,
    abstract_like,
)
from zen_code_jax.tracking import SummaryWriter, read_scalars, truncate_after
from zen_code_jax.train.loop import LazyMetrics

IDENT = {"model": {"hidden_size": 64, "vocab_size": 512}, "tokenizer_fingerprint": "abc123"}


def make_state(step: int, seed: int = 0) -> dict:
    k = jax.random.key(seed)
    return {
        "step": jnp.asarray(step, jnp.int32),
        "params": {"w": jax.random.normal(k, (4, 3)), "b": jnp.arange(3, dtype=jnp.bfloat16)},
        "opt_state": {"mu": jnp.full((4, 3), 0.5), "count": jnp.asarray(step, jnp.int32)},
    }


def make_iter():
    ds = grain.MapDataset.range(1000).shuffle(seed=3).map(lambda x: x * 2).batch(4)
    return iter(ds.to_iter_dataset())


def same(a, b) -> bool:
    return all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    ) and jax.tree.structure(a) == jax.tree.structure(b)


def save_steps(ckpt, steps, it=None):
    it = it or make_iter()
    for s in steps:
        next(it)
        ckpt.save(s, make_state(s, seed=s), it, {"identity": IDENT, "rng": [0, s]})
    ckpt.wait()
    return it


def test_round_trip_state_iterator_and_meta(tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints", keep_last=3)
    it = make_iter()
    for _ in range(5):
        next(it)
    state = make_state(5, seed=5)
    ckpt.save(
        5, state, it, {"identity": IDENT, "rng": [1, 2]}, {"fingerprint": "abc123", "files": {}}
    )
    expected_next = [next(it) for _ in range(3)]  # the batches after the checkpoint
    ckpt.wait()

    fresh = make_iter()
    restored, meta = ckpt.restore_latest(abstract_like(make_state(0)), fresh, IDENT)
    assert same(restored, state)
    assert meta["step"] == 5 and meta["rng"] == [1, 2]
    for want in expected_next:
        np.testing.assert_array_equal(next(fresh), want)
    ckpt.close()


def test_no_checkpoint_returns_none(tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert ckpt.restore_latest(abstract_like(make_state(0)), make_iter(), IDENT) is None


def test_keeps_last_n_plus_every_kth(tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints", keep_last=2, keep_every=4, async_save=False)
    save_steps(ckpt, range(1, 10))
    assert ckpt.steps() == [4, 8, 9]  # last two (8, 9) plus multiples of 4 (4, 8)


def test_mismatched_model_or_tokenizer_is_refused(tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    save_steps(ckpt, [1, 2])
    other_model = {**IDENT, "model": {"hidden_size": 128, "vocab_size": 512}}
    with pytest.raises(CheckpointMismatchError, match=r"hidden_size: checkpoint 64 vs run 128"):
        ckpt.restore_latest(abstract_like(make_state(0)), make_iter(), other_model)
    other_tok = {**IDENT, "tokenizer_fingerprint": "zzz"}
    with pytest.raises(CheckpointMismatchError, match=r"tokenizer differs.*fresh --workdir"):
        ckpt.restore_latest(abstract_like(make_state(0)), make_iter(), other_tok)
    assert ckpt.steps() == [1, 2]  # refused, not quarantined


@pytest.mark.parametrize("damage", ["delete_state", "truncate_arrays", "garble_meta"])
def test_corrupt_latest_falls_back_to_previous(tmp_path, damage, capsys):
    ckpt = Checkpointer(tmp_path / "checkpoints", keep_last=3)
    save_steps(ckpt, [1, 2, 3])
    step3 = tmp_path / "checkpoints" / "3"
    if damage == "delete_state":  # a partial checkpoint: an item is missing
        shutil.rmtree(step3 / "state")
    elif damage == "truncate_arrays":
        for f in (step3 / "state").rglob("*"):
            if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
                f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    else:
        (step3 / "meta" / "metadata").write_text("{not json")
    ckpt2 = Checkpointer(tmp_path / "checkpoints", keep_last=3)
    restored, meta = ckpt2.restore_latest(abstract_like(make_state(0)), make_iter(), IDENT)
    assert meta["step"] == 2 and same(restored, make_state(2, seed=2))
    assert "checkpoint step 3 is corrupt or partial" in capsys.readouterr().out
    assert (tmp_path / "checkpoints_corrupt" / "3").is_dir() and ckpt2.steps() == [1, 2]
    # The run can save step 3 again after the fallback.
    ckpt2.save(3, make_state(3, seed=3), make_iter(), {"identity": IDENT, "rng": [0, 3]})
    ckpt2.wait()
    assert ckpt2.steps() == [1, 2, 3]


def test_all_corrupt_is_an_error_naming_the_fix(tmp_path):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    save_steps(ckpt, [1])
    shutil.rmtree(tmp_path / "checkpoints" / "1" / "state")
    with pytest.raises(CheckpointError, match=r"Every checkpoint.*unreadable.*Delete"):
        Checkpointer(tmp_path / "checkpoints").restore_latest(
            abstract_like(make_state(0)), make_iter(), IDENT
        )


def test_unfinished_async_save_is_invisible(tmp_path):
    """A step directory still being written (Orbax's tmp name) is never restored."""
    ckpt = Checkpointer(tmp_path / "checkpoints")
    save_steps(ckpt, [1])
    shutil.copytree(
        tmp_path / "checkpoints" / "1", tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-123"
    )
    ckpt2 = Checkpointer(tmp_path / "checkpoints")
    assert ckpt2.steps() == [1]
    _, meta = ckpt2.restore_latest(abstract_like(make_state(0)), make_iter(), IDENT)
    assert meta["step"] == 1


def test_summary_writer_and_lazy_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    w = SummaryWriter(tmp_path)
    lazy = LazyMetrics()
    assert lazy.push(1, {"loss": jnp.float32(2.5)}) is None  # nothing ready yet
    step, m = lazy.push(2, {"loss": jnp.float32(2.0)})
    assert (step, m) == (1, {"loss": 2.5})
    w.scalars(step, m, prefix="train/")
    w.scalars(2, lazy.flush()[1], prefix="train/")
    w.hparams({"arm": "fim50", "fim.rate": 0.5}, {"heldout/bpb": 1.25}, step=2)
    w.close()
    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    assert [e.value for e in ea.Scalars("train/loss")] == [2.5, 2.0]
    assert ea.Scalars("final/heldout/bpb")[0].value == 1.25
    assert "_hparams_/session_start_info" in ea.Tags()["tensors"]
    truncate_after(tmp_path / "metrics.jsonl", 1)
    assert [r["step"] for r in read_scalars(tmp_path / "metrics.jsonl")] == [1]


def test_restore_params_only_at_step_sharded_and_cast(tmp_path):
    """Only `params` come back (no optimizer moments), at the asked step, in the asked
    sharding and dtype; an unknown step is an error naming the available ones."""
    from zen_code_jax.checkpoint import restore_params_only

    ckpt = Checkpointer(tmp_path / "checkpoints", async_save=False)
    save_steps(ckpt, [1, 2])
    ckpt.close()
    params, meta, _, step = restore_params_only(tmp_path)
    assert step == 2 and meta["step"] == 2 and set(params) == {"w", "b"}
    assert same(params, make_state(2, seed=2)["params"])

    mesh = jax.make_mesh((1,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params, _, _, step = restore_params_only(
        tmp_path,
        step=1,
        sharding_fn=lambda abstract: jax.tree.map(lambda _: sharding, abstract),
        dtype=jnp.float32,
    )
    want = make_state(1, seed=1)["params"]
    assert step == 1
    assert all(x.dtype == jnp.float32 and x.sharding == sharding for x in jax.tree.leaves(params))
    np.testing.assert_array_equal(np.asarray(params["w"]), np.asarray(want["w"]))
    np.testing.assert_array_equal(np.asarray(params["b"]), np.asarray(want["b"]).astype(np.float32))
    with pytest.raises(CheckpointError, match=r"available steps: \[1, 2\]"):
        restore_params_only(tmp_path, step=7)


def test_identity_treats_fields_added_later_as_their_defaults(tmp_path):
    """A checkpoint written before a ModelConfig field existed matches a run that keeps the
    field's default, and is still refused when the run sets it to something else."""
    from zen_code_jax.checkpoint import CheckpointMismatchError, _check_identity
    from zen_code_jax.model.config import get_preset

    cfg = get_preset("tiny")
    new = {"model": cfg.to_dict(), "tokenizer_fingerprint": "abc"}
    old_model = {k: v for k, v in cfg.to_dict().items() if k != "context_parallel"}
    old = {"model": old_model, "tokenizer_fingerprint": "abc"}
    _check_identity(old, new, tmp_path)  # the default: accepted
    changed = {
        "model": cfg.replace(context_parallel="off").to_dict(),
        "tokenizer_fingerprint": "abc",
    }
    with pytest.raises(CheckpointMismatchError, match="context_parallel"):
        _check_identity(old, changed, tmp_path)


def test_changed_state_tree_is_refused_and_the_checkpoint_stays(tmp_path):
    """A config that adds leaves to the train state (an objective's head under
    params/aux_heads, e.g. train.hlp_weight 0 -> 0.5) restored into a run directory
    trained without them: a clear error naming the key and the fix, the checkpoint left
    where it is (this used to fail in Orbax, be taken for corruption and be moved aside,
    so the run silently started over)."""
    ckpt = Checkpointer(tmp_path / "checkpoints")
    save_steps(ckpt, [1, 2])
    grown = make_state(0)
    grown["params"]["aux_heads"] = {"hlp": {"kernel": jnp.zeros((4, 1)), "bias": jnp.zeros(1)}}
    with pytest.raises(
        CheckpointMismatchError,
        match=r"only in this run: params/aux_heads/hlp/bias \(1,\).*trained with "
        r"train\.hlp_weight=0\.0; resume with the same value.*fresh --workdir.*"
        r"init_checkpoint=.*left in place",
    ):
        ckpt.restore_latest(abstract_like(grown), make_iter(), IDENT)
    reshaped = make_state(0)
    reshaped["opt_state"]["mu"] = jnp.zeros((4, 2))
    with pytest.raises(CheckpointMismatchError, match=r"opt_state/mu \(4, 3\) vs \(4, 2\)"):
        ckpt.restore_latest(abstract_like(reshaped), make_iter(), IDENT)
    assert ckpt.steps() == [1, 2]  # refused, not quarantined
    assert not (tmp_path / "checkpoints_corrupt").exists()
    restored, meta = ckpt.restore_latest(abstract_like(make_state(0)), make_iter(), IDENT)
    assert meta["step"] == 2 and same(restored, make_state(2, seed=2))


def test_params_only_checkpoint_is_not_resumed_as_a_train_state(tmp_path):
    """An HF import's run directory holds {step, params} only: training in it is refused
    (it was quarantined as corrupt and the run started from scratch) and the message
    points at train.init_checkpoint."""
    ckpt = Checkpointer(tmp_path / "checkpoints", async_save=False, compress=False)
    state = make_state(0)
    ckpt.save(0, {"step": state["step"], "params": state["params"]}, None, {"identity": IDENT})
    with pytest.raises(
        CheckpointMismatchError, match=r"model params only.*init_checkpoint=.*left in place"
    ):
        ckpt.restore_latest(abstract_like(state), None, IDENT)
    assert ckpt.steps() == [0] and not (tmp_path / "checkpoints_corrupt").exists()
