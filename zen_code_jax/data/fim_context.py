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

At `fim.span="ast"` a fragment is parsed with its file's grammar, which the packer carries
as the segment's flag (`grammar_code`); a fragment that is a piece of a longer file
rarely parses, and then falls back to a character span (counted in `spans.span_stats`).

It runs in the host process after the packer, on finished batches, so its output depends
only on the packed rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zen_code_jax.data.fim import fim_fragment, unit_draw
from zen_code_jax.data.packing import make_batch
from zen_code_jax.data.spans import check_span
from zen_code_jax.data.symbols import GRAMMARS, grammar_of

# The packer's per-segment flag ("fim_ok") at fim.span="ast": 0 = not eligible, 1 =
# eligible with no grammar, 2 + k = eligible, parsed with GRAMMARS[k]. Other spans keep
# the plain eligible bool (1), so their batches are bitwise as before.


def grammar_code(eligible: bool, path: str) -> int:
    """The flag of an eligible file's segments at fim.span="ast" (see above)."""
    if not eligible:
        return 0
    grammar = grammar_of(path) if path else None
    return 1 if grammar is None else 2 + GRAMMARS.index(grammar)


def code_grammar(code: int) -> str | None:
    """The grammar a flag names (None for 0 / 1)."""
    return GRAMMARS[code - 2] if code >= 2 else None


class ContextFim:
    """Batch dict (with "fim_ok") -> batch dict of the contract, FIM applied per fragment."""

    def __init__(self, tok: Any, seed: int, rate: float, spm_rate: float, span: str = "char"):
        self.tok, self.seed, self.rate, self.spm_rate = tok, int(seed), rate, spm_rate
        self.span = check_span(span)

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
                grammar = code_grammar(int(ok[r, where[0]])) if self.span == "ast" else None
                out = fim_fragment(
                    ids.tolist(),
                    self.tok,
                    draw,
                    self.rate,
                    self.spm_rate,
                    span=self.span,
                    grammar=grammar,
                )
                if out is not None:
                    tokens[r, where] = out
                    changed = True
        if not changed:
            return batch
        out = make_batch(tokens, segs, pos)
        out["loss_mask"] = np.where(out["targets"] == self.tok.fim_pad_id, 0, out["loss_mask"])
        out["loss_mask"] = out["loss_mask"].astype(np.int32)
        return out
