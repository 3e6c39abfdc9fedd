"""The experiment config schema: one ml-collections ConfigDict with fixed top-level groups.

Every experiment file in `experiments/` starts from `base_config()` (through
`zen_code_jax.experiment.setup.start_config`) and changes fields; it never adds keys
(ConfigDicts are locked), so a typo is an error that names the valid keys. Groups: model,
mesh, data, fim, optimizer, train, checkpoint, distill, eval, report, arms.

Each group is read by one part of the package:
  model -> zen_code_jax.model     mesh -> zen_code_jax.parallel
  data, fim -> zen_code_jax.data  optimizer, train, checkpoint -> zen_code_jax.train
  eval -> zen_code_jax.eval       report, arms -> zen_code_jax.experiment
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
from typing import Any

import ml_collections

from zen_code_jax.model.config import PRESETS, ModelConfig, get_preset

# config.model.preset of a model whose fields were read from an HF config.json
# (zen_code_jax.hf): no preset stands behind them, every field is in the group.
HF_PRESET = "hf"


def model_group(
    preset: str | ModelConfig = "cpu_small", **overrides: Any
) -> ml_collections.ConfigDict:
    """A `model` group holding the preset name and every ModelConfig field, typed.

    `preset` is a preset name (`model/config.PRESETS`), or a whole ModelConfig (one read
    from an HF checkpoint), which is stored under the name `HF_PRESET`.
    """
    if isinstance(preset, ModelConfig):
        name, cfg = HF_PRESET, preset.replace(**overrides) if overrides else preset
    else:
        name, cfg = preset, get_preset(preset, **overrides)
    d = dataclasses.asdict(cfg)
    # head_dim may be None; store 0 for "derive from hidden_size // num_heads" so the
    # field has a type that command-line overrides can parse.
    d["head_dim"] = d["head_dim"] or 0
    return ml_collections.ConfigDict({"preset": name, **d})


def model_config_from(group: ml_collections.ConfigDict) -> ModelConfig:
    """Build the frozen ModelConfig from a config's `model` group."""
    d = dict(group.to_dict())
    preset = d.pop("preset")
    if preset not in PRESETS and preset != HF_PRESET:
        raise ValueError(f"Unknown model preset {preset!r}. Valid presets: {sorted(PRESETS)}.")
    d["head_dim"] = d["head_dim"] or None
    return ModelConfig.from_dict(d)


