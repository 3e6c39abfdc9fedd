"""Orbax checkpoints that resume exactly and refuse to load the wrong thing.

One checkpoint (a step directory under `RUN/checkpoints/`) holds four items:
  state  - the train state pytree (step, params, opt_state), restored straight into its
           shardings;
  data   - the data iterator's state (`grain.checkpoint.CheckpointSave`, one JSON per process);
  meta   - JSON: step, RNG key data, the full config, the model config and the tokenizer
           fingerprint (the identity checked on restore);
  tokenizer - JSON: the tokenizer's files (base64), so a checkpoint is self-contained.

Safety rules:
  * a checkpoint whose model config or tokenizer differs from the run's is an error naming
    the difference and the fix; it is never loaded silently;
  * so is a checkpoint whose train-state tree differs from the one the run builds (a config
    key that adds or removes leaves, e.g. `train.hlp_weight` 0 vs > 0 adds the HLP head
    under `params/aux_heads` and its AdamW moments): the checkpoint stays where it is;
  * a corrupt or partial checkpoint (unreadable item) is moved aside to
    `RUN/checkpoints_corrupt/` with a warning and the previous good one is used;
  * Orbax writes each step to a temporary directory and renames it when complete, so a
    process killed mid-save leaves no finalized step behind.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grain
import grain.checkpoint
import jax
import numpy as np
import orbax.checkpoint as ocp

from zen_code_jax.checkpoint_tree import (
    CheckpointError,
    CheckpointMismatchError,
    check_state_tree,
    leaf_shapes,
)
from zen_code_jax.config import config_from_dict, model_config_from
from zen_code_jax.data.tokenizer_load import load_tokenizer
from zen_code_jax.model.config import ModelConfig
from zen_code_jax.model.params import model_params

log = logging.getLogger(__name__)


class _BytesStateIterator:
    """Adapt an iterator whose get_state() returns a dict to grain's bytes protocol."""

    def __init__(self, it: Any) -> None:
        self.it = it

    def get_state(self) -> bytes:
        state = self.it.get_state()
        return state if isinstance(state, bytes) else json.dumps(state).encode()

    def set_state(self, state: bytes) -> None:
        self.it.set_state(json.loads(state.decode()))

    def start_prefetch(self) -> None:
        getattr(self.it, "start_prefetch", lambda: None)()


def _grain_item(it: Any) -> Any:
    if isinstance(it, grain.DatasetIterator):
        return it
    return _BytesStateIterator(it)


def tokenizer_to_json(tokenizer: Any) -> dict[str, Any]:
    """Serialize a Tokenizer as {filename: base64} plus its fingerprint."""
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save(d)
        files = {
            p.name: base64.b64encode(p.read_bytes()).decode()
            for p in sorted(Path(d).iterdir())
            if p.is_file()
        }
    return {"fingerprint": tokenizer.fingerprint(), "files": files}


def tokenizer_from_json(data: Mapping[str, Any]) -> Any:

    with tempfile.TemporaryDirectory() as d:
        for name, b64 in data["files"].items():
            (Path(d) / name).write_bytes(base64.b64decode(b64))
        return load_tokenizer(d)


def identity(model_cfg: Any, tokenizer: Any) -> dict[str, Any]:
    """What must match between a checkpoint and the run restoring it."""
    return {
        "model": dict(model_cfg.to_dict()),
        "tokenizer_fingerprint": tokenizer.fingerprint() if tokenizer is not None else "",
    }


# ModelConfig fields that change how the program runs, not the parameter layout (the
# results at most by float32 reassociation), so a checkpoint loads whatever they are.
_EXECUTION_ONLY = frozenset({"scan_unroll"})


