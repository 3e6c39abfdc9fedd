"""Instruction fine-tuning as in the report's section 3.5: LR 1e-5, 2 epochs.

The loss counts response tokens only. Data is a JSONL file of
`{"instruction": ..., "response": ...}` pairs (`train.sft_data=/path/to/pairs.jsonl`), or,
by default, a built-in offline source derived from the prepared corpus: every documented
Python function becomes one pair (instruction: its signature and docstring; response:
the implementation). Held-out pairs come from the corpus's held-out repositories (or,
for a JSONL file, every 20th pair) and give `eval/heldout_batches/loss` on responses.

The model starts from the pretraining experiment's newest checkpoint at the same scale
(`WORKDIR/pretrain/main`), so run `experiments/pretrain.py` first at that scale, or set
`train.init_checkpoint` to another run dir ("" trains from scratch).

This file also shows how an experiment replaces the data pipeline: run.py uses a
module-level `make_dataset` when the experiment file defines one.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from zen_code_jax.config import apply_overrides
from zen_code_jax.data.batch import Batch
from zen_code_jax.experiment.setup import Scale, start_config

PROMPT = "### Instruction:\n{instruction}\n### Response:\n"
# The model of the pretraining run it starts from, per scale; the optimizer is section 3.5's
# (set in get_config); `steps` is unused: SFT runs train.epochs over the pairs, and the
# orchestrator sizes the schedule, plan and report from epochs x batches per epoch.
SCALES = {
    "smoke": Scale("tiny", seq_len=128, batch=8, steps=6, lr=(1e-3, 1e-6, 10)),
    "cpu": Scale(
        "cpu_small",
        seq_len=512,
        batch=4,
        steps=256,
        lr=(1e-5, 1e-6, 10),
        model_overrides={"dtype": "float32"},
    ),
    "gpu": Scale("gpu_small", seq_len=1024, batch=64, steps=1000, lr=(1e-5, 1e-6, 10)),
    "paper": Scale("zen_code_14b", seq_len=4096, batch=1024, steps=625_000, lr=(1e-5, 1e-6, 10)),
}
# Pairs used per split, per scale (0 = all): keeps 2 epochs within each scale's budget.
MAX_PAIRS = {"smoke": 64, "cpu": 2000, "gpu": 0, "paper": 0}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c, overrides = start_config("sft", arg, SCALES)
    c.train.objective = "sft"
    c.train.epochs = 2
    c.train.init_checkpoint = "arm:../pretrain/main"
    c.optimizer.weight_decay = 0.0
    c.fim.rate = 0.0
    c.eval.tasks = ("humaneval",) if c.scale in ("gpu", "paper") else ()
    c.train.eval_every = {"smoke": 0, "cpu": 100, "gpu": 200, "paper": 500}[c.scale]
    if c.scale == "smoke":
        c.train.init_checkpoint = ""
    apply_overrides(c, overrides)
    return c


# ------------------------------------------------------------------------------ pairs
def docstring_pairs(source: str) -> list[dict[str, str]]:
    """(signature + docstring) -> implementation pairs from one Python file's functions."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines(keepends=True)
    pairs = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        doc = ast.get_docstring(node)
        if not doc or len(node.body) < 2 or len(doc) < 20:
            continue
        body_start = node.body[1].lineno - 1
        header = "".join(lines[node.lineno - 1 : node.body[0].lineno - 1]).rstrip()
        body = "".join(lines[body_start : node.end_lineno])
        if not body.strip() or len(body) > 4000:
            continue
        instruction = f"Implement this Python function.\n{header}\n{doc}"
        pairs.append({"instruction": instruction, "response": body})
    return pairs


def load_pairs(corpus: Any, config: ml_collections.ConfigDict, split: str) -> list[dict]:
    path = str(config.train.sft_data)
    if path:
        rows = []
        with open(Path(path).expanduser(), encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row.get("instruction"), str) or not isinstance(
                    row.get("response"), str
                ):
                    raise ValueError(
                        f"{path}:{n}: each line needs string fields 'instruction' and 'response'."
                    )
                rows.append(row)
        pairs = [r for i, r in enumerate(rows) if (i % 20 == 19) == (split == "heldout")]
    else:
        source = corpus.source(split)
        pairs = []
        for i in range(len(source)):
            rec = source[i]
            if rec.get("language") == "Python":
                pairs.extend(docstring_pairs(rec["content"]))
    limit = MAX_PAIRS.get(str(config.scale), 0)
    if not pairs:
        raise ValueError(
            f"No SFT pairs in the {split!r} split. Give train.sft_data=PATH.jsonl with "
            "instruction/response lines, or a corpus with documented Python functions."
        )
    return pairs[:limit] if limit else pairs


def encode_pair(tok: Any, pair: dict, seq_len: int) -> dict[str, np.ndarray]:
    """One padded row; the loss mask covers response tokens (and the closing EOT) only."""
    prompt = tok.encode(PROMPT.format(instruction=pair["instruction"]))
    response = tok.encode(pair["response"]) + [tok.eot_id]
    ids = (prompt + response)[: seq_len + 1]
    n = len(ids) - 1
    row = {k: np.zeros(seq_len, np.int32) for k in ("inputs", "targets", "segment_ids")}
    row["inputs"][:n] = ids[:-1]
    row["targets"][:n] = ids[1:]
    row["segment_ids"][:n] = 1
    row["positions"] = np.where(np.arange(seq_len) < n, np.arange(seq_len), 0).astype(np.int32)
    # Target t is token t+1 of the row: a response token when t+1 >= len(prompt).
    row["loss_mask"] = ((np.arange(seq_len) + 1 >= len(prompt)) & (np.arange(seq_len) < n)).astype(
        np.int32
    )
    return row


class SFTIterator:
    """Epoch-shuffled batches of padded pairs; `get_state`/`set_state` for exact resume."""

    def __init__(self, rows: list[dict], batch_size: int, seed: int, shuffle: bool, repeat: bool):
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.shuffle, self.repeat = shuffle, repeat
        self.batches_per_epoch = len(rows) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(rows)} SFT pairs are fewer than one batch of {batch_size}; lower "
                "train.global_batch_size or give more pairs."
            )
        self.epoch, self.index = 0, 0

    def _order(self) -> np.ndarray:
        n = len(self.rows)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def __iter__(self) -> SFTIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.index >= self.batches_per_epoch:
            if not self.repeat:
                raise StopIteration
            self.epoch, self.index = self.epoch + 1, 0
        order = self._order()
        take = order[self.index * self.batch_size : (self.index + 1) * self.batch_size]
        self.index += 1
        return Batch.from_mapping(
            {k: np.stack([self.rows[i][k] for i in take]) for k in self.rows[0]}
        )

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def make_dataset(
    corpus: Any,
    config: ml_collections.ConfigDict,
    *,
    split: str = "train",
    seq_len: int,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
) -> SFTIterator:
    """The SFT data pipeline (replaces zen_code_jax.data.pipeline.make_dataset here)."""
    pairs = load_pairs(corpus, config, split)[shard_index::shard_count]
    tok = corpus.tokenizer
    rows = [encode_pair(tok, p, seq_len) for p in pairs]
    train = split == "train"
    return SFTIterator(rows, batch_size, seed, shuffle=train, repeat=train)