def base_config() -> ml_collections.ConfigDict:
    """Defaults for every group; experiment files override fields, never add keys."""
    c = ml_collections.ConfigDict()
    c.name = "experiment"
    c.seed = 0
    c.scale = "cpu"  # smoke | cpu | gpu | paper (set by the experiment file's ARG)
    c.arm = ""  # the arm this config was resolved for ("" = the base, before arms)

    c.model = model_group("cpu_small")

    # Mesh axes; -1 fills the remaining devices. Product must equal the device count.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, sequence=1))

    c.data = ml_collections.ConfigDict(
        dict(
            source="stdlib",  # stdlib | local | dir | jsonl | parquet
            path="",  # for dir / jsonl / parquet
            mode="file",  # file (pretraining) | repo (repository windows)
            heldout_fraction=0.05,  # share of repositories held out (by repository)
            max_file_bytes=1_000_000,
            minhash_num_perm=100,  # = bands x rows; 20 x 5: P(candidate | J=0.8) = 0.9996
            minhash_bands=20,
            minhash_rows=5,
            minhash_threshold=0.8,
            shingle_size=10,
            num_workers=0,  # grain worker processes; 0 = in-process
            num_prepare_processes=2,
            domain_weights={"code": 1.0},
            language_weights={},  # empty: natural frequencies
            exclude_tests=False,
            max_files=0,  # 0 = all files; N = a deterministic hash-ranked sample (tests)
            max_bytes=0,  # 0 = no cap; N = hash-ranked files up to N bytes (sized runs)
            # --- issue 10a: batches and repository formats (docs/data_pipeline.md, docs/fim.md) ---
            row_shuffle_window=64,  # rows per packing group, shuffled together; 0 = fill order
            # repo mode layout: report | qwen2.5 | starcoder2; "" = the tokenizer's own
            # (report for ours; an HF Qwen2.5-Coder / StarCoder2 tokenizer's family)
            repo_format="",
            # --- issue 21 items 1: repository prefixes (docs/fim.md) ---
            repo_prefix="none",  # none | paths | paths+symbols: window opens with paths/symbols
            repo_prefix_tokens=256,  # the prefix's budget (<= seq_len / 4); off: unused
            # --- preparation: decontamination, repo-FT filter, runner (issue 10, item 5-7)
            decontaminate=True,  # drop files sharing a 10-gram with HumanEval (+ MBPP below)
            mbpp_path="",  # MBPP JSONL to decontaminate against ("" = HumanEval only)
            min_repo_files=0,  # train split keeps repos with > N files (report's FT: 10)
            min_repo_lines=0,  # ... and > N lines in total (report's FT: 1,000); 0 = off
            prepare_runner="local",  # local (streaming, in-process) | beam (DirectRunner)
            beam_options="--direct_num_workers=2 --direct_running_mode=multi_processing",
        )
    )

    c.fim = ml_collections.ConfigDict(
        dict(
            rate=0.5,  # share of FIM units: files (document level) or packed fragments
            spm_rate=0.5,
            # --- issue 10a: FIM unit and domains (docs/data_pipeline.md, docs/fim.md) ---
            level="document",  # document: per file, before packing | context: per fragment
            domains=("code",),  # domains whose records may become FIM (report: code samples)
            # --- issue 21 item 2: span choice (docs/fim.md) ---
            span="char",  # char | line (whole lines) | ast (a syntax node); same draws
        )
    )

    c.optimizer = ml_collections.ConfigDict(
        dict(
            peak_lr=3e-4,
            final_lr=3e-5,
            warmup_steps=1000,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.1,
            clip_norm=1.0,
            z_loss=0.0,
        )
    )

    c.train = ml_collections.ConfigDict(
        dict(
            seq_len=512,
            global_batch_size=8,  # sequences per optimizer step, across all hosts
            micro_batch_size=0,  # per-step micro-batch (sequences); 0 = no accumulation
            steps=1000,
            log_every=10,
            eval_every=0,  # 0 = only at the end
            peak_flops_per_device=0.0,  # 0 = guess from the backend (for MFU)
            loss_chunk_size=0,  # tokens per logits chunk in the loss; 0 = unchunked
            init_checkpoint="",  # start from these params (e.g. a base model for repo FT)
            # A run dir, a checkpoints/ dir, "arm:NAME" for a sibling arm of the experiment,
            # or "hf:DIR" for an HF Qwen2 directory (its tokenizer then tokenizes the data).
            objective="lm",  # lm (every token) | sft (loss on the response only)
            epochs=0,  # > 0: steps = epochs * batches per epoch (sft); 0: use `steps`
            sft_data="",  # JSONL of {"instruction","response"}; "" = built-in from corpus
        )
    )

    c.checkpoint = ml_collections.ConfigDict(
        # hf_export_every: also write RUN/hf/<step>/ (an HF directory) every N steps; 0 = off.
        dict(every=100, keep_last=3, keep_every=0, async_save=True, hf_export_every=0)
    )

    c.eval = ml_collections.ConfigDict(
        dict(
            tasks=("heldout_loss",),  # a tuple so --config.eval.tasks="('a','b')" works
            # A named task list run after `tasks` (eval.registry.SUITES): "report" runs the
            # paper's benchmarks whose data is configured and writes eval/report/ (Tables
            # 4-6 beside the paper's numbers; eval/suite.py). "" = none.
            suite="",
            max_new_tokens=64,
            temperature=0.0,
            top_p=1.0,
            num_samples=1,
            limit=0,  # 0 = all problems
            batch_size=8,
            sandbox_timeout_s=10.0,
            sandbox_memory_mb=1024,
            sandbox_workers=2,
            # site-packages (import names) sandboxed programs may import, e.g. ("numpy",);
            # the whole stdlib always imports, nothing else of the host's Python does.
            sandbox_packages=(),
            fim_mode="psm",  # eval: FIM prompt layout for infilling tasks (psm | spm)
            context_tokens=0,  # eval: prompt+generation token budget; 0 = train.seq_len
            # Each task's own options, {task: {option: value}}, e.g. {"mbpp": {"path": F}}:
            # every task module declares them (a frozen dataclass with defaults, its
            # `Task.options_type`), checked by `eval.registry.check_task_options`.
            task_options={},
        )
    )

    # --- issue 20: knowledge distillation (train.objective="distill"; docs/distill.md) ---
    c.distill = ml_collections.ConfigDict(
        dict(
            # The teacher: hf:DIR, arm:NAME (a sibling arm), arm:EXPERIMENT/ARM (an arm of
            # another experiment in the same workdir) or a run directory; same tokenizer.
            teacher="",
            alpha=0.5,  # weight of the label CE; 1 - alpha weighs T^2 x KL
            temperature=1.0,  # T: both distributions softened as softmax(logits / T)
            kl="forward",  # forward: KL(teacher || student) | reverse: KL(student || teacher)
            chunk=256,  # positions per logits chunk (neither [B, S, V] tensor exists whole)
            teacher_dtype="bfloat16",  # the frozen teacher's params on the mesh
            # Offline teacher logits: "" = run the teacher beside the student (online);
            # a directory = read its top-k there (written first if missing; "run" = RUN/teacher_logits).
            logits_dir="",
            top_k=64,  # offline: the k most likely tokens stored per position
            # Offline: where the teacher runs over the batches: "local" (this process) |
            # "beam" (an Apache Beam pipeline, train/distill_beam.py, with beam_options;
            # its own setting, not data.prepare_runner: the corpus and the teacher are
            # prepared on different workers, and data.* keys the rows).
            logits_runner="local",
            beam_options="--runner=DirectRunner --direct_num_workers=1 --direct_running_mode=in_memory",
        )
    )

    # Which of the report's tables report.md shows beside the generic one: "fim_rate"
    # (Table 7) and/or "repo_ft" (Table 8). Chosen here, never by experiment name, so a
    # forked experiment file keeps its tables.
    c.report = ml_collections.ConfigDict(dict(tables=()))

    # --- issue 21 items 3-5 (FIM variants): every one off by default ---------------------
    # data.packing: first_fit (the packer of every run so far) | best_fit (data/packing.py).
    c.data.packing = "first_fit"
    # train.hlp_weight > 0: `lm` + w x Horizon-Length Prediction (train/hlp.py).
    c.train.hlp_weight = 0.0
    # (fim_middle_id, eot_id) of the run's tokenizer, for HLP; written by the arm (resolve_config).
    c.train.hlp_sentinels = ()
    # The arm report.md's paired differences are taken from; "" = the first arm.
    c.report.baseline = ""

    # Named overrides that make up an ablation: {arm_name: {"dotted.key": value}}.
    c.arms = ml_collections.ConfigDict()
    c.lock()
    return c


