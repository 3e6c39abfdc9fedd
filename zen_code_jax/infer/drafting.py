"""Speculative decoding, the host half: where drafts come from and when to use them.

Two drafters share one interface (`propose`):
- `NgramDrafter` (prompt lookup): the longest recent n-gram (n = ngram_max .. ngram_min)
  that ends the row's tokens and occurred earlier in them (prompt, repository context,
  FIM suffix, generated text); its continuation is the draft. No model, no device call:
  it pays off where code repeats its context (renames, parallel branches, a suffix the
  middle runs into).
- `ModelDrafter`: a small model with the target's tokenizer (typically the Flash
  student) on its own `SlotDecoder`, slot for slot beside the target's. What its cache
  holds is tracked per slot as a token list; before drafting, a row's cache is brought
  level with the row's committed tokens by feeding what differs (the longest common
  prefix decides, so rollbacks, prefix reuse and skipped turns need no bookkeeping):
  up to `catch_up` tokens inside the draft call, longer gaps by prefill chunks first.

`Speculator` decides per turn (`plan`): no speculation when more than `max_batch` rows
decode (a full batch already amortizes the weight pass, and a verify call's extra tokens
would cost more than they save), per row a draft no longer than its budget and slot
allow, and a row whose recent acceptance fell below `min_acceptance` skips drafting for a
back-off that doubles while it stays low. And it times both kinds of turn by batch size
(seconds per emitted token, drafting included): while speculative turns cost more per
token than plain ones it stops, probing now and then. Rows without a draft ride in the same call
(one token, exactly a decode step's sample); a turn where no row drafts is a plain
decode step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from zen_code_jax.infer.sampling import DEFAULT_CHAIN
from zen_code_jax.infer.slots import Chunk, DecodeRows, SlotDecoder
from zen_code_jax.infer.speculative import draft_buckets, row_buckets

SPEC_MODES = ("off", "ngram", "model")
PROBE_EVERY = 16  # turns between speculative probes while plain turns are cheaper


@dataclass(frozen=True)
class SpecConfig:
    """Speculative decoding's settings (`--speculative`, `--draft`, `--spec_*` flags)."""

    mode: str = "off"  # off | ngram | model
    max_draft: int = 4  # k: the most drafts verified per row and call (largest bucket)
    ngram_max: int = 4  # prompt lookup: longest n-gram matched
    ngram_min: int = 2  # shortest (1-grams match too much to pay off)
    max_batch: int = 4  # speculate only while at most this many rows decode
    min_acceptance: float = 0.25  # a row's acceptance EMA below this backs off
    catch_up: int = 4  # draft model: tokens fed per row inside the draft call
    timed: bool = True  # stop while speculative turns cost more per token than plain ones

    def __post_init__(self) -> None:
        if self.mode not in SPEC_MODES:
            raise ValueError(f"speculative mode {self.mode!r} is unknown; use off, ngram or model.")
        if not (1 <= self.max_draft <= 32 and 1 <= self.ngram_min <= self.ngram_max):
            raise ValueError(
                f"Need 1 <= max_draft ({self.max_draft}) <= 32 and 1 <= ngram_min "
                f"({self.ngram_min}) <= ngram_max ({self.ngram_max}); fix the --spec_* flags."
            )

    @property
    def on(self) -> bool:
        return self.mode != "off"


class Plan(NamedTuple):
    """One verify call's drafts: [B, K] (K a bucket), real lengths [B], and the draft
    model's probabilities [B, K, V] on the device (None: point-mass drafts)."""

    drafts: np.ndarray
    lens: np.ndarray
    q: Any


@dataclass
class RowSpec:
    """A row's speculation record (on the scheduler's `RowState`)."""

    drafted: int = 0
    accepted: int = 0
    ema: float = 1.0  # recent acceptance rate (per drafted token)
    skip: int = 0  # turns left without drafting
    backoff: int = 1


