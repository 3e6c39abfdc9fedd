"""One way to name a checkpoint, one loader, and every fact of a run.

A checkpoint is named the same way everywhere (`train.init_checkpoint`, `--run_dir` of the
eval and serve commands, and later a teacher or a draft model):

  hf:DIR               an HF Qwen2 directory (config.json + safetensors + tokenizer.json)
  arm:NAME             the sibling arm NAME of the same experiment (WORKDIR/<exp>/NAME),
                       relative to the run directory that names it
  arm:EXP/NAME         the arm NAME of experiment EXP in the same workdir (WORKDIR/EXP/NAME),
                       e.g. a distillation teacher: arm:fim_ablation/fim50
  RUN                  a run directory (WORKDIR/<experiment>/<arm>): its newest checkpoint
  RUN/checkpoints/N    one step of a run
  DIR                  an HF directory given as a plain path (it has no checkpoints/)

`parse_checkpoint` turns that into a `CheckpointRef`; `load_model` reads the parameters
only (never the optimizer moments) straight into the given shardings (or a mesh's, by
the model's logical axes) and returns a `LoadedModel` carrying what a consumer needs to
decode with them: the model config, the tokenizer, the repository format and the stop
ids. `run_facts` resolves the same facts of a run without reading any weight.

Why one module: before, `hf:` was parsed in hf/transfer.py, `arm:` in experiment/arm.py and
experiment/cli.py, and the loading sat inline in `run_arm`; an engine built for evaluation
or serving dropped the run's `data.repo_format`, so repository prompts were built in a
layout training never showed the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from jax.sharding import Mesh

from zen_code_jax.checkpoint import (
    CheckpointError,
    checkpoint_tokenizer,
    find_checkpoint_dir,
    latest_step,
    restore_params_only,
)
from zen_code_jax.config import config_from_dict, model_config_from
from zen_code_jax.data import tokenizer_load
from zen_code_jax.data.hf_tokenizer import check_repo_format
from zen_code_jax.data.repo_format import RepoPrefix
from zen_code_jax.hf.checkpoint import CONFIG_FILE, HFCheckpoint
from zen_code_jax.hf.load import default_mesh, param_shardings
from zen_code_jax.hf.load import load_params as load_hf_params
from zen_code_jax.hf.transfer import architecture_diff, check_architecture, load_hf_tokenizer
from zen_code_jax.model.config import ModelConfig
from zen_code_jax.model.params import param_partition_specs
from zen_code_jax.parallel.rules import DEFAULT_RULES
from zen_code_jax.rundir import RunDir

KINDS = ("hf", "run")
_FORMS = "hf:DIR, arm:NAME, a run directory or RUN/checkpoints/STEP"


class CheckpointSpecError(ValueError):
    """A checkpoint name that names nothing loadable (the message says what to pass)."""


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
    """A parsed checkpoint name.

    kind: "hf" (an HF directory) or "run" (Orbax checkpoints of a run directory);
    path: the HF directory or the run directory; step: the run's checkpoint step (None =
    the newest readable one; always None for "hf"); spec: the name as written (for errors).
    """

    kind: str
    path: Path
    step: int | None = None
    spec: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CheckpointSpecError(f"CheckpointRef kind {self.kind!r} is not one of {KINDS}.")
        if self.kind == "hf" and self.step is not None:
            raise CheckpointSpecError(f"{self.spec}: an HF directory has no steps; drop the step.")

    @property
    def arm(self) -> str | None:
        """The arm's name for an `arm:NAME` or `arm:EXP/NAME` spec, else None."""
        return self.spec[4:] if self.spec.startswith("arm:") else None

    def has_checkpoint(self) -> bool:
        """Whether the named thing exists now (a run: its checkpoints/ folder)."""
        if self.kind == "hf":
            return (self.path / CONFIG_FILE).is_file()
        return RunDir(self.path).checkpoints.is_dir()


