"""Continuous batching: rows move through the slots of a `SlotDecoder`, one turn at a time.

The one decoding loop of the package. The server runs it on its own thread (`start`,
`submit` from handler threads, events back); evaluation runs the same turns on the calling
thread until its rows are done (`run`, driven by `InferenceEngine.complete`).

Each turn the scheduler (1) frees the slots of cancelled rows, (2) admits waiting rows
into free slots (preferring the free slot whose cached tokens share the longest prefix
with the prompt), (3) runs one model call that decodes a token for every decoding row and
prefills one chunk of the oldest row still prefilling (chunked prefill inside the decode
batch, as Sarathi-Serve does), and hands each row's new text to its job as an event.
Admission is first come, first served unless an `Admission` policy says otherwise (the
server's): then one request's rows hold at most a share of the slots, and waiting rows
with short budgets go first, aged so that a long one is never passed over forever.
A row leaves at a stop id, a stop string, its budget or the end of its slot. With a
`speculator` (`drafting.Speculator`; off by default) a decode-only turn may instead verify
drafted tokens (`_verify`): one call, and each row takes its accepted drafts and one more
token through the same `_accept` as a decoded token. With
`continuous=False` (the benchmark's baseline) rows are admitted only into an empty
machine, i.e. static batching.

Text. Each new token re-decodes the row; text is released only up to the point where no
stop string could still begin (and never a trailing partial UTF-8 character), so a stop
string is never emitted, and `usage` counts only the tokens whose text is kept.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zen_code_jax.infer.admission import Admission
from zen_code_jax.infer.drafting import Plan, RowSpec, Speculator
from zen_code_jax.infer.request import Completion, CompletionRequest, indent_cut
from zen_code_jax.infer.slots import Chunk, DecodeRows, Sampled, SlotDecoder


@dataclass
class RowState:
    """The scheduler's record of one request while it decodes (the request stays a value).

    Read by the server's handler after the row's events (`kept_tokens`, `finish_reason`,
    `prompt_records`) and by `InferenceEngine.complete` (`completion()`)."""

    request: CompletionRequest
    prompt_records: list[tuple[int, float, list[int], list[float]]] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    logprobs: list[tuple[float, list[int], list[float]]] = field(default_factory=list)
    text: str = ""  # the text handed out so far (cut before any stop string)
    sent_chars: int = 0  # characters of text already handed out
    sent_tokens: int = 0  # tokens whose logprobs were handed out
    finish_reason: str | None = None
    kept_tokens: int = 0
    slot: int | None = None
    prefilled: int = 0  # prompt tokens in the slot's cache
    reused: int = 0  # of which were already there (prefix reuse)
    stop_type: str = ""  # llama.cpp's why: "eos", "word" (a stop string), "limit"
    stop_word: str = ""  # the stop string that ended it (stop_type "word")
    t_admitted: float = 0.0  # monotonic times: into a slot, first token, finished
    t_prompt_done: float = 0.0
    t_done: float = 0.0
    spec: RowSpec = field(default_factory=RowSpec)  # speculative decoding's record

    @property
    def prompt_ids(self) -> list[int]:
        return self.request.prompt_ids

    def completion(self) -> Completion:
        """The finished row as a result: its released text and the tokens that made it."""
        if self.finish_reason is None:
            raise RuntimeError("The row has not finished decoding; run its job to the end.")
        ids = self.ids[: self.kept_tokens]
        return Completion(self.text, ids, self.finish_reason, len(self.prompt_ids))


@dataclass
class Event:
    """New output of one row: text delta, its tokens' logprob records, and the end."""

    row: int
    text: str
    logprobs: list[tuple[int, float, list[int], list[float]]]
    finish_reason: str | None = None