# ---------------------------------------------------------------------------------------
# Overrides and arms: typed dotted-key updates, shared by experiment files and every CLI.


def parse_value(text: str, current: Any, key: str) -> Any:
    """Parse a command-line string against the type of the value it replaces."""
    if isinstance(current, bool):
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(f"{key} is a bool; got {text!r}. Use true or false.")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(
            f"Cannot parse {text!r} for {key} (currently {current!r}, a "
            f"{type(current).__name__}). Give a Python literal, e.g. {key}={current!r}."
        ) from None
    if isinstance(current, tuple) and isinstance(value, list | str):
        value = tuple(value) if isinstance(value, list) else (value,)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, int) and isinstance(value, float) and value.is_integer():
        value = int(value)
    return value


# Groups whose keys are not fixed here: `eval.task_options.<task>.<option>` may name any
# task and option; the eval layer checks them against the task's own options
# (`eval.registry.check_task_options`), since this module sits below the tasks.
OPEN_GROUPS: tuple[str, ...] = ("eval.task_options",)

# Keys of older config.json files that moved: old dotted key -> (the keys now holding its
# value, the old default; a value equal to it is dropped). Read by `config_from_dict`.
_INFILL_DIR_TASKS = (
    "humaneval_fim_qwen",
    "humaneval_infilling_openai_single",
    "humaneval_infilling_openai_multi",
    "humaneval_infilling_openai_random_span",
    "humaneval_infilling_openai_random_span_light",
)
LEGACY_KEYS: dict[str, tuple[tuple[str, ...], Any]] = {
    "eval.mbpp_path": (("eval.task_options.mbpp.path",), ""),
    "eval.multipl_e_path": (("eval.task_options.multipl_e.path",), ""),
    "eval.humaneval_infill_dir": (
        tuple(f"eval.task_options.{t}.dir" for t in _INFILL_DIR_TASKS),
        "",
    ),
    "eval.heldout_files": (("eval.task_options.heldout_loss.files",), 0),
}