class NgramDrafter:
    """Prompt lookup over the row's own tokens (no device work)."""

    point_mass = True

    def __init__(self, config: SpecConfig):
        self.cfg = config

    def reset(self) -> None:
        """Nothing is cached per slot."""

    def lookup(self, seq: Sequence[int], k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest
        n-gram ending `seq` ([] when none of ngram_max..ngram_min occurred)."""
        arr = np.asarray(seq, np.int64)
        n_tok = len(arr)
        for n in range(self.cfg.ngram_max, self.cfg.ngram_min - 1, -1):
            if n_tok <= n:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(arr[: n_tok - 1], n)
            hits = np.flatnonzero((windows == arr[n_tok - n :]).all(axis=1))
            if hits.size:
                i = int(hits[-1]) + n
                return arr[i : i + k].tolist()
        return []

    def propose(self, entries: Sequence[DraftRow], slots: int, k: int) -> Plan:
        drafts, lens = np.zeros((slots, k), np.int32), np.zeros((slots,), np.int32)
        for e in entries:
            d = self.lookup(e.seq, e.want)
            drafts[e.slot, : len(d)], lens[e.slot] = d, len(d)
        return Plan(drafts, lens, None)


class DraftRow(NamedTuple):
    """A row asking for drafts: its slot, committed tokens (prompt + generated; the last
    one not yet in the target's cache), how many it wants, and its sampling columns
    (temp, top_p, seed, sample index, step)."""

    slot: int
    seq: list[int]
    want: int
    sampling: tuple[float, float, int, int, int]


class ModelDrafter:
    """A draft model on its own slot decoder, kept level with the target's rows."""

    point_mass = False

    def __init__(self, decoder: SlotDecoder, config: SpecConfig, vocab: int):
        self.dec, self.cfg, self.vocab = decoder, config, int(vocab)
        self.cached: list[list[int]] = [[] for _ in range(decoder.slots)]

    def reset(self) -> None:
        """Forget what the draft slots hold (a fresh call of `Scheduler.run`)."""
        self.cached = [[] for _ in range(self.dec.slots)]

    def _level(self, e: DraftRow) -> int:
        """Feed prefill chunks until at most `catch_up` of the row's tokens are missing
        from the draft's slot; returns how many it holds."""
        have, seq = self.cached[e.slot], e.seq
        c, limit = 0, min(len(have), len(seq) - 1)  # the last token is always fed
        while c < limit and have[c] == seq[c]:
            c += 1
        while len(seq) - c > self.cfg.catch_up:
            n = min(self.dec.chunk, len(seq) - self.cfg.catch_up - c)
            self.dec.run(
                None, Chunk(e.slot, seq[c : c + n], c, (0.0, 1.0, 0, 0, 0, 0, DEFAULT_CHAIN), False)
            )
            c += n
        self.cached[e.slot] = seq[:c]
        return c

    def propose(self, entries: Sequence[DraftRow], slots: int, k: int) -> Plan:
        t, kd = self.cfg.catch_up, self.cfg.max_draft
        tokens = np.zeros((slots, t), np.int32)
        start, n = np.zeros((slots,), np.int32), np.zeros((slots,), np.int32)
        cols = np.zeros((5, slots), np.float64)
        cols[1] = 1.0
        for e in entries:
            c = self._level(e)
            tail = e.seq[c:]
            tokens[e.slot, : len(tail)], start[e.slot], n[e.slot] = tail, c, len(tail)
            cols[:, e.slot] = e.sampling
        proposals, q = self.dec.draft(tokens, start, n, cols, k=kd, vocab=self.vocab)
        drafts, lens = np.zeros((slots, k), np.int32), np.zeros((slots,), np.int32)
        for e in entries:
            # The draft fed its proposals but the last: they are in its cache now.
            self.cached[e.slot] = e.seq + proposals[e.slot, : kd - 1].tolist()
            drafts[e.slot, : e.want] = proposals[e.slot, : e.want]
            lens[e.slot] = e.want
        return Plan(drafts, lens, q)


@dataclass
class Speculator:
    """The policy and the drafter one scheduler uses (`Scheduler(speculator=...)`)."""

    config: SpecConfig
    target: SlotDecoder
    drafter: NgramDrafter | ModelDrafter
    buckets: tuple[int, ...] = field(init=False)
    # Measured seconds per emitted token of plain decode turns and of speculative turns
    # (drafting included), by the number of decoding rows (EMAs; `record`).
    cost: dict[tuple[bool, int], float] = field(init=False, default_factory=dict)
    skipped: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.buckets = draft_buckets(self.config.max_draft)

    def record(self, speculative: bool, rows: int, seconds: float, tokens: int) -> None:
        """A decode turn's wall time and the tokens it emitted (the scheduler calls it)."""
        key, x = (speculative, rows), seconds / max(tokens, 1)
        self.cost[key] = x if key not in self.cost else 0.8 * self.cost[key] + 0.2 * x

    def worth_it(self, rows: int) -> bool:
        """Speculate at this batch size? Not until a plain turn was timed; then while a
        speculative turn's seconds per token beat a plain one's, probing every
        PROBE_EVERY turns after they stopped (acceptance changes as text does)."""
        if not self.config.timed:
            return True
        plain, spec = self.cost.get((False, rows)), self.cost.get((True, rows))
        if plain is None:
            return False
        if spec is None or spec < plain:
            self.skipped = 0
            return True
        self.skipped += 1
        return self.skipped % PROBE_EVERY == 0

    def reset(self) -> None:
        self.drafter.reset()

    def plan(self, rows: Sequence[tuple[int, Any]], decode: DecodeRows) -> Plan | None:
        """The drafts of this decode turn, or None (a plain decode step): `rows` are
        (slot, RowState) of every decoding row, `decode` their step inputs."""
        cfg = self.config
        if len(rows) > cfg.max_batch or not self.worth_it(len(rows)):
            return None
        entries = []
        for s, row in rows:
            spec: RowSpec = row.spec
            if spec.skip > 0:
                spec.skip -= 1
                if spec.skip == 0:
                    spec.ema = cfg.min_acceptance  # probe: one good turn resumes it
                continue
            pos = int(decode.pos[s])
            room = min(
                cfg.max_draft,
                row.request.max_new_tokens - len(row.ids) - 1,
                self.target.max_len - 1 - pos,
            )
            if self.drafter.point_mass is False:  # the draft model writes k - 1 past it
                room = min(room, self.drafter.dec.max_len - pos - cfg.max_draft)
            if room <= 0:
                continue
            sampling = tuple(
                float(x[s]) for x in (decode.temp, decode.top_p, decode.seeds, decode.index)
            ) + (float(decode.steps[s]),)
            entries.append(DraftRow(s, row.prompt_ids + row.ids, room, sampling))  # type: ignore[arg-type]
        if not entries:
            return None
        k = self.buckets[-1]
        plan = self.drafter.propose(entries, self.target.slots, k)
        longest = int(plan.lens.max())
        if longest == 0:
            return None
        k = next(b for b in self.buckets if b >= longest)
        return Plan(plan.drafts[:, :k], plan.lens, plan.q)  # q: [B, max_draft, V], cut on device

    def update(self, spec: RowSpec, drafted: int, accepted: int) -> None:
        """Record a verify call's outcome for one row; back off when acceptance is low."""
        if drafted == 0:
            return
        spec.drafted += drafted
        spec.accepted += accepted
        spec.ema = 0.5 * spec.ema + 0.5 * accepted / drafted
        if spec.ema < self.config.min_acceptance:
            spec.skip = spec.backoff
            spec.backoff = min(2 * spec.backoff, 64)
        elif accepted:
            spec.backoff = 1

    def warm_up(self) -> None:
        """Compile every verify (window, k) shape, and the draft model's steps, now."""
        dec = self.target
        z = np.zeros((dec.slots,), np.int32)
        q = None
        if isinstance(self.drafter, ModelDrafter):
            q = np.zeros((dec.slots, self.config.max_draft, self.drafter.vocab), np.float32)
        most = min(self.config.max_batch, dec.slots)
        for r in row_buckets(dec.slots)[: 1 + sum(b < most for b in row_buckets(dec.slots))]:
            active = np.arange(dec.slots) < r  # r decoding rows select the r-row shape
            for w in dec.windows:
                for temp, top_p in ((0.0, 1.0), (1.0, 0.5)):
                    rows = DecodeRows(
                        z, z, active, z + temp, z + top_p, z, z, z, z, z + DEFAULT_CHAIN
                    )
                    for k in self.buckets:
                        dec.verify(rows, np.zeros((dec.slots, k), np.int32), z, q, window=w)
        if isinstance(self.drafter, ModelDrafter):
            d = self.drafter.dec
            d.warm_up()
            t = self.config.catch_up
            for r in row_buckets(dec.slots)[: 1 + sum(b < most for b in row_buckets(dec.slots))]:
                n = (np.arange(d.slots) < r).astype(np.int32)  # r drafting rows
                for w in d.windows:
                    for temp, top_p in ((0.0, 1.0), (1.0, 0.5)):
                        cols = (z + temp, z + top_p, z, z, z)
                        d.draft(
                            np.zeros((d.slots, t), np.int32),
                            z,
                            n,
                            cols,
                            k=self.config.max_draft,
                            vocab=self.drafter.vocab,
                            window=w,
                        )
