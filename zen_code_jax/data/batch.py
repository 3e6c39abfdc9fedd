"""The batch contract between the data pipeline and everything that consumes batches.

Every producer (the Grain pipeline, the SFT dataset, test fixtures) yields `Batch`; every
consumer (the train and eval steps, multi-host assembly) reads its fields by name. It is a
`flax.struct` dataclass, so it is a pytree: `jax.jit`, `jax.device_put` and `jax.tree.map`
take it as they would a dict, while a typo is an AttributeError instead of a KeyError at
step 1 000.

All fields are int32 `[batch, seq_len]`:
  inputs       the packed tokens (pad_id on padding)
  targets      inputs shifted left by one *within* a segment (0 where there is no next token)
  segment_ids  1, 2, ... per packed document in a row; 0 on padding
  positions    0, 1, ... restarting in each segment; 0 on padding
  loss_mask    1 where targets is a real next token: 0 on padding and on each segment's
               last token (and, for SFT, on the prompt)
Attention is causal and never crosses segments; the loss never counts padding.

One optional field, `teacher` (None unless the run distils from offline teacher logits,
`data/teacher_logits.py`): a `TeacherTopK` of the teacher's top-k log-probs per position,
aligned with the rows. None is an empty pytree, so every other batch is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import struct

FIELDS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


@struct.dataclass
class TeacherTopK:
    """A teacher's distribution per position, kept to its k most likely tokens.

    ids   int32   [batch, seq_len, k]  the k most likely next tokens (at temperature T)
    logp  float32 [batch, seq_len, k]  their log-probs at temperature T
    rest  float32 [batch, seq_len]     log of the remaining mass, log(1 - sum exp(logp))
                                       (computed from the logits, -inf when k = vocab)
    nll   float32 [batch, seq_len]     the teacher's -log p(target) at temperature 1
    How the distillation loss uses them: `train/distill.py` (k buckets + one rest bucket).
    """

    ids: Any
    logp: Any
    rest: Any
    nll: Any


@struct.dataclass
class Batch:
    inputs: Any
    targets: Any
    segment_ids: Any
    positions: Any
    loss_mask: Any
    teacher: TeacherTopK | None = None  # offline teacher logits only (train/distill.py)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> Batch:
        """From a `{field: array}` mapping with exactly the contract's fields."""
        missing = [k for k in FIELDS if k not in d]
        extra = [k for k in d if k not in FIELDS]
        if missing or extra:
            raise ValueError(
                f"A batch needs exactly the fields {FIELDS}; missing {missing}, unexpected "
                f"{extra}. Producers must emit the contract in zen_code_jax/data/batch.py."
            )
        return cls(**{k: d[k] for k in FIELDS})

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in FIELDS}

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.inputs))