def _set_open(cfg: ml_collections.ConfigDict, group: str, key: str, raw: Any) -> None:
    """Set `key` (below the open `group`), creating the groups on its way. A string for a
    new key stays a string: the task's options parse it against their own field types."""
    node = cfg
    for part in group.split("."):
        node = node[part]
    parts = key[len(group) + 1 :].split(".")
    for i, part in enumerate(parts):
        if not part:
            raise ValueError(f"Bad config key {key!r}: an empty name between dots.")
        if i == len(parts) - 1:
            break
        if part not in node:
            with node.unlocked():
                node[part] = ml_collections.ConfigDict()
        node = node[part]
        if not isinstance(node, ml_collections.ConfigDict):
            raise ValueError(f"{key}: {'.'.join(parts[: i + 1])} is a value, not a group.")
    leaf = parts[-1]
    current = node[leaf] if leaf in node else None
    value = parse_value(raw, current, key) if isinstance(raw, str) and current is not None else raw
    try:
        with node.unlocked():
            node[leaf] = value
    except TypeError as e:
        raise ValueError(f"Bad value {raw!r} for {key}: {e}") from None


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Any) -> None:
    """Set dotted keys (`{"fim.rate": 0.25}`) in place; unknown keys and bad types raise.

    Errors name the valid keys at the level where the path went wrong (with the closest
    match first), or the expected type, so a typo is fixed in one go. Below an
    `OPEN_GROUPS` group (`eval.task_options.mbpp.path`) new keys are created.
    """
    for key, raw in dict(overrides).items():
        group = next((g for g in OPEN_GROUPS if key.startswith(g + ".")), None)
        if group is not None:
            _set_open(cfg, group, key, raw)
            continue
        parts = key.split(".")
        node = cfg
        for i, part in enumerate(parts):
            valid = list(node.keys())
            if part not in valid:
                where = ".".join(parts[:i]) or "the config"
                close = difflib.get_close_matches(part, valid, n=1)
                hint = f" Did you mean {'.'.join(parts[:i] + close)!r}?" if close else ""
                raise ValueError(
                    f"Unknown config key {key!r}: {where} has no field {part!r}.{hint} "
                    f"Valid keys there: {sorted(valid)}."
                )
            if i < len(parts) - 1:
                node = node[part]
                if not isinstance(node, ml_collections.ConfigDict):
                    raise ValueError(
                        f"Unknown config key {key!r}: {'.'.join(parts[: i + 1])} is a value, "
                        "not a group."
                    )
        current = node[parts[-1]]
        value = parse_value(raw, current, key) if isinstance(raw, str) else raw
        if isinstance(current, ml_collections.ConfigDict) and parts[-1] != "arms":
            if not isinstance(value, dict | ml_collections.ConfigDict):
                raise ValueError(f"{key} is a group; set one of its fields, e.g. {key}.<field>.")
        try:
            if parts[-1] == "arms" and len(parts) == 1:
                set_arms(cfg, value)
            else:
                node[parts[-1]] = value
        except TypeError as e:
            raise ValueError(
                f"Bad value {raw!r} for {key}: expected a {type(current).__name__} like "
                f"{current!r} ({e})."
            ) from None


