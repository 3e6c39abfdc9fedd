"""The distillation objective against a naive numpy reference (train/distill.py).

The reference computes both models' full logits, then per token, in float64 with plain
loops over the vocabulary: softmax at temperature T, the KL in the asked direction, the CE,
the mask. The jax side forms logits in strided chunks, over the k + 1 buckets of the
offline form, across micro-batches and 8 simulated devices with the teacher placed
differently from the student.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from test_parallel import FAST, make_batch, make_config

from zen_code_jax.config import model_config_from
from zen_code_jax.data.batch import TeacherTopK
from zen_code_jax.model import transformer as tm
from zen_code_jax.model.config import get_preset
from zen_code_jax.parallel import make_mesh
from zen_code_jax.train.distill import (
    build_distill,
    check_teacher_tokenizer,
    distill_sums,
    teacher_topk,
)
from zen_code_jax.train.state import create_train_state
from zen_code_jax.train.step import make_train_step

RTOL = 2e-5


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def reference(student, teacher, targets, mask, temperature, kl):
    """(ce_sum, kl_sum, teacher_ce_sum, count), naively, in float64."""
    ce = kl_sum = tce = 0.0
    rows, length, vocab = student.shape
    for b in range(rows):
        for s in range(length):
            if not mask[b, s]:
                continue
            ls = _np_log_softmax(student[b, s])
            lt = _np_log_softmax(teacher[b, s])
            ce -= ls[targets[b, s]]
            tce -= lt[targets[b, s]]
            q = _np_log_softmax(student[b, s] / temperature)
            p = _np_log_softmax(teacher[b, s] / temperature)
            a, c = (p, q) if kl == "forward" else (q, p)
            kl_sum += sum(np.exp(a[v]) * (a[v] - c[v]) for v in range(vocab))
    return ce, kl_sum, tce, float(mask.sum())


def reference_topk(student, teacher, mask, temperature, kl, k):
    """The offline KL over k + 1 buckets (top-k of the teacher + the rest), naively."""
    total = 0.0
    rows, length, vocab = student.shape
    for b in range(rows):
        for s in range(length):
            if not mask[b, s]:
                continue
            q = np.exp(_np_log_softmax(student[b, s] / temperature))
            p = np.exp(_np_log_softmax(teacher[b, s] / temperature))
            top = np.argsort(-p, kind="stable")[:k]
            rest = np.setdiff1d(np.arange(vocab), top)
            pb = np.append(p[top], p[rest].sum())
            qb = np.append(q[top], q[rest].sum())
            a, c = (pb, qb) if kl == "forward" else (qb, pb)
            total += sum(a[i] * (np.log(a[i]) - np.log(c[i])) for i in range(len(a)) if a[i] > 0)
    return total


def _random_case(seed=0, rows=3, length=11, dim=8, tdim=12, vocab=40):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(rows, length, dim)).astype(np.float32)
    w = rng.normal(size=(dim, vocab)).astype(np.float32)
    th = rng.normal(size=(rows, length, tdim)).astype(np.float32)
    tw = (2 * rng.normal(size=(tdim, vocab))).astype(np.float32)
    targets = rng.integers(0, vocab, (rows, length)).astype(np.int32)
    mask = (rng.random((rows, length)) < 0.7).astype(np.int32)
    return h, w, th, tw, targets, mask


@pytest.mark.parametrize("kl", ["forward", "reverse"])
# chunk 4 leaves a padded last chunk (11 positions); 64 is one chunk.
@pytest.mark.parametrize("temperature, chunk", [(1.0, 1), (2.5, 4), (0.7, 64)])
def test_online_sums_match_numpy(kl, temperature, chunk):
    h, w, th, tw, targets, mask = _random_case()
    out = distill_sums(
        jnp.asarray(h), jnp.asarray(w), targets, mask, chunk_size=chunk, temperature=temperature,
        kl=kl, teacher_hidden=jnp.asarray(th), teacher_head=jnp.asarray(tw),
    )  # fmt: skip
    ce, kls, tce, count = reference(h @ w, th @ tw, targets, mask, temperature, kl)
    np.testing.assert_allclose(float(out["ce_sum"]), ce, rtol=RTOL)
    np.testing.assert_allclose(float(out["kl_sum"]), kls, rtol=RTOL)
    np.testing.assert_allclose(float(out["teacher_ce_sum"]), tce, rtol=RTOL)
    assert float(out["count"]) == count
    assert kls > 0.1  # the two distributions really differ


@pytest.mark.parametrize("kl", ["forward", "reverse"])
def test_chunked_gradient_equals_whole_logits_gradient(kl):
    """The chunked, rematerialized backward = the gradient of the whole-logits formula."""
    h, w, th, tw, targets, mask = _random_case(seed=1)
    t_logits = jnp.asarray(th @ tw)

    def chunked(h_, w_):
        out = distill_sums(
            h_, w_, targets, mask, chunk_size=3, temperature=2.0, kl=kl,
            teacher_hidden=jnp.asarray(th), teacher_head=jnp.asarray(tw),
        )  # fmt: skip
        return out["ce_sum"] + 3.0 * out["kl_sum"]

    def whole(h_, w_):
        from zen_code_jax.train.distill import kl_full
        from zen_code_jax.train.loss import _token_terms

        logits = jnp.einsum("bsd,dv->bsv", h_, w_)
        ce, _ = _token_terms(logits, targets)
        kl_tok = kl_full(logits, t_logits, 2.0, kl)
        return jnp.sum(ce * mask) + 3.0 * jnp.sum(kl_tok * mask)

    g1 = jax.grad(chunked, argnums=(0, 1))(jnp.asarray(h), jnp.asarray(w))
    g2 = jax.grad(whole, argnums=(0, 1))(jnp.asarray(h), jnp.asarray(w))
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kl", ["forward", "reverse"])
def test_offline_full_k_equals_online(kl):
    h, w, th, tw, targets, mask = _random_case(seed=2)
    vocab = w.shape[1]
    kwargs = dict(chunk_size=4, temperature=1.7, kl=kl)
    online = distill_sums(
        jnp.asarray(h), jnp.asarray(w), targets, mask, teacher_hidden=jnp.asarray(th),
        teacher_head=jnp.asarray(tw), **kwargs,
    )  # fmt: skip
    top = teacher_topk(jnp.asarray(th @ tw), targets, vocab, 1.7)
    offline = distill_sums(jnp.asarray(h), jnp.asarray(w), targets, mask, top=top, **kwargs)
    for key in ("ce_sum", "kl_sum", "teacher_ce_sum", "count"):
        np.testing.assert_allclose(float(offline[key]), float(online[key]), rtol=RTOL)
    # The gradients too: the student learns the same thing from the stored logits.
    grad = [
        jax.grad(lambda hh, **kw: distill_sums(hh, jnp.asarray(w), targets, mask, **kw, **kwargs)["kl_sum"])
        for _ in range(2)
    ]  # fmt: skip
    g_on = grad[0](jnp.asarray(h), teacher_hidden=jnp.asarray(th), teacher_head=jnp.asarray(tw))
    g_off = grad[1](jnp.asarray(h), top=top)
    np.testing.assert_allclose(np.asarray(g_off), np.asarray(g_on), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kl", ["forward", "reverse"])
@pytest.mark.parametrize("k", [1, 5])
def test_offline_top_k_buckets_match_numpy(kl, k):
    h, w, th, tw, targets, mask = _random_case(seed=3)
    top = teacher_topk(jnp.asarray(th @ tw), targets, k, 1.3)
    assert top.ids.shape == (*targets.shape, k)
    out = distill_sums(
        jnp.asarray(h), jnp.asarray(w), targets, mask, top=top, chunk_size=4, temperature=1.3, kl=kl
    )
    want = reference_topk(h @ w, th @ tw, mask, 1.3, kl, k)
    np.testing.assert_allclose(float(out["kl_sum"]), want, rtol=RTOL)
    # The stored rest is the mass outside the top k, from the logits (not 1 - sum).
    p = np.exp(_np_log_softmax((th @ tw) / 1.3))
    rest = 1.0 - np.sort(p, axis=-1)[..., ::-1][..., :k].sum(-1)
    np.testing.assert_allclose(np.exp(np.asarray(top.rest)), rest, rtol=1e-4)
    _, _, tce, _ = reference(h @ w, th @ tw, targets, np.ones_like(mask), 1.0, kl)
    np.testing.assert_allclose(float(np.asarray(top.nll).sum()), tce, rtol=RTOL)


def _teacher_params(teacher_cfg, seed=7):
    dummy = np.zeros((1, 1), np.int32)
    variables = tm.Transformer(teacher_cfg).init(jax.random.key(seed), dummy, dummy, dummy + 1)
    return jax.tree.map(np.asarray, nn_unbox(variables["params"]))


def nn_unbox(tree):
    import flax.linen as nn

    return nn.unbox(tree)


def _distill_config(kl="forward", **train):
    cfg = make_config(objective="distill", **train)
    cfg.distill.teacher = "preset:tiny"  # shapes from the preset, weights placed by the test
    cfg.distill.teacher_dtype = "float32"
    cfg.distill.alpha = 0.25
    cfg.distill.temperature = 2.0
    cfg.distill.kl = kl
    cfg.distill.chunk = 8
    return cfg


def _step_metrics(cfg, mesh, teacher_params, rules=None):
    mcfg = model_config_from(cfg.model)
    state, shardings = create_train_state(mcfg, cfg, mesh, jax.random.key(0), compiler_options=FAST)
    objective = build_distill(mcfg, cfg, mesh, rules=rules)
    extra = jax.tree.map(jax.device_put, teacher_params, objective.frozen.shardings)
    step_fn = make_train_step(
        mcfg, cfg, mesh, shardings, donate=False, compiler_options=FAST, objective=objective
    )
    batch = make_batch(mcfg.vocab_size, seed=3)
    _, metrics = step_fn(state, batch, extra)
    return state, batch, {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize("kl", ["reverse"])  # forward: the sums tests and the offline step test
def test_train_step_metrics_match_numpy_on_8_devices(kl):
    """The real jitted step: 1 device whole batch vs 8 devices (data 2, fsdp 2, tensor 2)
    with 2 micro-batches and the teacher replicated (the student is sharded); both equal
    the numpy reference on the two models' logits."""
    teacher_cfg = get_preset("tiny")
    params_t = _teacher_params(teacher_cfg)
    cfg1 = _distill_config(kl)
    state, batch, m1 = _step_metrics(cfg1, make_mesh({"data": 1}, jax.devices()[:1]), params_t)
    cfg8 = _distill_config(kl, micro_batch_size=4)
    mesh8 = make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])
    replicated = [(name, None) for name, _ in _rules()]
    _, _, m8 = _step_metrics(cfg8, mesh8, params_t, rules=replicated)

    mcfg = model_config_from(cfg1.model)
    args = (batch.inputs, batch.positions, batch.segment_ids)
    s_logits = np.asarray(tm.Transformer(mcfg).apply({"params": state.params}, *args))
    t_logits = np.asarray(tm.Transformer(teacher_cfg).apply({"params": params_t}, *args))
    ce, kls, tce, count = reference(s_logits, t_logits, batch.targets, batch.loss_mask, 2.0, kl)
    for m in (m1, m8):
        assert m["tokens"] == count
        np.testing.assert_allclose(m["ce"], ce / count, rtol=RTOL)
        np.testing.assert_allclose(m["kl"], kls / count, rtol=RTOL)
        np.testing.assert_allclose(m["teacher_ce"], tce / count, rtol=RTOL)
        want = 0.25 * ce / count + 0.75 * 4.0 * kls / count + 1e-4 * m["z_loss"]
        np.testing.assert_allclose(m["loss"], want, rtol=RTOL)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)


