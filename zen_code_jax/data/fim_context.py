"""Context-level FIM (`fim.level="context"`): FIM after packing, per document fragment.

Bavarian et al. (2022, section 4) found FIM applied to each document fragment of a packed
context slightly better than FIM applied to whole documents before packing; bigcode's
Megatron-LM does the same (`permute` per fragment between <|endoftext|>s, then
`truncate_or_pad`). Here a fragment is one segment of a packed row (a file, or a piece of
a long file), the unit whose attention the batch contract already isolates.

Each eligible fragment (the packer's `fim_ok` field: records from a domain in `fim.domains`)
gets `fim.unit_draw(seed, "context", its tokens)`: the same fragment gets the same draw in
every arm, worker count and restart, and arms are nested. `fim.fim_fragment` rearranges
it with its length unchanged, so the row's layout, segment ids and positions stay as
packed; targets and the loss mask are rebuilt, and every target that is <|fim_pad|> (the
length restoration) is masked out of the loss.

It runs in the host process after the packer, on finished batches, so its output depends
only on the packed rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zen_code_jax.data.fim import fim_fragment, unit_draw
from zen_code_jax.data.packing import make_batch


class ContextFim:
    """Batch dict (with "fim_ok") -> batch dict of the contract, FIM applied per fragment."""

    def __init__(self, tok: Any, seed: int, rate: float, spm_rate: float):
        self.tok, self.seed, self.rate, self.spm_rate = tok, int(seed), rate, spm_rate

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        ok = batch.pop("fim_ok")
        if self.rate <= 0.0:
            return batch
        tokens = batch["inputs"].copy()
        segs, pos = batch["segment_ids"], batch["positions"]
        changed = False
        for r in range(tokens.shape[0]):
            for k in range(1, int(segs[r].max(initial=0)) + 1):
                where = np.flatnonzero(segs[r] == k)
                if not ok[r, where[0]]:
                    continue
                ids = tokens[r, where]
                draw = unit_draw(self.seed, "context", ids.astype(np.int32).tobytes())
                out = fim_fragment(ids.tolist(), self.tok, draw, self.rate, self.spm_rate)
                if out is not None:
                    tokens[r, where] = out
                    changed = True
        if not changed:
            return batch
        out = make_batch(tokens, segs, pos)
        out["loss_mask"] = np.where(out["targets"] == self.tok.fim_pad_id, 0, out["loss_mask"])
        out["loss_mask"] = out["loss_mask"].astype(np.int32)
        return out