def parse_checkpoint(
    spec: str | Path, *, run_dir: str | Path | RunDir | None = None, step: int | None = None
) -> CheckpointRef:
    """Parse a checkpoint name (see the module docstring) into a `CheckpointRef`.

    `run_dir`: the run that names the checkpoint (needed by `arm:NAME`, whose run
    directory is its sibling). `step`: a step to pin (an error if the spec names another).
    A plain path's kind is read from what it holds; one that does not exist (yet) is
    taken as a run directory, and loading it says it is missing.
    """
    text = str(spec)
    if not text:
        raise CheckpointSpecError(f"Empty checkpoint name; give one of {_FORMS}.")
    if text.startswith("hf:"):
        if not text[3:]:
            raise CheckpointSpecError(
                f"{text!r} names no directory; give hf:PATH (for "
                "experiments/repo_ft_from_hf.py: --config=...:SCALE,hf=PATH)."
            )
        return CheckpointRef("hf", Path(text[3:]), _step(step, None, text), text)
    if text.startswith("arm:"):
        parts = text[4:].split("/")
        if not all(parts) or len(parts) > 2:
            raise CheckpointSpecError(
                f"{text!r}: give arm:NAME (an arm of the same experiment) or "
                "arm:EXPERIMENT/NAME (an arm of another experiment in the same workdir)."
            )
        if run_dir is None:
            raise CheckpointSpecError(
                f"{text!r} names another arm, which needs the run directory that names it; "
                "pass that arm's run directory instead."
            )
        base = run_dir.path if isinstance(run_dir, RunDir) else Path(run_dir)
        # WORKDIR/<experiment>/<arm>: a sibling, or an arm of another experiment.
        where = base.parent / parts[0] if len(parts) == 1 else base.parent.parent / text[4:]
        return CheckpointRef("run", where, step, text)
    path = Path(text)
    if (path / "checkpoints").is_dir() or path.name == "checkpoints":
        run = path.parent if path.name == "checkpoints" else path
        return CheckpointRef("run", run, step, text)
    if path.name.isdigit() and path.parent.name == "checkpoints":
        return CheckpointRef("run", path.parent.parent, _step(step, int(path.name), text), text)
    if (path / CONFIG_FILE).is_file() and any(path.glob("*.safetensors")):
        return CheckpointRef("hf", path, _step(step, None, text), text)
    if not path.exists():  # a run that may not have started yet: loading says so
        return CheckpointRef("run", path, step, text)
    raise CheckpointSpecError(
        f"{text} holds neither checkpoints/ (a run directory) nor config.json + safetensors "
        f"(an HF directory); give one of {_FORMS}."
    )


def _step(pinned: int | None, named: int | None, spec: str) -> int | None:
    if pinned is not None and named is not None and pinned != named:
        raise CheckpointSpecError(
            f"{spec} names step {named} but step {pinned} was asked for; give one of them."
        )
    if named is None and pinned is not None and spec.startswith("hf:"):
        raise CheckpointSpecError(f"{spec}: an HF directory has no steps; drop the step.")
    return named if named is not None else pinned


def as_ref(
    spec: str | Path | CheckpointRef,
    *,
    run_dir: str | Path | RunDir | None = None,
    step: int | None = None,
) -> CheckpointRef:
    """`spec` parsed, or the ref itself (with `step` pinned when given)."""
    if isinstance(spec, CheckpointRef):
        return (
            spec
            if step is None
            else dataclasses.replace(spec, step=_step(step, spec.step, spec.spec))
        )
    return parse_checkpoint(spec, run_dir=run_dir, step=step)


def stop_ids(tokenizer: Any) -> tuple[int, ...]:
    """Ids that end a generation: `<|endoftext|>` and every special id (a model trained on
    the FIM format ends a middle with `<|endoftext|>`; a sentinel means it left the document)."""
    return tuple(sorted(set(tokenizer.special_ids) | {tokenizer.eot_id}))


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What a checkpoint's weights mean: the architecture, the tokenizer they were trained
    with, the repository layout of training (`data.repo_format` resolved against the
    tokenizer exactly as training does), the ids that stop a generation, and the step.

    config: the run's full config (None for an HF directory); step: None for HF.
    """

    ref: CheckpointRef
    model_cfg: ModelConfig
    tokenizer: Any
    repo_format: str
    stop_ids: tuple[int, ...]
    step: int | None
    config: ml_collections.ConfigDict | None
    repo_prefix: RepoPrefix = RepoPrefix()  # the run's data.repo_prefix(_tokens)


@dataclasses.dataclass(frozen=True)
class LoadedModel(RunFacts):
    """`RunFacts` plus the parameters (unboxed, placed as asked)."""

    params: Any = None
    identity: Mapping[str, Any] | None = None  # the checkpoint's identity (runs only)


def _facts(
    ref: CheckpointRef,
    model_cfg: ModelConfig,
    tokenizer: Any,
    config: ml_collections.ConfigDict | None,
    step: int | None,
) -> dict[str, Any]:
    configured = str(config.data.repo_format) if config is not None else ""
    return dict(
        ref=ref,
        model_cfg=model_cfg,
        tokenizer=tokenizer,
        repo_format=check_repo_format(tokenizer, configured),
        stop_ids=stop_ids(tokenizer),
        step=step,
        config=config,
        repo_prefix=RepoPrefix.from_config(config.data) if config is not None else RepoPrefix(),
    )


def run_facts(
    spec: str | Path | CheckpointRef,
    *,
    run_dir: str | Path | RunDir | None = None,
    step: int | None = None,
) -> RunFacts:
    """The facts of a checkpoint without reading a weight: for a run, its config.json and
    tokenizer/ (the run-directory contract) and the step it would load; for an HF
    directory, its config.json and tokenizer.json."""
    ref = as_ref(spec, run_dir=run_dir, step=step)
    if ref.kind == "hf":
        ckpt = HFCheckpoint.open(ref.path)
        tok = load_hf_tokenizer(ref.path, ckpt.model_cfg)
        return RunFacts(**_facts(ref, ckpt.model_cfg, tok, None, None))
    run = RunDir(ref.path)
    if not run.config_json.is_file():
        raise CheckpointSpecError(
            f"{ref.spec or ref.path}: {run.config_json} is missing; is {ref.path} a run "
            "directory (WORKDIR/<experiment>/<arm>)?"
        )
    config = config_from_dict(run.read_config())
    model_cfg = model_config_from(config.model)
    tok = tokenizer_load.load_tokenizer(run.tokenizer_dir)
    tok.check_compatible(model_cfg)
    at = ref.step if ref.step is not None else latest_step(ref.path)
    return RunFacts(**_facts(ref, model_cfg, tok, config, at))


def mesh_shardings(model_cfg: ModelConfig, mesh: Mesh, rules: Sequence[Any] | None = None) -> Any:
    """NamedShardings of the model's params on `mesh` by their logical axes."""
    specs = param_partition_specs(model_cfg)
    return nn.logical_to_mesh_sharding(specs, mesh, list(rules or DEFAULT_RULES))