def _rules():
    from zen_code_jax.parallel.rules import DEFAULT_RULES

    return list(DEFAULT_RULES)


def test_teacher_is_sharded_by_its_rules_and_counted():
    from zen_code_jax.train.plan import frozen_bytes_per_device

    cfg = _distill_config()
    mcfg = model_config_from(cfg.model)
    mesh = make_mesh({"data": 2, "fsdp": 4}, jax.devices()[:8])
    sharded = build_distill(mcfg, cfg, mesh)
    replicated = build_distill(mcfg, cfg, mesh, rules=[(n, None) for n, _ in _rules()])
    n_bytes = 4 * sum(int(np.prod(a.shape)) for a in jax.tree.leaves(sharded.frozen.abstract))
    assert frozen_bytes_per_device(replicated.frozen) == n_bytes
    assert frozen_bytes_per_device(sharded.frozen) < n_bytes / 2  # split over fsdp
    emb = sharded.frozen.shardings["embed"]["embedding"]
    assert isinstance(emb, NamedSharding) and emb.spec != PartitionSpec()
    with pytest.raises(ValueError, match="names a preset, not weights"):
        sharded.frozen.load()


class _Tok:
    def __init__(self, fp: str, vocab: int) -> None:
        self.fp, self.vocab_size = fp, vocab

    def fingerprint(self) -> str:
        return self.fp