def _check_identity(saved: Mapping[str, Any], expected: Mapping[str, Any], where: Path) -> None:
    problems = []
    # A field added to ModelConfig after the checkpoint was written takes its default there
    # (what that checkpoint's model did), so adding a field never orphans old runs.
    defaults = dataclasses.asdict(ModelConfig())
    sm = {**defaults, **saved.get("model", {})}
    em = {**defaults, **expected.get("model", {})}
    diff = sorted(
        k for k in set(sm) | set(em) if k not in _EXECUTION_ONLY and sm.get(k) != em.get(k)
    )
    if diff:
        problems.append(
            "model config differs: "
            + ", ".join(f"{k}: checkpoint {sm.get(k)!r} vs run {em.get(k)!r}" for k in diff)
        )
    if saved.get("tokenizer_fingerprint") != expected.get("tokenizer_fingerprint"):
        problems.append(
            f"tokenizer differs (fingerprint {str(saved.get('tokenizer_fingerprint'))[:12]} vs "
            f"{str(expected.get('tokenizer_fingerprint'))[:12]})"
        )
    if problems:
        raise CheckpointMismatchError(
            f"The checkpoint in {where} was written by a different model or tokenizer: "
            + "; ".join(problems)
            + ". Refusing to load it. Use a fresh --workdir for the new config, or delete "
            f"{where.parent} to start this run over."
        )


class Checkpointer:
    """Save and restore train state + data iterator + metadata with an Orbax manager."""

    def __init__(
        self,
        directory: str | Path,
        *,
        keep_last: int = 3,
        keep_every: int = 0,
        async_save: bool = True,
        compress: bool = True,
    ) -> None:
        """`compress=False` writes the state's arrays without zstd: Orbax then streams each
        array from its own buffer, while compressed chunks are held in memory until the
        save commits (a 1B-parameter save after an HF import added ~1.6 GB). Every restore
        path reads either (the codec is in each array's metadata)."""
        self.directory = Path(directory).absolute()
        self._options = dict(keep_last=keep_last, keep_every=keep_every, async_save=async_save)
        self._compress = compress
        self._open()

    def _open(self) -> None:
        o = self._options
        options = ocp.CheckpointManagerOptions(
            max_to_keep=o["keep_last"] or None,
            keep_period=o["keep_every"] or None,
            enable_async_checkpointing=o["async_save"],
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": (
                    ocp.StandardCheckpointHandler()
                    if self._compress
                    else ocp.PyTreeCheckpointHandler(use_compression=False)
                ),
                "data": grain.checkpoint.CheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
                "tokenizer": ocp.JsonCheckpointHandler(),
            },
        )

    # -- saving ------------------------------------------------------------------------
    def save(
        self,
        step: int,
        state: Any,
        data_iter: Any,
        meta: Mapping[str, Any],
        tokenizer_json: Mapping[str, Any] | None = None,
    ) -> None:
        """Start saving `step` (asynchronously if configured); returns once arrays are copied."""
        save = ocp.args.StandardSave if self._compress else ocp.args.PyTreeSave
        items = {
            "state": save(state),
            "meta": ocp.args.JsonSave({**meta, "step": int(step)}),
        }
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(_grain_item(data_iter))
        if tokenizer_json is not None:
            items["tokenizer"] = ocp.args.JsonSave(dict(tokenizer_json))
        self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # -- restoring ---------------------------------------------------------------------
    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def read_meta(self, step: int) -> dict[str, Any]:
        return dict(
            self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        )

    def restore_latest(
        self, abstract_state: Any, data_iter: Any, expected_identity: Mapping[str, Any]
    ) -> tuple[Any, dict[str, Any]] | None:
        """Restore the newest good checkpoint into `abstract_state`'s shapes and shardings.

        Returns (state, meta) or None when there is no checkpoint. Restores `data_iter`
        in place. A mismatched identity or state tree raises (the step stays where it is);
        an unreadable step is moved aside and the previous one tried.
        """
        tried = []
        for step in reversed(self.steps()):
            try:
                meta = self.read_meta(step)
            except Exception as e:  # noqa: BLE001 - any unreadable item means corrupt
                self._quarantine(step, e)
                tried.append(step)
                continue
            _check_identity(meta.get("identity", {}), expected_identity, self.step_dir(step))
            try:
                saved_leaves = leaf_shapes(self.manager.item_metadata(step)["state"])
            except Exception as e:  # noqa: BLE001 - no readable state metadata: corrupt
                self._quarantine(step, e)
                tried.append(step)
                continue
            check_state_tree(
                saved_leaves,
                leaf_shapes(abstract_state),
                meta.get("config", {}),
                self.step_dir(step),
            )
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            if data_iter is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(_grain_item(data_iter))
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
                state = restored["state"]
                _check_state_step(state, step)
            except Exception as e:  # noqa: BLE001
                self._quarantine(step, e)
                tried.append(step)
                continue
            if tried:
                log.warning("Resumed from step %d after skipping corrupt steps %s.", step, tried)
            return state, meta
        if tried:
            raise CheckpointError(
                f"Every checkpoint in {self.directory} is unreadable (steps {tried}, moved to "
                f"{self.directory.parent / 'checkpoints_corrupt'}). Delete {self.directory} "
                "to start the run from scratch."
            )
        return None

    def _quarantine(self, step: int, error: Exception) -> None:
        dest_root = self.directory.parent / "checkpoints_corrupt"
        dest_root.mkdir(parents=True, exist_ok=True)
        dest = dest_root / f"{step}"
        if dest.exists():
            shutil.rmtree(dest)
        log.warning(
            "Checkpoint step %d in %s is corrupt or partial (%s: %s); moving it to %s and "
            "falling back to the previous one.",
            step,
            self.directory,
            type(error).__name__,
            str(error)[:300],
            dest,
        )
        print(
            f"WARNING: checkpoint step {step} is corrupt or partial "
            f"({type(error).__name__}); moved to {dest}; trying the previous one.",
            flush=True,
        )
        self.manager.close()
        shutil.move(str(self.step_dir(step)), str(dest))
        self._open()