def load_model(
    spec: str | Path | CheckpointRef,
    *,
    mesh: Mesh | None = None,
    target: Any | None = None,
    dtype: Any = None,
    model_cfg: ModelConfig | None = None,
    run_dir: str | Path | RunDir | None = None,
    step: int | None = None,
    rules: Sequence[Any] | None = None,
) -> LoadedModel:
    """Parameters only (no optimizer moments) of a checkpoint, placed and typed as asked.

    Placement: `target` (abstract params with shardings, e.g. a train state's) wins;
    else `mesh` (the model's logical axes under `rules`, default DEFAULT_RULES); else one
    device. `dtype` casts every leaf on load (default: the stored dtype; with `target`
    its leaves' shardings are used and `dtype` still applies when given).
    `model_cfg`: the architecture the caller expects; an HF directory is checked against
    it and loaded into it (our own fields such as scan_layers from it), a run must match it
    exactly. One call loads a teacher or a draft model.
    """
    ref = as_ref(spec, run_dir=run_dir, step=step)
    if target is not None and "params" in target and "embed" not in target:
        target = target["params"]
    if ref.kind == "hf":
        return _load_hf(ref, mesh, target, dtype, model_cfg)
    return _load_run(ref, mesh, target, dtype, model_cfg, rules)


def _load_hf(
    ref: CheckpointRef,
    mesh: Mesh | None,
    target: Any,
    dtype: Any,
    model_cfg: ModelConfig | None,
) -> LoadedModel:
    ckpt = HFCheckpoint.open(ref.path)
    cfg = model_cfg or ckpt.model_cfg
    if model_cfg is not None:
        check_architecture(ckpt.model_cfg, model_cfg, f"{ref.spec or ref.path}")
    tok = load_hf_tokenizer(ref.path, cfg)
    if dtype is not None:
        if target is None:
            target = param_shardings(cfg, mesh if mesh is not None else default_mesh())
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, dtype, sharding=a.sharding), target
        )
    params = load_hf_params(ckpt, cfg, mesh=mesh, target=target)
    return LoadedModel(**_facts(ref, cfg, tok, None, None), params=params)


def _load_run(
    ref: CheckpointRef,
    mesh: Mesh | None,
    target: Any,
    dtype: Any,
    model_cfg: ModelConfig | None,
    rules: Sequence[Any] | None,
) -> LoadedModel:
    if not ref.path.exists() and not ref.arm:
        raise CheckpointSpecError(f"{ref.spec or ref.path}: no such directory; give {_FORMS}.")
    try:
        find_checkpoint_dir(ref.path)
    except CheckpointError:
        where = f"arm {ref.arm!r}" if ref.arm else str(ref.path)
        raise CheckpointSpecError(
            f"{ref.spec or ref.path}: {where} has no checkpoint in {ref.path / 'checkpoints'}; "
            "train it first (python experiments/run.py ... --mode=train)."
        ) from None
    sharding_fn: Callable[[Any], Any] | None = None
    if target is not None:
        shardings = jax.tree.map(lambda a: a.sharding, target)
        sharding_fn = lambda _: shardings  # noqa: E731
    elif mesh is not None:
        cfg = model_cfg or run_facts(ref).model_cfg
        on_mesh = mesh_shardings(cfg, mesh, rules)
        sharding_fn = lambda _: on_mesh  # noqa: E731
    params, meta, tok_json, at = restore_params_only(
        ref.path, step=ref.step, sharding_fn=sharding_fn, dtype=dtype
    )
    config = config_from_dict(meta["config"])
    cfg = model_config_from(config.model)
    diff = architecture_diff(cfg, model_cfg, "asked") if model_cfg is not None else ""
    if diff:
        raise CheckpointSpecError(
            f"{ref.spec or ref.path}: its architecture differs from the model asked for ("
            + diff
            + "); load it into a model with the same model group."
        )
    tok = checkpoint_tokenizer(meta, tok_json, ref.path, cfg)
    return LoadedModel(
        **_facts(ref, cfg, tok, config, at), params=params, identity=meta.get("identity")
    )


__all__ = [
    "CheckpointRef",
    "CheckpointSpecError",
    "LoadedModel",
    "RunFacts",
    "as_ref",
    "load_model",
    "mesh_shardings",
    "parse_checkpoint",
    "run_facts",
    "stop_ids",
]
