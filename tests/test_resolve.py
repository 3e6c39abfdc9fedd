"""One way to name a checkpoint (`zen_code_jax.resolve`): the names it parses, the errors
it gives, and the one loader (params only, placed and typed as asked, with every fact of
the run). The run directories here are written the way `run_arm` / `import_hf` write
them (config.json, tokenizer/, checkpoints/<step>/ with params, meta and tokenizer)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zen_code_jax.checkpoint import Checkpointer, identity, tokenizer_to_json
from zen_code_jax.config import base_config, config_to_dict, model_config_from, model_group
from zen_code_jax.infer.engine import InferenceEngine, random_params
from zen_code_jax.parallel.mesh import make_mesh
from zen_code_jax.resolve import (
    CheckpointRef,
    CheckpointSpecError,
    load_model,
    parse_checkpoint,
    run_facts,
    stop_ids,
)
from zen_code_jax.rundir import RunDir


def write_run(path: Path, tok, *, steps=(0,), repo_format: str = "qwen2.5", seed: int = 0):
    """A run directory with params-only checkpoints at `steps` (tiny preset)."""
    config = base_config()
    config.name, config.arm = "exp", path.name
    config.model = model_group("tiny")
    config.data.repo_format = repo_format
    cfg = model_config_from(config.model)
    run = RunDir(path)
    run.write_config(config_to_dict(config))
    tok.save(run.tokenizer_dir)
    ckpt = Checkpointer(run.checkpoints, async_save=False)
    params = {}
    for s in steps:
        params[s] = random_params(cfg, seed=seed + s, scale=0.2)
        meta = {
            "identity": identity(cfg, tok),
            "config": config_to_dict(config),
            "rng": np.asarray(jax.random.key_data(jax.random.key(0))).tolist(),
        }
        ckpt.save(
            s,
            {"step": np.asarray(s, np.int32), "params": params[s]},
            None,
            meta,
            tokenizer_to_json(tok),
        )
    ckpt.close()
    return cfg, params


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("exp") / "base"
    cfg, params = write_run(path, tiny_tokenizer, steps=(1, 3))
    return path, cfg, params


def _same(a, b) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_parse_every_form(run, tmp_path):
    path, _, _ = run
    assert parse_checkpoint(path) == CheckpointRef("run", path, None, str(path))
    step_dir = path / "checkpoints" / "3"
    assert parse_checkpoint(step_dir).kind == "run"
    assert parse_checkpoint(step_dir).path == path and parse_checkpoint(step_dir).step == 3
    assert parse_checkpoint(path / "checkpoints").path == path
    ref = parse_checkpoint("arm:base", run_dir=path.parent / "repo8k")
    assert (ref.kind, ref.path, ref.arm) == ("run", path, "base") and ref.has_checkpoint()
    assert not parse_checkpoint("arm:nope", run_dir=path).has_checkpoint()
    hf = parse_checkpoint("hf:/some/dir")
    assert (hf.kind, hf.path, hf.step) == ("hf", Path("/some/dir"), None)
    hf_dir = tmp_path / "hfdir"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    (hf_dir / "model.safetensors").write_bytes(b"")
    assert parse_checkpoint(hf_dir).kind == "hf"
    assert parse_checkpoint(path, step=1).step == 1


@pytest.mark.parametrize(
    "spec, kwargs, match",
    [
        ("", {}, "Empty checkpoint name"),
        ("hf:", {}, "names no directory"),
        ("arm:", {"run_dir": "/w/exp/a"}, "arm:NAME"),
        ("arm:base", {}, "needs the run directory"),
        ("hf:/x", {"step": 2}, "no steps"),
    ],
)
def test_bad_names_are_one_line_errors(spec, kwargs, match):
    with pytest.raises(CheckpointSpecError, match=match) as e:
        parse_checkpoint(spec, **kwargs)
    assert "\n" not in str(e.value)


def test_bad_paths_are_one_line_errors(run, tmp_path):
    path, _, _ = run
    with pytest.raises(CheckpointSpecError, match="names step 3 but step 1"):
        parse_checkpoint(path / "checkpoints" / "3", step=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointSpecError, match="holds neither checkpoints"):
        parse_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointSpecError, match="no such directory"):
        load_model(tmp_path / "missing")
    with pytest.raises(CheckpointSpecError, match="arm 'nope' has no checkpoint"):
        load_model("arm:nope", run_dir=path)


def test_load_model_params_only_with_every_fact(run, tiny_tokenizer):
    path, cfg, params = run
    m = load_model(path)
    assert m.step == 3 and _same(m.params, params[3]) and set(m.params) == set(params[3])
    assert m.model_cfg == cfg and m.tokenizer.fingerprint() == tiny_tokenizer.fingerprint()
    assert m.repo_format == "qwen2.5" and m.config.data.repo_format == "qwen2.5"
    assert m.stop_ids == stop_ids(tiny_tokenizer) and tiny_tokenizer.eot_id in m.stop_ids
    assert m.identity == identity(cfg, tiny_tokenizer)
    at1 = load_model(path / "checkpoints" / "1")
    assert at1.step == 1 and _same(at1.params, params[1])
    assert load_model(path, step=1).step == 1

    mesh = make_mesh({"data": 1, "tensor": 2}, devices=jax.devices()[:2])
    sharded = load_model(path, mesh=mesh, dtype=jnp.bfloat16)
    emb = sharded.params["embed"]["embedding"]
    assert emb.dtype == jnp.bfloat16 and emb.sharding.mesh.shape == mesh.shape
    assert len(emb.sharding.device_set) == 2
    np.testing.assert_array_equal(
        np.asarray(emb, np.float32),
        np.asarray(params[3]["embed"]["embedding"].astype(jnp.bfloat16), np.float32),
    )

    facts = run_facts(path)
    assert (facts.step, facts.repo_format, facts.model_cfg) == (3, "qwen2.5", cfg)
    with pytest.raises(CheckpointSpecError, match="architecture differs"):
        load_model(path, model_cfg=cfg.replace(num_layers=3))


def test_engine_from_run_carries_the_runs_facts(run, tiny_tokenizer):
    path, cfg, params = run
    engine = InferenceEngine.from_run(path, dtype="bfloat16", max_batch_size=2)
    assert engine.repo_format.name == "qwen2.5" and engine.facts.step == 3
    assert engine.model_cfg == cfg.replace(dtype="bfloat16") and engine.max_batch_size == 2
    assert engine.stop_ids == stop_ids(tiny_tokenizer)
    ids = engine.fim_prompt_ids("a = 1\n", "", path="x.py", repo="r")
    assert ids[0] == tiny_tokenizer.repo_name_id  # the qwen2.5 layout, not `# File:`
    in_memory = InferenceEngine.from_run(path, params=params[1])
    assert in_memory.facts.repo_format == "qwen2.5" and _same(in_memory.params, params[1])


def test_arm_dependency_without_checkpoint_is_a_usage_error(run):
    """`experiments/run.py --arm=X` for an arm that starts from a sibling not trained yet."""
    from zen_code_jax.experiment.cli import UsageError, arm_setup

    path, _, _ = run
    config = base_config()
    config.name = path.parent.name
    config.train.init_checkpoint = "arm:nope"
    with pytest.raises(UsageError, match=r"starts from arm 'nope'.*Run --arm=nope first"):
        arm_setup(config, "ft", path.parent.parent, "train")
    config.train.init_checkpoint = "arm:base"
    cfg, run_dir = arm_setup(config, "ft", path.parent.parent, "train")
    assert run_dir.path == path.parent / "ft" and cfg.arm == "ft"
