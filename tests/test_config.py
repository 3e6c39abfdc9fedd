"""Config system: scales and ARG parsing, dotted overrides, arms, errors that name the fix."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from zen_code_jax.config import (
    HF_PRESET,
    apply_overrides,
    arm_config,
    arm_names,
    base_config,
    config_from_dict,
    config_to_dict,
    model_config_from,
    model_group,
    set_arms,
)
from zen_code_jax.experiment import cli
from zen_code_jax.experiment.setup import SCALES, parse_config_arg
from zen_code_jax.model.config import PRESETS, get_preset

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ["fim_ablation", "pretrain", "repo_ft_ablation", "sft"]


def load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"exp_{name}", ROOT / "experiments" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_config_arg():
    assert parse_config_arg("") == ("cpu", {})
    assert parse_config_arg("smoke") == ("smoke", {})
    assert parse_config_arg("gpu,train.steps=5, fim.rate=0.1") == (
        "gpu",
        {"train.steps": "5", "fim.rate": "0.1"},
    )
    assert parse_config_arg("scale=paper,target=h100x64") == ("paper", {"target": "h100x64"})
    with pytest.raises(ValueError, match=r"Unknown scale 'laptop'.*smoke"):
        parse_config_arg("laptop")


def test_overrides_parse_against_the_field_type():
    c = base_config()
    apply_overrides(c, {"train.steps": "7", "fim.rate": "1", "checkpoint.async_save": "false"})
    assert c.train.steps == 7 and isinstance(c.train.steps, int)
    assert c.fim.rate == 1.0 and isinstance(c.fim.rate, float)
    assert c.checkpoint.async_save is False
    apply_overrides(c, {"eval.tasks": "['heldout_loss', 'humaneval']", "data.source": "local"})
    assert list(c.eval.tasks) == ["heldout_loss", "humaneval"] and c.data.source == "local"


@pytest.mark.parametrize(
    "override, message",
    [
        ({"fim.rat": 0.1}, r"fim has no field 'rat'. Did you mean 'fim.rate'\?.*'spm_rate'"),
        ({"trian.steps": 1}, r"the config has no field 'trian'. Did you mean 'train'"),
        ({"train.steps": "abc"}, r"Cannot parse 'abc' for train.steps.*train.steps=1000"),
        ({"train.steps": "2.5"}, r"Bad value '2.5' for train.steps: expected a int"),
        ({"checkpoint.async_save": "maybe"}, r"async_save is a bool.*true or false"),
        ({"train.steps.x": 1}, r"train.steps is a value, not a group"),
        ({"optimizer": 1}, r"optimizer is a group"),
    ],
)
def test_override_errors_name_the_fix(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(base_config(), override)


def test_arms_resolve_on_top_of_the_base_and_check_their_keys():
    c = base_config()
    set_arms(c, {"a": {"fim.rate": 0.0, "train.steps": 3}, "b": {}})
    assert arm_names(c) == ["a", "b"]
    a = arm_config(c, "a")
    assert (a.fim.rate, a.train.steps, a.arm) == (0.0, 3, "a")
    assert c.fim.rate == 0.5 and c.train.steps == 1000  # the base is untouched
    with pytest.raises(ValueError, match=r"Unknown arm 'c'.*\['a', 'b'\]"):
        arm_config(c, "c")
    with pytest.raises(ValueError, match=r"Arm 'bad': Unknown config key 'fim.rte'"):
        set_arms(c, {"bad": {"fim.rte": 0.0}})
    assert arm_names(base_config()) == ["main"]


def test_config_round_trips_through_a_dict():
    c = base_config()
    set_arms(c, {"x": {"fim.rate": 0.25}})
    apply_overrides(c, {"data.domain_weights": {"code": 0.6, "docs": 0.4}, "name": "n"})
    back = config_from_dict(config_to_dict(c))
    assert config_to_dict(back) == config_to_dict(c)
    with pytest.raises(ValueError, match=r"unknown key train.stepz"):
        config_from_dict({**config_to_dict(c), "train": {"stepz": 1}})


def test_model_group_from_a_preset_or_a_whole_model_config():
    """One `model_group`: a preset name, or a ModelConfig read from an HF checkpoint."""
    g = model_group("tiny", num_layers=3)
    assert g.preset == "tiny" and model_config_from(g) == get_preset("tiny", num_layers=3)
    hf_cfg = get_preset("tiny").replace(vocab_size=640, head_dim=None)
    g = model_group(hf_cfg, param_dtype="float32")
    assert g.preset == HF_PRESET and g.head_dim == 0  # typed for command-line overrides
    assert model_config_from(g) == hf_cfg.replace(param_dtype="float32")
    assert HF_PRESET not in PRESETS  # the name is reserved: a preset called so would be lost
    g.preset = "nope"
    with pytest.raises(ValueError, match="Unknown model preset 'nope'"):
        model_config_from(g)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_builds_at_every_scale(name):
    module = load(name)
    for scale in SCALES:
        c = module.get_config(scale)
        assert c.scale == scale and c.name == name
        model_config_from(c.model)  # valid model
        for arm in arm_names(c):
            arm_config(c, arm if arm in c.arms else "")
        # The file states what it trains at each scale (docs/architecture.md).
        assert set(module.SCALES) == set(SCALES)
        assert c.train.seq_len and c.train.global_batch_size and c.optimizer.peak_lr
    assert module.get_config().scale == "cpu"  # cpu is the default
    assert module.get_config("smoke,train.steps=2").train.steps == 2  # ARG overrides win


def test_experiment_settings_match_the_report():
    fim = load("fim_ablation").get_config("cpu")
    assert {a: arm_config(fim, a).fim.rate for a in arm_names(fim)} == {
        "fim0": 0.0,
        "fim25": 0.25,
        "fim50": 0.5,
        "fim75": 0.75,
    }
    assert fim.fim.spm_rate == 0.5
    p = load("pretrain").get_config("paper")
    assert model_config_from(p.model) == model_config_from(base_config().model).replace(
        **{k: v for k, v in get_preset("zen_code_14b").to_dict().items()}
    )
    assert p.model.hidden_size == 5120 and p.model.num_layers == 40
    assert (p.optimizer.peak_lr, p.optimizer.final_lr, p.optimizer.warmup_steps) == (
        3e-4,
        3e-5,
        1000,
    )
    assert p.optimizer.weight_decay == 0.1 and p.train.steps == 625_000
    assert p.train.seq_len * p.train.global_batch_size == 4 * 1024 * 1024
    assert (p.fim.rate, p.fim.spm_rate) == (0.5, 0.5)
    assert abs(sum(p.data.domain_weights.values()) - 1.0) < 1e-9
    h = load("pretrain").get_config("paper,target=h100x64")
    assert (h.mesh.data, h.mesh.fsdp) == (8, 8)
    r = load("repo_ft_ablation").get_config("cpu")
    r8, r64 = arm_config(r, "repo8k"), arm_config(r, "repo64k")
    assert r64.train.seq_len == 8 * r8.train.seq_len  # windows keep the paper's 1:8 ratio
    assert (r8.train.seq_len * r8.train.global_batch_size) == (
        r64.train.seq_len * r64.train.global_batch_size
    )
    assert r8.train.init_checkpoint == "arm:base" and r8.data.mode == "repo"
    s = load("sft").get_config("cpu")
    assert (s.optimizer.peak_lr, s.train.epochs, s.train.objective) == (1e-5, 2, "sft")


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "experiments/run.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_errors_name_the_fix(tmp_path):
    bad = tmp_path / "noget.py"
    bad.write_text("X = 1\n")
    cases = [
        ([f"--config={bad}"], r"has no get_config\(arg\) function"),
        (["--config=experiments/nope.py"], r"no such file"),
        (["--config=experiments/fim_ablation.py:huge"], r"Unknown scale 'huge'"),
        (
            ["--config=experiments/fim_ablation.py", "--config.train.stepz=3"],
            r"Unknown override '--config.train.stepz'.*Did you mean 'train.steps'",
        ),
        (["--config=experiments/fim_ablation.py", "--config.fim.rate=abc"], r"Cannot parse 'abc'"),
        ([], r"Missing --config"),
    ]
    for args, message in cases:
        with pytest.raises(cli.UsageError, match=message):
            cli.load_config(["run.py", *args])
    # And once through the real command line: exit status 2, one clean line, no traceback.
    proc = _run_cli("--config=experiments/fim_ablation.py:smoke", "--config.fim.rat=0.1")
    assert proc.returncode == 2
    assert "Did you mean 'fim.rate'" in proc.stderr and "Traceback" not in proc.stderr


def test_the_experiment_file_runs_once_per_command(tmp_path):
    """run.py loads the experiment file a single time (config and make_dataset alike)."""
    counter = tmp_path / "count.txt"
    exp = tmp_path / "counted.py"
    exp.write_text(
        (ROOT / "experiments" / "pretrain.py").read_text()
        + f"\nwith open({str(counter)!r}, 'a') as _f:\n    _f.write('x')\n"
    )
    proc = _run_cli(f"--config={exp}:smoke", "--mode=report", f"--workdir={tmp_path}")
    assert counter.read_text() == "x", proc.stderr[-2000:]


def test_task_options_are_an_open_group_checked_against_the_tasks():
    """`eval.task_options.<task>.<option>` may be set by dotted keys (ARG, arms, command
    line) without a schema key per task; the tasks check them when the config loads."""
    c = load("fim_ablation").get_config("smoke,eval.task_options.mbpp.path=/data/mbpp.jsonl")
    assert c.eval.task_options.mbpp.path == "/data/mbpp.jsonl"
    assert load("fim_ablation").get_config("cpu").eval.task_options.heldout_loss.files == 25
    set_arms(c, {"few": {"eval.task_options.heldout_loss.files": 3}})
    assert arm_config(c, "few").eval.task_options.heldout_loss.files == 3
    assert "heldout_loss" not in c.eval.task_options  # the base is untouched
    with pytest.raises(ValueError, match="mbpp.path is a value, not a group"):
        apply_overrides(c, {"eval.task_options.mbpp.path.x": "1"})
    # The command line: checked on load (one line naming the valid options), then set by absl.
    exp = "--config=experiments/fim_ablation.py:smoke"
    with pytest.raises(cli.UsageError, match=r"unknown option\(s\) \['paht'\]; mbpp takes"):
        cli.load_config(["run.py", exp, "--config.eval.task_options.mbpp.paht=/x"])
    with pytest.raises(cli.UsageError, match="unknown task 'mbp'. Valid tasks: "):
        cli.load_config(["run.py", exp, "--config.eval.task_options.mbp.path=/x"])
    with pytest.raises(cli.UsageError, match="Cannot parse 'all' for eval.task_options.heldout"):
        cli.load_config(["run.py", exp, "--config.eval.task_options.heldout_loss.files=all"])
    from absl import flags
    from ml_collections import config_flags

    config, argv = cli.load_config(["run.py", exp, "--config.eval.task_options.mbpp.path=/x"])
    fv = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", config, flag_values=fv, sys_argv=argv)
    fv(argv)
    assert fv.config.eval.task_options.mbpp.path == "/x"


def test_older_config_json_keys_move_into_the_task_options():
    """A run directory written before task options (eval.mbpp_path, eval.heldout_files, ...)
    still loads: each old key's value lands in the options of the tasks that read it."""
    from zen_code_jax.config import LEGACY_KEYS
    from zen_code_jax.eval.options import option_names
    from zen_code_jax.eval.registry import get_task

    old = config_to_dict(base_config())
    old["eval"].pop("task_options")
    old["eval"].update(
        mbpp_path="/m.jsonl", multipl_e_path="", humaneval_infill_dir="/h", heldout_files=7
    )
    old["arms"] = {"a": {"eval.heldout_files": 9, "fim.rate": 0.0}}
    c = config_from_dict(old)
    opts = c.eval.task_options.to_dict()
    assert opts.pop("mbpp") == {"path": "/m.jsonl"} and opts.pop("heldout_loss") == {"files": 7}
    assert "multipl_e" not in opts  # the old default ("") is no option
    assert set(opts) == {
        "humaneval_fim_qwen",
        "humaneval_infilling_openai_single",
        "humaneval_infilling_openai_multi",
        "humaneval_infilling_openai_random_span",
        "humaneval_infilling_openai_random_span_light",
    } and all(v == {"dir": "/h"} for v in opts.values())
    assert arm_config(c, "a").eval.task_options.heldout_loss.files == 9
    # Every new key names a real task option.
    for new_keys, _ in LEGACY_KEYS.values():
        for key in new_keys:
            _, _, task, option = key.split(".")
            assert option in option_names(get_task(task).options_type), key