def set_arms(cfg: ml_collections.ConfigDict, arms: Any) -> None:
    """Set `cfg.arms` to `{arm: {"dotted.key": value}}`, checking every key exists."""
    arms = arms.to_dict() if isinstance(arms, ml_collections.ConfigDict) else dict(arms)
    for name, overrides in arms.items():
        probe = ml_collections.ConfigDict(cfg.to_dict(), allow_dotted_keys=True)
        probe.lock()
        probe.arms = ml_collections.ConfigDict()
        try:
            apply_overrides(probe, overrides)
        except ValueError as e:
            raise ValueError(f"Arm {name!r}: {e}") from None
    cfg.arms = ml_collections.ConfigDict(arms, allow_dotted_keys=True)


def arm_config(cfg: ml_collections.ConfigDict, arm: str) -> ml_collections.ConfigDict:
    """The config one arm runs with: the base plus the arm's overrides, `arm` set."""
    if arm and arm not in cfg.arms:
        raise ValueError(
            f"Unknown arm {arm!r}. This experiment's arms: {sorted(cfg.arms.keys())}; "
            "pass one of them to --arm, or leave --arm out to run them all."
        )
    out = config_from_dict(config_to_dict(cfg))
    if arm:
        apply_overrides(out, cfg.arms[arm].to_dict())
    out.arm = arm
    return out


def arm_names(cfg: ml_collections.ConfigDict) -> list[str]:
    """Arms in file order; an experiment without arms has one unnamed arm, 'main'."""
    return list(cfg.arms.keys()) or ["main"]


def config_to_dict(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    return cfg.to_dict()


def config_from_dict(d: dict[str, Any]) -> ml_collections.ConfigDict:
    """Rebuild a locked config from `config_to_dict` output (e.g. a run's config.json)."""
    cfg = base_config()
    d = dict(d)
    arms = {name: _upgrade_keys(dict(overrides)) for name, overrides in d.pop("arms", {}).items()}
    moved = {}
    for old, (new, default) in LEGACY_KEYS.items():
        group, key = old.split(".")
        if isinstance(d.get(group), dict) and key in d[group]:
            d[group] = dict(d[group])
            value = d[group].pop(key)
            moved.update({k: value for k in new if value != default})
    for group, value in d.items():
        if group not in cfg:
            raise ValueError(
                f"config.json has a group {group!r} this version does not know. "
                f"Valid groups: {sorted(cfg.keys())}."
            )
        if isinstance(cfg[group], ml_collections.ConfigDict):
            for key, v in value.items():
                if key not in cfg[group]:
                    raise ValueError(
                        f"config.json has unknown key {group}.{key}. "
                        f"Valid keys: {sorted(cfg[group].keys())}."
                    )
                cfg[group][key] = v
        else:
            cfg[group] = value
    apply_overrides(cfg, moved)
    set_arms(cfg, arms)
    return cfg


def _upgrade_keys(overrides: dict[str, Any]) -> dict[str, Any]:
    """An arm's dotted overrides with `LEGACY_KEYS` renamed (older config.json files)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        out.update({k: value for k in LEGACY_KEYS.get(key, ((key,), None))[0]})
    return out