def test_tokenizer_mismatch_is_an_error_naming_both(tiny_tokenizer):
    check_teacher_tokenizer(tiny_tokenizer, tiny_tokenizer, "arm:teacher")
    other = _Tok("0123abcd", 512)
    with pytest.raises(ValueError) as e:
        check_teacher_tokenizer(other, tiny_tokenizer, "arm:teacher")
    msg = str(e.value)
    assert "0123abcd" in msg and tiny_tokenizer.fingerprint() in msg and "arm:teacher" in msg
    cfg = _distill_config()
    cfg.distill.teacher = "preset:cpu_small"  # vocab 8192 vs the student's 512
    with pytest.raises(ValueError, match="vocab_size 8192, the student 512"):
        build_distill(model_config_from(cfg.model), cfg, make_mesh({"data": 1}, jax.devices()[:1]))


def test_bad_settings_are_one_line_errors():
    cfg = _distill_config()
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    mcfg = model_config_from(cfg.model)
    for key, value, fragment in [
        ("kl", "sideways", "distill.kl='sideways' must be one of"),
        ("alpha", 1.5, "distill.alpha=1.5 must be in"),
        ("temperature", 0.0, "must be positive"),
        ("teacher", "", "needs a teacher"),
    ]:
        bad = _distill_config()
        bad.distill[key] = value
        with pytest.raises(ValueError, match=fragment):
            build_distill(mcfg, bad, mesh)
    assert build_distill(mcfg, cfg, mesh).name == "distill"