def _check_state_step(state: Any, step: int) -> None:
    saved = state.get("step") if isinstance(state, Mapping) else getattr(state, "step", None)
    if saved is not None and int(np.asarray(saved)) != int(step):
        raise CheckpointError(f"state.step={int(np.asarray(saved))} but the directory says {step}")


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a concrete pytree, as a restore target."""

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(one, tree)


def _single_device_target(metadata_tree: Any) -> Any:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def one(m: Any) -> Any:
        return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding)

    return jax.tree.map(one, metadata_tree, is_leaf=lambda m: hasattr(m, "shape"))


def find_checkpoint_dir(path: str | Path) -> Path:
    """Accept a run dir or its checkpoints/ dir; return the checkpoints/ dir."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        return path / "checkpoints"
    if path.name == "checkpoints" and path.is_dir():
        return path
    raise CheckpointError(
        f"No checkpoints under {path}. Pass a run directory (WORKDIR/<experiment>/<arm>) "
        "that has a checkpoints/ folder, e.g. after `python experiments/run.py --mode=train`."
    )


def restore_params_only(
    path: str | Path,
    *,
    step: int | None = None,
    sharding_fn: Callable[[Any], Any] | None = None,
    dtype: Any = None,
) -> tuple[Any, dict[str, Any], dict[str, Any] | None, int]:
    """(params, meta, tokenizer_json, step): only the `params` subtree of a checkpoint.

    Serving and evaluation never need the optimizer moments (two more copies of the
    weights in AdamW), so this reads `state/params` alone with Orbax's partial restore,
    straight into `sharding_fn(abstract_params)` (a NamedSharding tree; default: one
    device) and cast to `dtype` on load (default: the stored dtype). `step=None` takes the
    newest readable step, falling back to older ones.
    """
    ckpt = Checkpointer(find_checkpoint_dir(path), async_save=False)
    try:
        available = ckpt.steps()
        if step is not None and step not in available:
            raise CheckpointError(
                f"No checkpoint step {step} in {ckpt.directory}; available steps: {available}. "
                "Pass one of them (or omit --step for the newest)."
            )
        steps = [step] if step is not None else list(reversed(available))
        if not steps:
            raise CheckpointError(f"{ckpt.directory} holds no finished checkpoint yet.")
        last_error: Exception | None = None
        for s in steps:
            try:
                meta = ckpt.read_meta(s)
                # The model's params only: an objective's heads (HLP) are training-only.
                md = model_params(ckpt.manager.item_metadata(s)["state"]["params"])
                abstract = _single_device_target(md)
                shardings = (
                    sharding_fn(abstract)
                    if sharding_fn is not None
                    else jax.tree.map(lambda a: a.sharding, abstract)
                )
                target = jax.tree.map(
                    lambda a, sh: jax.ShapeDtypeStruct(a.shape, dtype or a.dtype, sharding=sh),
                    abstract,
                    shardings,
                )
                restore_args = jax.tree.map(
                    lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding, dtype=t.dtype), target
                )
                with ocp.PyTreeCheckpointer() as reader:
                    restored = reader.restore(
                        ckpt.step_dir(s) / "state",
                        args=ocp.args.PyTreeRestore(
                            item={"params": target},
                            restore_args={"params": restore_args},
                            partial_restore=True,
                        ),
                    )
                tok = None
                if (ckpt.step_dir(s) / "tokenizer").exists():
                    tok = ckpt.manager.restore(
                        s, args=ocp.args.Composite(tokenizer=ocp.args.JsonRestore())
                    )["tokenizer"]
                return restored["params"], meta, tok, s
            except Exception as e:  # noqa: BLE001 - fall back to an older step
                if step is not None:
                    raise
                print(f"WARNING: cannot read checkpoint step {s} ({type(e).__name__}: {e})")
                last_error = e
        raise CheckpointError(
            f"No readable checkpoint in {ckpt.directory} (last error: {last_error})."
        )
    finally:
        ckpt.close()