class Job:
    """The rows of one request and the queue of their events (read by the HTTP thread)."""

    def __init__(
        self,
        requests: Sequence[CompletionRequest],
        alive: Callable[[], bool] | None = None,
        *,
        stream: bool = True,
    ):
        """alive: polled by the scheduler every turn (False = the client went away), so a
        disconnect frees the slots at the next step whatever the HTTP thread is doing.
        stream: hand out text as it is decoded (one event per safe piece); False releases
        each row's text once, when it ends (evaluation reads only the result, and skips
        the per-token detokenization that streaming needs)."""
        self.rows = [RowState(r) for r in requests]
        self.stream = bool(stream)
        self.alive = alive
        self.events: queue.Queue[Event] = queue.Queue()
        self.cancelled = threading.Event()
        self.submitted = time.monotonic()
        self.queued_turn = 0  # the scheduler turn it was queued at (admission's aging)
        self.first_token: float | None = None
        self.remaining = len(self.rows)

    def cancel(self) -> None:
        self.cancelled.set()

    @property
    def finished(self) -> bool:
        return self.remaining == 0


class QueueFull(RuntimeError):
    """The wait queue is at its cap: the server answers 429 with Retry-After."""


class Scheduler:
    """Drive a SlotDecoder: from its own thread (`start`, then `submit(job)` from any
    thread), or synchronously (`run(job)`)."""

    def __init__(
        self,
        decoder: SlotDecoder,
        tokenizer: Any,
        stop_ids: Sequence[int],
        *,
        max_queue: int = 64,
        continuous: bool = True,
        prefill_interval: int = 1,
        admission: Admission = Admission(),
        speculator: Speculator | None = None,
    ):
        """prefill_interval: while rows are decoding, one prefill chunk per this many decode
        steps (1: every turn; larger trades time to first token for steadier decoding).
        admission: fairness across requests (default: first come, first served).
        speculator: drafts verified in decode turns (`drafting.Speculator`; None: off)."""
        self.dec, self.tok = decoder, tokenizer
        self.spec = speculator
        self.stop_ids = frozenset(int(i) for i in stop_ids)
        self.max_queue, self.continuous = int(max_queue), bool(continuous)
        self.prefill_interval = max(1, int(prefill_interval))
        self._since_prefill = 0
        self.admission = admission
        self.turn = 0  # turns run (step() calls): the clock of admission's aging
        n = decoder.slots
        self.slot_rows: list[tuple[Job, int] | None] = [None] * n
        self.slot_tokens: list[list[int]] = [[] for _ in range(n)]  # valid cache contents
        self.slot_used = [0.0] * n
        self.waiting: collections.deque[tuple[Job, int]] = collections.deque()
        self.cond = threading.Condition()
        self.stats = collections.Counter()
        # Called with each job's time to first token (seconds; the server's histogram).
        self.on_first_token: Callable[[float], None] | None = None
        self._stop = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public
    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        """Queue a job's rows (QueueFull when the wait queue is at its cap)."""
        with self.cond:
            self._check_samplers(job)
            if len(self.waiting) + len(job.rows) > self.max_queue:
                self.stats["rejected_queue_full"] += 1
                raise QueueFull(f"{len(self.waiting)} rows are waiting (cap {self.max_queue}).")
            job.queued_turn = self.turn
            self.waiting.extend((job, i) for i in range(len(job.rows)))
            self.stats["requests"] += 1
            self.cond.notify_all()

    def _check_samplers(self, job: Job) -> None:
        """A sampled row with top_k or a sampler order needs a decoder compiled with them."""
        if self.dec.samplers:
            return
        for row in job.rows:
            r = row.request
            if not r.greedy and (r.top_k > 0 or r.samplers is not None):
                raise ValueError(
                    "top_k / samplers need a decoder built with SlotDecoder(samplers=True) "
                    "(the server's is; InferenceEngine.complete builds one when asked)."
                )

    def wake(self) -> None:
        """Make the loop look at cancellations now."""
        with self.cond:
            self.cond.notify_all()

    @property
    def busy_slots(self) -> int:
        return sum(r is not None for r in self.slot_rows)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    def run(self, job: Job) -> None:
        """Decode `job` on the calling thread until every row has finished: the synchronous
        driver (evaluation). The same turns as the thread's, so a request decodes to the
        same tokens whichever drives it. Waiting rows are not capped (`max_queue` is the
        server's back-pressure) and prefixes cached by earlier calls are not reused, so a
        call's results depend on its own requests only."""
        if self._thread is not None:
            raise RuntimeError(
                "This scheduler runs on its own thread (start()); submit() the job and read "
                "its events instead of run()."
            )
        self._check_samplers(job)
        self.slot_tokens = [[] for _ in range(self.dec.slots)]
        if self.spec is not None:
            self.spec.reset()
        with self.cond:
            job.queued_turn = self.turn
            self.waiting.extend((job, i) for i in range(len(job.rows)))
            self.stats["requests"] += 1
        while not job.finished:
            if not self.step():
                raise RuntimeError("The scheduler made no progress on an unfinished job (a bug).")

    def step(self) -> bool:
        """One turn: drop cancelled rows, admit waiting ones, one device call. False when
        there was nothing to run."""
        with self.cond:
            self._drop_cancelled()
            self._admit()
            self.turn += 1
        return self._step()

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self._stop and not self._has_work():
                    self.cond.wait(timeout=0.5)
                if self._stop:
                    return
            self.step()

    def _has_work(self) -> bool:
        return bool(self.waiting) or self.busy_slots > 0

    def _drop_cancelled(self) -> None:
        for job in {id(e[0]): e[0] for e in filter(None, self.slot_rows)}.values():
            if job.alive is not None and not job.cancelled.is_set() and not job.alive():
                job.cancel()
        self.waiting = collections.deque(
            (j, i) for j, i in self.waiting if not j.cancelled.is_set()
        )
        for entry in self.slot_rows:
            if entry is not None and entry[0].cancelled.is_set():
                job, i = entry
                self.stats["cancelled_rows"] += 1
                self.stats["wasted_tokens"] += len(job.rows[i].ids)
                self.stats["wasted_prefill_tokens"] += job.rows[i].prefilled - job.rows[i].reused
                self._finish(job, i, "cancelled")

    def _admit(self) -> None:
        """Fill free slots from the waiting rows, in `admission_order`, skipping rows whose
        request already holds its share of the slots; each row takes the free slot whose
        cache shares the longest prefix with its prompt (then the least recently used)."""
        if not self.continuous and self.busy_slots:
            return
        free = [s for s, r in enumerate(self.slot_rows) if r is None]
        if not free or not self.waiting:
            return
        cap = self.admission.cap(self.dec.slots)
        held = collections.Counter(id(e[0]) for e in filter(None, self.slot_rows))
        taken: set[int] = set()
        for k in self.admission_order():
            if not free:
                break
            job, i = self.waiting[k]
            if held[id(job)] >= cap:
                continue
            held[id(job)] += 1
            taken.add(k)
            row = job.rows[i]
            prompt = row.prompt_ids

            def shared(s: int, prompt: list[int] = prompt) -> int:
                cached, n = self.slot_tokens[s], 0
                limit = min(len(cached), len(prompt) - 1)
                while n < limit and cached[n] == prompt[n]:
                    n += 1
                return n

            s = max(free, key=lambda s: (shared(s), -self.slot_used[s]))
            free.remove(s)
            # A scored prompt (echo with logprobs) runs every token through the model.
            row.prefilled = row.reused = 0 if row.request.prompt_logprobs else shared(s)
            self.stats["prefix_reused_tokens"] += row.prefilled
            self.slot_tokens[s] = list(prompt[: row.prefilled])
            row.slot = s
            row.t_admitted = time.monotonic()
            self.slot_rows[s] = (job, i)
            self.slot_used[s] = time.monotonic()
        if taken:
            self.waiting = collections.deque(
                e for k, e in enumerate(self.waiting) if k not in taken
            )

    def admission_order(self) -> list[int]:
        """Indices into `waiting` in the order rows are offered a free slot."""
        return self.admission.order(
            [(j.rows[i].request.max_new_tokens, j.queued_turn) for j, i in self.waiting],
            self.turn,
        )

    def _next_chunk(self) -> tuple[Job, int, Chunk] | None:
        """The next prefill chunk (of the oldest row still prefilling), or None this turn."""
        todo = [
            (job, i)
            for job, i in filter(None, self.slot_rows)
            if job.rows[i].prefilled < len(job.rows[i].prompt_ids)
        ]
        if not todo:
            return None
        decoding = any(
            job.rows[i].ids and job.rows[i].prefilled == len(job.rows[i].prompt_ids)
            for job, i in filter(None, self.slot_rows)
        )
        self._since_prefill += 1
        if decoding and self._since_prefill < self.prefill_interval:
            return None
        self._since_prefill = 0
        job, i = min(todo, key=lambda e: e[0].submitted)
        row = job.rows[i]
        start = row.prefilled
        tokens = row.prompt_ids[start : start + self.dec.chunk]
        r = row.request
        sampling = (r.temperature, r.top_p, _seed(r.seed), r.sample_index, 0, r.top_k, r.chain)
        final = start + len(tokens) == len(row.prompt_ids)
        targets = None
        if r.prompt_logprobs:  # the prompt token each position predicts (none after the last)
            targets = row.prompt_ids[start + 1 : start + len(tokens) + 1]
        chunk = Chunk(row.slot, tokens, start, sampling, final, targets)  # type: ignore[arg-type]
        return job, i, chunk

    def _decode_rows(self) -> tuple[list[int], DecodeRows | None]:
        """The slots decoding this turn and their inputs (None when no slot decodes)."""
        n = self.dec.slots
        cols = {k: np.zeros((n,), np.float64) for k in DecodeRows._fields}
        live = []
        for s, entry in enumerate(self.slot_rows):
            if entry is None:
                continue
            job, i = entry
            row = job.rows[i]
            if row.prefilled < len(row.prompt_ids) or not row.ids:
                continue
            cols["last"][s] = row.ids[-1]
            cols["pos"][s] = len(row.prompt_ids) + len(row.ids) - 1
            r = row.request
            cols["temp"][s], cols["top_p"][s] = r.temperature, r.top_p
            cols["seeds"][s], cols["index"][s] = _seed(r.seed), r.sample_index
            cols["steps"][s], cols["active"][s] = len(row.ids), True
            cols["top_k"][s], cols["chain"][s] = r.top_k, r.chain
            live.append(s)
        if not live:
            return live, None
        return live, DecodeRows(
            *(cols[k].astype(t) for k, t in zip(DecodeRows._fields, DecodeRows.DTYPES))
        )

    def _step(self) -> bool:
        """One device call: a decode token for every decoding slot and, in the same model
        call, one prefill chunk (chunked prefill riding with decoding, so a turn costs
        about one pass over the weights however many rows it serves)."""
        picked = self._next_chunk()
        live, rows = self._decode_rows()
        if picked is None and rows is None:
            return False
        t0 = time.monotonic()
        if picked is None and self.spec is not None:
            entries = [(s, self._row(s)) for s in live]
            plan = self.spec.plan(entries, rows)  # type: ignore[arg-type]
            if plan is not None:
                emitted = self._verify(live, rows, plan)  # type: ignore[arg-type]
                self.spec.record(True, len(live), time.monotonic() - t0, emitted)
                return True
        turn = self.dec.run(rows, None if picked is None else picked[2])
        if picked is None and self.spec is not None:
            self.spec.record(False, len(live), time.monotonic() - t0, len(live))
        if picked is not None:
            job, i, chunk = picked
            row = job.rows[i]
            row.prefilled += len(chunk.tokens)
            self.slot_tokens[chunk.slot].extend(chunk.tokens)
            self.stats["prefill_tokens"] += len(chunk.tokens)
            if turn.scored is not None:
                sc = turn.scored
                row.prompt_records += [
                    (t, float(sc.logprob[k]), sc.top_ids[k].tolist(), sc.top_logprobs[k].tolist())
                    for k, t in enumerate(chunk.targets or ())
                ]
        if turn.decoded is not None:
            self.stats["decode_steps"] += 1
            for s in live:
                job, i = self.slot_rows[s]  # type: ignore[misc]
                self.slot_tokens[s].append(job.rows[i].ids[-1])
                self._accept(job, i, turn.decoded, s)
        if turn.first is not None:
            job, i, _ = picked  # type: ignore[misc]
            row = job.rows[i]
            row.t_prompt_done = time.monotonic()
            budget = row.request.t_max_prompt_ms
            over = budget > 0 and (row.t_prompt_done - row.t_admitted) * 1000 > budget
            if row.request.max_new_tokens == 0 or over:
                # prompt only (e.g. echo scoring, or the prompt phase ran over its budget)
                row.stop_type = "limit"
                self._release(job, i, final=True)
                self._finish(job, i, "length")
            else:
                self._accept(job, i, turn.first, 0)
        return True

    def _row(self, s: int) -> RowState:
        job, i = self.slot_rows[s]  # type: ignore[misc]
        return job.rows[i]

    def _verify(self, live: list[int], rows: DecodeRows, plan: Plan) -> int:
        """Speculative decode turn: verify every row's drafts in one target call, then
        take each row's accepted drafts and its correction (or bonus) token in order,
        stopping where the row ends (a stop id, stop string or budget inside the run).
        Rejected drafts roll back by never entering the row's tokens: the next call
        starts at the row's new length and overwrites them. Returns the tokens emitted."""
        out = self.dec.verify(rows, plan.drafts, plan.lens, plan.q)
        emitted = 0
        self.stats["decode_steps"] += 1
        self.stats["spec_verify_steps"] += 1
        for s in live:
            job, i = self.slot_rows[s]  # type: ignore[misc]
            row = job.rows[i]
            a, d = int(out.accepted[s]), int(plan.lens[s])
            self.slot_tokens[s].append(row.ids[-1])
            self.slot_tokens[s].extend(int(t) for t in plan.drafts[s, :a])
            self.stats["spec_draft_tokens"] += d
            self.stats["spec_accepted_tokens"] += a
            assert self.spec is not None
            self.spec.update(row.spec, d, a)
            emitted += a + 1
            for j in range(a + 1):
                if row.finish_reason is not None:
                    break
                sampled = Sampled(
                    out.token[:, j], out.logprob[:, j], out.top_ids[:, j], out.top_logprobs[:, j]
                )
                self._accept(job, i, sampled, s)
        return emitted

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens over the scheduler's life (0 before any draft)."""
        drafted = self.stats["spec_draft_tokens"]
        return self.stats["spec_accepted_tokens"] / drafted if drafted else 0.0

    # ------------------------------------------------------------------ rows
    def _accept(self, job: Job, i: int, out: Any, k: int) -> None:
        """Take sample `k` of `out` as row i's next token; release text; maybe finish."""
        row = job.rows[i]
        tok = int(out.token[k])
        if job.first_token is None:
            job.first_token = time.monotonic()
            if self.on_first_token is not None:
                self.on_first_token(job.first_token - job.submitted)
        if tok in self.stop_ids:
            row.stop_type = "eos"
            self._release(job, i, final=True)
            self._finish(job, i, "stop")
            return
        row.ids.append(tok)
        row.logprobs.append(
            (float(out.logprob[k]), out.top_ids[k].tolist(), out.top_logprobs[k].tolist())
        )
        self.stats["generated_tokens"] += 1
        why = self._release(job, i, final=False)
        if why:
            row.stop_type = why
            self._finish(job, i, "stop")
        elif (
            len(row.ids) >= row.request.max_new_tokens
            or len(row.prompt_ids) + len(row.ids) >= self.dec.max_len
            or self._over_predict_budget(row)
        ):
            row.stop_type = "limit"
            self._release(job, i, final=True)
            self._finish(job, i, "length")

    def _over_predict_budget(self, row: RowState) -> bool:
        """llama.cpp's t_max_predict_ms: over budget once a newline has been generated."""
        budget = row.request.t_max_predict_ms
        if budget <= 0 or (time.monotonic() - row.t_prompt_done) * 1000 <= budget:
            return False
        return "\n" in self.tok.decode(row.ids)

    def _release(self, job: Job, i: int, *, final: bool) -> str:
        """Hand out the row's safe new text; "word" when a stop string ended it, "limit"
        when the n_indent rule did, "" otherwise. A job that does not stream only checks
        its stop strings until the row's final release."""
        row = job.rows[i]
        stops, n_indent = row.request.stop, row.request.n_indent
        quiet = not final and not job.stream
        if quiet and not stops and not n_indent:
            return ""
        text = self.tok.decode(row.ids)
        cut, why = -1, ""
        if stops:
            lo = max(0, row.sent_chars - max(len(s) for s in stops))
            hits = [(p, s) for p, s in ((text.find(s, lo), s) for s in stops if s) if p >= 0]
            if hits:
                cut, word = min(hits)
                why, row.stop_word = "word", word
        ind = indent_cut(text, n_indent)
        if ind >= 0 and (cut < 0 or ind < cut):
            cut, why, row.stop_word = ind, "limit", ""
        if quiet and cut < 0:
            return ""
        if cut >= 0:
            end = cut
        elif final:
            end = len(text)
        else:
            end = len(text) - _holdback(text, stops)
        # Tokens whose text lies (at least partly) before `end`.
        kept = len(row.ids)
        if cut >= 0 or not final:
            kept = _tokens_covering(self.tok, row.ids, end)
        if end > row.sent_chars or final or cut >= 0:
            recs = [(row.ids[t], *row.logprobs[t]) for t in range(row.sent_tokens, kept)]
            piece = text[row.sent_chars : max(end, row.sent_chars)]
            row.text += piece
            job.events.put(Event(i, piece, recs))
            row.sent_chars = max(end, row.sent_chars)
            row.sent_tokens = max(kept, row.sent_tokens)
        row.kept_tokens = row.sent_tokens
        return why if cut >= 0 else ""

    def _finish(self, job: Job, i: int, reason: str) -> None:
        row = job.rows[i]
        row.finish_reason = reason
        row.t_done = time.monotonic()
        if row.slot is not None:
            self.slot_rows[row.slot] = None
            self.slot_used[row.slot] = time.monotonic()
            if row.prefilled < len(row.prompt_ids):  # cancelled mid-prefill: keep what is valid
                self.slot_tokens[row.slot] = self.slot_tokens[row.slot][: row.prefilled]
        self.stats["finished_rows"] += 1
        job.events.put(Event(i, "", [], reason))
        job.remaining -= 1  # after the event: a reader that sees `finished` finds it queued


def _seed(seed: int) -> int:
    """A request's seed as the int32 the sampler folds in (any Python int is accepted)."""
    return int(seed) & 0x7FFFFFFF


def _holdback(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of `text` that may still turn into a stop string or a
    complete UTF-8 character."""
    n = 0
    while n < len(text) and text[len(text) - 1 - n] == "\ufffd":
        n += 1
    best = n
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                best = max(best, k)
                break
    return best


def _tokens_covering(tok: Any, ids: list[int], end: int) -> int:
    """Fewest leading tokens whose decoded text reaches character `end`."""
    if end <= 0:
        return 0
    lo, hi = 1, len(ids)
    while lo < hi:  # decoded length is monotone in the number of tokens
        mid = (lo + hi) // 2
        if len(tok.decode(ids[:mid]).rstrip("\ufffd")) >= end:
            hi = mid
        else:
            lo = mid + 1
    return lo