def test_teacher_topk_batch_field_reaches_the_step():
    """Offline: batches carry `Batch.teacher`; the step shards it like the other fields."""
    cfg = _distill_config()
    cfg.distill.logits_dir = "/unused"  # offline: no teacher params in the step
    mcfg = model_config_from(cfg.model)
    teacher_cfg = get_preset("tiny")
    params_t = _teacher_params(teacher_cfg)
    batch = make_batch(mcfg.vocab_size, seed=3)
    args = (batch.inputs, batch.positions, batch.segment_ids)
    t_logits = tm.Transformer(teacher_cfg).apply({"params": params_t}, *args)
    top = jax.tree.map(np.asarray, teacher_topk(t_logits, batch.targets, mcfg.vocab_size, 2.0))
    mesh = make_mesh({"data": 2, "fsdp": 2}, jax.devices()[:4])
    state, shardings = create_train_state(mcfg, cfg, mesh, jax.random.key(0), compiler_options=FAST)
    step_fn = make_train_step(mcfg, cfg, mesh, shardings, donate=False, compiler_options=FAST)
    assert step_fn.objective.frozen.empty and step_fn.objective.teacher_topk
    _, m_off = step_fn(state, batch.replace(teacher=TeacherTopK(**vars_of(top))), {})
    _, _, m_on = _step_metrics(_distill_config(), mesh, params_t)
    for key in ("loss", "ce", "kl", "teacher_ce", "grad_norm"):
        np.testing.assert_allclose(m_off[key], m_on[key], rtol=1e-5)


def vars_of(top: TeacherTopK) -> dict:
    return {k: getattr(top, k) for k in ("ids", "logp", "rest", "nll")}