def restore_for_inference(
    run_dir: str | Path,
    *,
    step: int | None = None,
    sharding_fn: Callable[[Any], Any] | None = None,
    dtype: Any = None,
) -> tuple[Any, Any, Any, Any]:
    """(params, model_cfg, tokenizer, config) from a run dir's checkpoint (params only).

    The tokenizer comes from the checkpoint itself and is checked against the model's
    vocabulary, so eval and serving can never pair weights with the wrong tokenizer.
    """

    params, meta, tok_json, _ = restore_params_only(
        run_dir, step=step, sharding_fn=sharding_fn, dtype=dtype
    )
    return (params, *inference_facts(run_dir, meta, tok_json))


def inference_facts(
    run_dir: str | Path, meta: Mapping[str, Any], tok_json: Mapping[str, Any] | None
) -> tuple[Any, Any, Any]:
    """(model_cfg, tokenizer, config) of a checkpoint from its meta and tokenizer items
    (what `restore_for_inference` returns beside the params; the tokenizer is checked)."""
    config = config_from_dict(meta["config"])
    model_cfg = model_config_from(config.model)
    tokenizer = checkpoint_tokenizer(meta, tok_json, run_dir, model_cfg)
    return model_cfg, tokenizer, config


def checkpoint_tokenizer(
    meta: Mapping[str, Any], tok_json: Mapping[str, Any] | None, run_dir: str | Path, model_cfg: Any
) -> Any:
    """The tokenizer a checkpoint was trained with: its own copy (else `RUN/tokenizer/`),
    checked against the recorded fingerprint and the model's vocabulary, so eval and
    serving can never pair weights with the wrong tokenizer."""
    if tok_json:
        tokenizer = tokenizer_from_json(tok_json)
    else:
        tokenizer = load_tokenizer(Path(run_dir) / "tokenizer")
    if tokenizer.fingerprint() != meta.get("identity", {}).get("tokenizer_fingerprint"):
        raise CheckpointMismatchError(
            f"The tokenizer found for {run_dir} is not the one its checkpoint was trained with."
        )
    tokenizer.check_compatible(model_cfg)
    return tokenizer


def latest_step(run_dir: str | Path) -> int | None:
    """Newest finished checkpoint step of a run dir (or of its checkpoints/ dir).

    The one place that answers "which step is this run at" (eval labels its scalars with
    it, resuming and `--mode=eval` read it). None when the run has no checkpoints/ folder
    or no finished step in it yet.
    """
    try:
        directory = find_checkpoint_dir(run_dir)
    except CheckpointError:
        return None
    ckpt = Checkpointer(directory, async_save=False)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()
