"""Horizon-Length Prediction (train/hlp.py): targets against a hand computation and a
brute-force loop, the objective against an independent numpy computation, training-only
heads (checkpoints load for serving without them, logits unchanged), and hlp_weight = 0
leaving the `lm` objective and the params tree exactly as before."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_parallel import FAST, SEQ, make_config

from zen_code_jax.checkpoint import Checkpointer, abstract_like, restore_params_only
from zen_code_jax.config import model_config_from
from zen_code_jax.data.batch import Batch
from zen_code_jax.model.params import AUX_PARAMS_KEY, abstract_params, model_params
from zen_code_jax.model.transformer import Transformer
from zen_code_jax.parallel import make_mesh
from zen_code_jax.train import hlp
from zen_code_jax.train.objectives import auxiliary_init, build_objective, next_token
from zen_code_jax.train.state import create_train_state, unbox
from zen_code_jax.train.step import make_train_step

FM, EOT, FP, FS = 3, 1, 2, 4  # sentinel ids of the hand-built rows (vocab of `tiny`)
SENT = hlp.HlpSentinels(fim_middle=FM, eot=EOT)


def _rows(segments: list[list[int]], length: int) -> tuple[np.ndarray, ...]:
    """One packed row (inputs, segment_ids, positions) from segments, padded with 0."""
    toks, seg, pos = (
        np.zeros(length, np.int32),
        np.zeros(length, np.int32),
        np.zeros(length, np.int32),
    )
    at = 0
    for k, s in enumerate(segments, start=1):
        toks[at : at + len(s)], seg[at : at + len(s)] = s, k
        pos[at : at + len(s)] = np.arange(len(s))
        at += len(s)
    return toks[None], seg[None], pos[None]


def test_targets_by_hand():
    psm = [FP, 50, 51, FS, 60, FM, 70, 71, 72, EOT]  # middle 70 71 72: M = 3
    plain = [80, 81, EOT]
    spm_fragment = [FP, FS, 60, FM, 90, 91]  # context-level fragment, no <eot>: span 90 91
    toks, seg, pos = _rows([psm, plain, spm_fragment], 24)
    t, m = hlp.horizon_targets(toks, seg, pos, SENT, require_end=False)
    want = np.zeros(24, np.float32)
    want[6:9] = [2 / 3, 1 / 3, 0.0]
    want[17:19] = [1 / 2, 0.0]
    np.testing.assert_allclose(np.asarray(t)[0], want, rtol=0, atol=1e-7)
    assert np.flatnonzero(np.asarray(m)[0]).tolist() == [6, 7, 8, 17, 18]
    # document level: a span must be closed by <eot> in the row (the fragment's is not)
    t, m = hlp.horizon_targets(toks, seg, pos, SENT, require_end=True)
    assert np.flatnonzero(np.asarray(m)[0]).tolist() == [6, 7, 8]
    np.testing.assert_allclose(np.asarray(t)[0, 6:9], [2 / 3, 1 / 3, 0.0], atol=1e-7)


def _reference(toks, seg, require_end):
    """Brute force: walk every segment of every row in Python."""
    target, mask = np.zeros(toks.shape, np.float64), np.zeros(toks.shape, np.float64)
    for r in range(toks.shape[0]):
        for s in set(seg[r].tolist()) - {0}:
            idx = np.flatnonzero(seg[r] == s)
            ids = toks[r, idx].tolist()
            if FM not in ids:
                continue
            k = ids.index(FM)
            rest = ids[k + 1 :]
            closed = EOT in rest
            span = idx[k + 1 : k + 1 + (rest.index(EOT) if closed else len(rest))]
            if require_end and not closed:
                continue
            n = len(span)
            for i, j in enumerate(span, start=1):
                target[r, j], mask[r, j] = (n - i) / n, 1.0
    return target, mask


@pytest.mark.parametrize("require_end", [False, True])
def test_targets_match_brute_force(require_end):
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(16):
        segs, left = [], 64
        while left > 3:
            n = int(rng.integers(2, min(20, left) + 1))
            s = rng.integers(5, 40, n).tolist()
            if rng.random() < 0.7:  # a FIM segment: <mid> somewhere, maybe an <eot> later
                s[int(rng.integers(0, n))] = FM
            if rng.random() < 0.6:
                s[int(rng.integers(0, n))] = EOT
            segs.append(s)
            left -= n
        rows.append(_rows(segs, 64))
    toks, seg, pos = (np.concatenate(x) for x in zip(*rows))
    t, m = hlp.horizon_targets(toks, seg, pos, SENT, require_end=require_end)
    rt, rm = _reference(toks, seg, require_end)
    assert rm.sum() > 50
    np.testing.assert_array_equal(np.asarray(m), rm)
    np.testing.assert_allclose(np.asarray(t), rt, rtol=0, atol=1e-7)


def _fim_batch(rows: int = 8) -> Batch:
    toks, seg, pos = [], [], []
    rng = np.random.default_rng(1)
    for _ in range(rows):
        p, s, mid = (rng.integers(10, 200, int(rng.integers(2, 8))).tolist() for _ in range(3))
        doc = [FP, *p, FS, *s, FM, *mid, EOT]
        r = _rows([doc, rng.integers(10, 200, 5).tolist()], SEQ)
        toks.append(r[0]), seg.append(r[1]), pos.append(r[2])
    toks, seg, pos = np.concatenate(toks), np.concatenate(seg), np.concatenate(pos)
    nxt = np.zeros_like(seg, bool)
    nxt[:, :-1] = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] != 0)
    tg = np.where(nxt, np.roll(toks, -1, axis=1), 0).astype(np.int32)
    return Batch(
        inputs=toks, targets=tg, segment_ids=seg, positions=pos, loss_mask=nxt.astype(np.int32)
    )


def _hlp_config(weight: float = 0.5, **train):
    cfg = make_config(**train)
    cfg.train.hlp_weight = weight
    cfg.train.hlp_sentinels = (FM, EOT)
    cfg.fim.level = "document"
    return cfg


@pytest.mark.parametrize("chunk", [0, 8])
def test_objective_against_numpy(chunk):
    cfg = _hlp_config(loss_chunk_size=chunk)
    model_cfg = model_config_from(cfg.model)
    mesh = make_mesh({"data": -1})
    state, _ = create_train_state(model_cfg, cfg, mesh, jax.random.key(0), compiler_options=FAST)
    head = state.params[AUX_PARAMS_KEY][hlp.HEAD_KEY]
    batch = _fim_batch()
    out = build_objective(model_cfg, cfg, mesh).sums(state.params, batch, {})
    # CE and z-loss: the plain `lm` objective on the model's params
    plain = next_token(model_cfg, make_config(loss_chunk_size=chunk), mesh)
    ref = plain.sums(model_params(state.params), batch, {})
    np.testing.assert_allclose(out.metrics["loss"], ref.metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(out.metrics["z_loss"], ref.metrics["z_loss"], rtol=1e-6)
    # HLP: numpy head on the model's hidden states, targets from the brute-force walk
    p = model_params(state.params)
    hidden = Transformer(model_cfg).apply(
        {"params": p}, batch.inputs, batch.positions, batch.segment_ids, return_hidden=True
    )
    pred = np.asarray(hidden, np.float64) @ np.asarray(head["kernel"], np.float64)
    pred = pred[..., 0] + float(head["bias"][0])
    t, m = _reference(batch.inputs, batch.segment_ids, require_end=True)
    l1 = float(np.sum(np.abs(pred - t) * m))
    np.testing.assert_allclose(float(out.metrics["hlp"]), l1, rtol=1e-5)
    assert float(out.metrics["hlp_tokens"]) == m.sum() > 0
    np.testing.assert_allclose(float(out.objective), float(ref.objective) + 0.5 * l1, rtol=1e-5)


def test_weight_zero_is_the_plain_objective():
    cfg = make_config()
    assert cfg.train.hlp_weight == 0.0 and auxiliary_init(model_config_from(cfg.model), cfg) is None
    model_cfg, mesh = model_config_from(cfg.model), make_mesh({"data": -1})
    state, _ = create_train_state(model_cfg, cfg, mesh, jax.random.key(0), compiler_options=FAST)
    assert AUX_PARAMS_KEY not in state.params
    assert model_params(state.params) is state.params
    # the HLP arm starts from the same model weights (the head has its own key)
    hstate, _ = create_train_state(
        model_cfg, _hlp_config(), mesh, jax.random.key(0), compiler_options=FAST
    )
    same = jax.tree.map(np.array_equal, state.params, model_params(hstate.params))
    assert all(jax.tree.leaves(same))
    with pytest.raises(ValueError, match="needs train.objective='lm'"):
        auxiliary_init(model_cfg, _hlp_config(objective="sft"))


def test_head_trains_and_checkpoints_serve_without_it(tmp_path):
    cfg = _hlp_config()
    model_cfg, mesh = model_config_from(cfg.model), make_mesh({"data": -1})
    state, shardings = create_train_state(
        model_cfg, cfg, mesh, jax.random.key(0), compiler_options=FAST
    )
    step = make_train_step(model_cfg, cfg, mesh, shardings, compiler_options=FAST)
    head0 = np.asarray(state.params[AUX_PARAMS_KEY][hlp.HEAD_KEY]["kernel"])
    for _ in range(2):  # step 0 runs at learning rate 0 (warm-up starts at 0)
        state, metrics = step(state, _fim_batch())
    assert float(metrics["hlp"]) > 0 and 0 < float(metrics["hlp_tokens"]) < 1
    head1 = np.asarray(state.params[AUX_PARAMS_KEY][hlp.HEAD_KEY]["kernel"])
    assert not np.array_equal(head0, head1)

    ckpt = Checkpointer(tmp_path / "checkpoints", async_save=False)
    ckpt.save(2, state, None, {"identity": {}, "config": {}})
    # resuming restores the head with everything else
    restored, _ = ckpt.restore_latest(abstract_like(state), None, {})
    np.testing.assert_array_equal(
        np.asarray(restored.params[AUX_PARAMS_KEY][hlp.HEAD_KEY]["kernel"]), head1
    )
    ckpt.close()
    # serving/export read the model only: the tree of a plain model, the same logits
    params, *_ = restore_params_only(tmp_path)
    assert jax.tree.structure(params) == jax.tree.structure(unbox(abstract_params(model_cfg)))
    batch = _fim_batch(2)
    model = Transformer(model_cfg)
    args = (batch.inputs, batch.positions, batch.segment_ids)
    served = model.apply({"params": params}, *args)
    trained = model.apply({"params": model_params(state.params)}, *args)
    np.testing.assert_array_equal(np.asarray(served), np.asarray(trained))
    assert jnp.isfinite(served).all()


def test_init_checkpoint_loads_the_model_and_keeps_the_head(tmp_path, tiny_tokenizer):
    """`train.init_checkpoint` replaces the model's params with the checkpoint's (this
    returned the fresh state unchanged before) and keeps an objective's fresh head."""
    from test_resolve import write_run

    from zen_code_jax.checkpoint import identity
    from zen_code_jax.experiment.arm import ArmData, _init_params
    from zen_code_jax.resolve import parse_checkpoint
    from zen_code_jax.rundir import RunDir

    model_cfg, saved = write_run(tmp_path / "base", tiny_tokenizer, steps=(1,))
    cfg = _hlp_config()
    cfg.train.init_checkpoint = str(tmp_path / "base")
    mesh = make_mesh({"data": -1})
    state, _ = create_train_state(model_cfg, cfg, mesh, jax.random.key(0), compiler_options=FAST)
    head = np.asarray(state.params[AUX_PARAMS_KEY][hlp.HEAD_KEY]["kernel"])
    ref = parse_checkpoint(str(tmp_path / "base"))
    data = ArmData(cfg, model_cfg, None, tiny_tokenizer, None, ref)
    ident = identity(model_cfg, tiny_tokenizer)
    run = RunDir(tmp_path / "ft")
    out = _init_params(cfg, state, run_dir=run, data=data, ident=ident, arm="ft")
    got = jax.tree.leaves(model_params(out.params))
    for a, b in zip(got, jax.tree.leaves(saved[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(
        np.asarray(out.params[AUX_PARAMS_KEY][hlp.HEAD_KEY]["kernel"]), head
    )


def _save_run(path, model_cfg, cfg, tokenizer, *, seed: int = 3):
    """A run directory whose checkpoint (step 1) holds `cfg`'s full train state."""
    from zen_code_jax.checkpoint import identity, tokenizer_to_json
    from zen_code_jax.config import config_to_dict
    from zen_code_jax.rundir import RunDir

    run = RunDir(path)
    run.write_config(config_to_dict(cfg))
    tokenizer.save(run.tokenizer_dir)
    mesh = make_mesh({"data": -1})
    state, _ = create_train_state(model_cfg, cfg, mesh, jax.random.key(seed), compiler_options=FAST)
    state = state.replace(step=jnp.ones((), jnp.int32))
    ckpt = Checkpointer(run.checkpoints, async_save=False)
    meta = {
        "identity": identity(model_cfg, tokenizer),
        "config": config_to_dict(cfg),
        "rng": [0, 1],
    }
    ckpt.save(1, state, None, meta, tokenizer_to_json(tokenizer))
    ckpt.close()
    return run, state


@pytest.mark.parametrize("saved_weight, run_weight", [(0.5, 0.0), (0.0, 0.5)])
def test_resume_with_a_changed_hlp_weight_is_refused(
    tmp_path, tiny_tokenizer, saved_weight, run_weight
):
    """Resuming a run directory with train.hlp_weight switched between 0 and > 0 (the
    head and its AdamW moments appear or vanish) is a one-line error naming the key, the
    trained value and the fix; the checkpoint stays where it is and still resumes with the
    original value. Before, Orbax's failure was taken for corruption: the step was moved to
    checkpoints_corrupt/ and the run started over from scratch."""
    from zen_code_jax.checkpoint import CheckpointMismatchError, identity

    saved_cfg, run_cfg = _hlp_config(saved_weight), _hlp_config(run_weight)
    model_cfg = model_config_from(saved_cfg.model)
    run, saved = _save_run(tmp_path / "run", model_cfg, saved_cfg, tiny_tokenizer)
    mesh = make_mesh({"data": -1})
    fresh, _ = create_train_state(
        model_cfg, run_cfg, mesh, jax.random.key(0), compiler_options=FAST
    )
    ckpt = Checkpointer(run.checkpoints, async_save=False)
    ident = identity(model_cfg, tiny_tokenizer)
    with pytest.raises(
        CheckpointMismatchError,
        match=rf"aux_heads/hlp/kernel \(64, 1\).*trained with train\.hlp_weight={saved_weight}; "
        r"resume with the same value, or use a fresh --workdir \(train\.init_checkpoint=",
    ) as err:
        ckpt.restore_latest(abstract_like(fresh), None, ident)
    assert "\n" not in str(err.value) and "optimizer.clip_norm" not in str(err.value)
    assert ckpt.steps() == [1] and not (tmp_path / "run" / "checkpoints_corrupt").exists()
    # the same value resumes it, bit for bit
    same_cfg, _ = create_train_state(
        model_cfg, saved_cfg, mesh, jax.random.key(0), compiler_options=FAST
    )
    restored, meta = ckpt.restore_latest(abstract_like(same_cfg), None, ident)
    ckpt.close()
    assert meta["step"] == 1
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_with_a_changed_clip_norm_is_refused(tmp_path, tiny_tokenizer):
    """optimizer.clip_norm 0 vs > 0 adds or removes a stage of the optimizer chain (the
    opt_state tree's indices shift): the same refusal, naming that key."""
    from zen_code_jax.checkpoint import CheckpointMismatchError, identity

    saved_cfg, run_cfg = make_config(), make_config()
    run_cfg.optimizer.clip_norm = 0.0
    model_cfg = model_config_from(saved_cfg.model)
    run, _ = _save_run(tmp_path / "run", model_cfg, saved_cfg, tiny_tokenizer)
    mesh = make_mesh({"data": -1})
    fresh, _ = create_train_state(
        model_cfg, run_cfg, mesh, jax.random.key(0), compiler_options=FAST
    )
    ckpt = Checkpointer(run.checkpoints, async_save=False)
    with pytest.raises(CheckpointMismatchError, match=r"optimizer\.clip_norm=1\.0; resume"):
        ckpt.restore_latest(abstract_like(fresh), None, identity(model_cfg, tiny_tokenizer))
    ckpt.close()
    assert not (tmp_path / "run" / "checkpoints_corrupt").exists()


def test_init_checkpoint_from_a_run_with_the_head_into_one_without(tmp_path, tiny_tokenizer):
    """The other direction of `test_init_checkpoint_loads_the_model_and_keeps_the_head`:
    a run trained with HLP initializes a plain run with its model weights only (the head
    and every optimizer moment stay behind), and an HLP run from it gets a fresh head."""
    from zen_code_jax.checkpoint import identity
    from zen_code_jax.experiment.arm import ArmData, _init_params
    from zen_code_jax.resolve import parse_checkpoint
    from zen_code_jax.rundir import RunDir

    base_cfg = _hlp_config(0.5)
    model_cfg = model_config_from(base_cfg.model)
    _, saved = _save_run(tmp_path / "base", model_cfg, base_cfg, tiny_tokenizer)
    mesh = make_mesh({"data": -1})
    ref = parse_checkpoint(str(tmp_path / "base"))
    ident = identity(model_cfg, tiny_tokenizer)
    for weight in (0.0, 0.25):
        cfg = _hlp_config(weight)
        cfg.train.init_checkpoint = str(tmp_path / "base")
        state, _ = create_train_state(
            model_cfg, cfg, mesh, jax.random.key(0), compiler_options=FAST
        )
        data = ArmData(cfg, model_cfg, None, tiny_tokenizer, None, ref)
        out = _init_params(
            cfg, state, run_dir=RunDir(tmp_path / f"ft{weight}"), data=data, ident=ident, arm="ft"
        )
        assert jax.tree.structure(out.params) == jax.tree.structure(state.params)
        got, want = model_params(out.params), model_params(saved.params)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        if weight:  # this run's own fresh head, not the checkpoint's trained one
            np.testing.assert_array_equal(
                np.asarray(out.params[AUX_PARAMS_KEY][hlp.HEAD_KEY]["kernel"]),
                np.asarray(state.params[AUX_PARAMS_KEY][hlp.HEAD_KEY]["kernel"]),
            )
        else:
            assert AUX_PARAMS_KEY not in out.params
