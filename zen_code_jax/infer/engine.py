"""InferenceEngine: text in, text out, on top of the slot decoder (`slots.py`, `scheduler.py`).

It owns the tokenizer-facing rules that must match training exactly:
- FIM prompts are built by `zen_code_jax.data.fim.fim_prompt_tokens` (sentinels inserted as
  ids, never by encoding their spelling); with repository context they are built by
  `zen_code_jax.data.repo_format.RepoFormat`, the same code that lays out training windows
  (`repo_format` = the run's `data.repo_format`): context files, the target's header, then
  the FIM sentinels inside the target file.
- Generation stops at any special id (`<|endoftext|>` and the FIM sentinels: a model trained on
  the FIM format ends a middle with `<|endoftext|>`; a sentinel in the output means it has
  left the document). User stop strings are applied to the detokenized text.

Requests are decoded by the package's one decoder, the slot engine, driven synchronously:
`max_batch_size` KV-cache rows (slots), longest prompts admitted first, each finished row's
slot taking the next waiting request (continuous batching); results come back in the
caller's order. The server drives the same engine from the scheduler's thread
(`slot_decoder`, `scheduler`). Teacher-forced scoring (`token_logprobs`) is one forward
pass over known tokens (`decode.score`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from zen_code_jax.data.fim import fim_prompt_tokens
from zen_code_jax.data.hf_tokenizer import check_repo_format
from zen_code_jax.data.repo_format import RepoFormat, RepoPrefix
from zen_code_jax.infer import forward as dec
from zen_code_jax.infer.drafting import ModelDrafter, NgramDrafter, SpecConfig, Speculator
from zen_code_jax.infer.request import Completion, CompletionRequest, truncate_at_stop
from zen_code_jax.infer.scheduler import Job, Scheduler
from zen_code_jax.infer.slots import SlotDecoder
from zen_code_jax.model.config import ModelConfig
from zen_code_jax.model.params import abstract_params, param_partition_specs
from zen_code_jax.parallel.rules import DEFAULT_RULES
from zen_code_jax.resolve import CheckpointRef, RunFacts, load_model, run_facts, stop_ids

__all__ = [
    "Completion",
    "CompletionRequest",
    "InferenceEngine",
    "random_params",
    "truncate_at_stop",
]

FIM_MODES = ("psm", "spm")
MIN_SLOT_LENGTH = 256  # complete()'s decoder holds at least one cache window per row


def random_params(cfg: ModelConfig, seed: int = 0, scale: float | None = None) -> Any:
    """Unboxed random parameters of the model's exact tree, drawn with numpy.

    For tests and `--random_preset` serving: normal(0, scale or cfg.initializer_range)
    weights, unit norm scales, zero biases. Numpy avoids compiling the model's init (the
    threefry draws for every weight take seconds of XLA compile on CPU).
    """

    abstract = nn.unbox(abstract_params(cfg))
    rng = np.random.default_rng(seed)
    std = cfg.initializer_range if scale is None else scale

    def draw(path: tuple, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        name = getattr(path[-1], "key", "")
        if name == "scale":
            return np.ones(leaf.shape, leaf.dtype)
        if name == "bias":
            return np.zeros(leaf.shape, leaf.dtype)
        return (rng.standard_normal(leaf.shape, np.float32) * std).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)


class InferenceEngine:
    """Decode with a trained (or random) model: generate, infill, score."""

    def __init__(
        self,
        params: Any,
        model_cfg: ModelConfig,
        tokenizer: Any,
        mesh: jax.sharding.Mesh | None = None,
        *,
        max_batch_size: int = 16,
        min_batch_bucket: int = 1,
        rules: Any = None,
        repo_format: str = "",
        facts: RunFacts | None = None,
        prefill_chunk: int = 128,
        repo_prefix: RepoPrefix | None = None,
    ):
        """max_batch_size: rows decoded together (the slots of `complete`'s decoder);
        min_batch_bucket: smallest padded batch of `token_logprobs` (and the multiple the
        slots are rounded up to); prefill_chunk: prompt tokens per decoder turn;
        repo_format: the training run's `data.repo_format` (repository prompts; "" = the
        tokenizer's own: report for ours, qwen2.5 / starcoder2 for those HF tokenizers);
        facts: what the checkpoint was resolved to (`from_run` sets it; None for weights
        handed in directly, e.g. the trainer's own or random ones); repo_prefix: the
        run's `data.repo_prefix` (None = off), the path / symbol prefix of its windows."""
        tokenizer.check_compatible(model_cfg)
        self.repo_format = RepoFormat(
            check_repo_format(tokenizer, repo_format), repo_prefix or RepoPrefix()
        )
        self.model_cfg = model_cfg
        self.tokenizer = tokenizer
        self.facts = facts
        self.mesh = mesh
        self.max_batch_size = int(max_batch_size)
        if rules is None:
            rules = DEFAULT_RULES
        self.rules = tuple(rules)
        self.batch_multiple = dec.bucket(min_batch_bucket)
        if mesh is not None:
            shape = dict(mesh.shape)
            dp = int(shape.get("data", 1) * shape.get("fsdp", 1))
            self.batch_multiple = math.lcm(self.batch_multiple, dp)
        self.params = dec.cast_for_inference(self._place_params(params), model_cfg)
        self.stop_ids = stop_ids(tokenizer)
        self._lock = threading.Lock()  # one decode at a time (the server has many threads)
        self.prefill_chunk = int(prefill_chunk)
        self.speculative = SpecConfig()  # off: set_speculative turns it on
        self.draft: InferenceEngine | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_run(
        cls,
        spec: str | Path | CheckpointRef,
        *,
        mesh: jax.sharding.Mesh | None = None,
        dtype: str | None = None,
        step: int | None = None,
        rules: Any = None,
        params: Any = None,
        **kwargs: Any,
    ) -> InferenceEngine:
        """The engine of a checkpoint: a run directory, `RUN/checkpoints/STEP`, `hf:DIR`
        or an HF directory (`zen_code_jax.resolve`), at `step` (default: the newest).

        Reads the parameters only (no optimizer moments), straight onto `mesh` by the
        model's logical axes (default: one device), and carries every resolved fact: the
        model config (`dtype` = the compute dtype, default the run's), the tokenizer the
        weights were trained with, the run's repository format and the stop ids.
        `params`: the run's weights already in memory (the trainer's, at the end of an
        arm); then only the facts are read from the run directory. Other keyword
        arguments go to the constructor (`max_batch_size`, ...).
        """
        if params is None:
            facts: RunFacts = load_model(spec, mesh=mesh, step=step, rules=rules)
            params = facts.params  # type: ignore[attr-defined]
            facts = dataclasses.replace(facts, params=None)
        else:
            facts = run_facts(spec, step=step)
        cfg = facts.model_cfg if dtype is None else facts.model_cfg.replace(dtype=dtype)
        return cls(
            params,
            cfg,
            facts.tokenizer,
            mesh,
            rules=rules,
            repo_format=facts.repo_format,
            repo_prefix=facts.repo_prefix,
            facts=facts,
            **kwargs,
        )

    def _place_params(self, params: Any) -> Any:
        """Unbox params; with a mesh, shard them by their logical axes (model rules)."""
        boxed = any(
            isinstance(x, nn.Partitioned)
            for x in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        )
        if self.mesh is None:
            return nn.unbox(params) if boxed else params
        if boxed:
            specs = nn.get_partition_spec(params)
            params = nn.unbox(params)
        else:
            specs = param_partition_specs(self.model_cfg)
        shardings = nn.logical_to_mesh_sharding(specs, self.mesh, list(self.rules))
        return jax.device_put(params, shardings)

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        with self._lock, contextlib.ExitStack() as stack:
            if self.mesh is not None:
                stack.enter_context(jax.set_mesh(self.mesh))
                stack.enter_context(nn.logical_axis_rules(self.rules))
            yield

    # ------------------------------------------------------------------ prompts
    def fim_prompt_ids(
        self,
        prefix: str,
        suffix: str,
        mode: str = "psm",
        context: Sequence[tuple[str, str]] | None = None,
        path: str | None = None,
        repo: str | None = None,
    ) -> list[int]:
        """Token ids of the FIM prompt in the training format (ends where the middle starts).

        Without `path`: the file-mode prompt (`fim_prompt_tokens`). With `path`: the
        repository prompt of `self.repo_format` (`RepoFormat.fim_prompt_ids`, the layout of
        training windows): the repository opening (`repo`, in the qwen2.5 / starcoder2
        formats), the context files [(path, content), ...], the target's header, then the
        FIM sentinels around the target's prefix and suffix.

        Context without `path` (llama.cpp's /infill names no target file): the context
        files in the repository layout, then the file-mode FIM prompt with no target
        header. Training always had that header, so callers that know the target's path
        should pass it (the completions API's `path` field does).
        """
        if mode not in FIM_MODES:
            raise ValueError(f"FIM mode {mode!r} is unknown; use 'psm' or 'spm'.")
        tok = self.tokenizer
        if path is None:
            head = self.repo_format.context_ids(list(context), tok, repo) if context else []
            return [*head, *fim_prompt_tokens(prefix, suffix, mode, tok)]
        return self.repo_format.fim_prompt_ids(
            list(context or ()), path, prefix, suffix, mode, tok, repo
        )

    # ------------------------------------------------------------------ decoding
    @property
    def slots(self) -> int:
        """KV-cache rows of this engine's decoders: max_batch_size, rounded up to the
        batch multiple (the data-parallel size on a mesh)."""
        m = self.batch_multiple
        return -(-self.max_batch_size // m) * m

    def slot_decoder(
        self,
        max_len: int,
        *,
        chunk: int | None = None,
        windows: Sequence[int] | None = None,
        samplers: bool = False,
    ) -> SlotDecoder:
        """A slot decoder on this engine's params, mesh and rules: `self.slots` rows of
        `max_len` positions, prompts prefilled `chunk` tokens per turn (default
        `prefill_chunk`), reading `windows` of the cache (default: powers of two). The
        server builds one and warms it up; `complete` builds its own."""
        chunk = min(int(chunk or self.prefill_chunk), int(max_len))
        return SlotDecoder(
            self.params,
            self.model_cfg,
            slots=self.slots,
            max_len=int(max_len),
            chunk=chunk,
            mesh=self.mesh,
            rules=self.rules,
            windows=windows,
            eog_ids=self.stop_ids,
            eot_id=self.tokenizer.eot_id,
            samplers=samplers,
        )

    def set_speculative(
        self, config: SpecConfig, draft: str | Path | CheckpointRef | InferenceEngine | None = None
    ) -> None:
        """Decode speculatively from now on (`complete` and every `scheduler`): prompt
        lookup (`config.mode == "ngram"`) or a draft model (`"model"`: `draft` is a
        checkpoint spec, loaded params-only onto this engine's mesh in its dtype, or an
        engine). The draft must use this engine's tokenizer. Greedy outputs are unchanged;
        sampled ones keep their distribution (docs/infer.md, Speculative decoding)."""
        if config.mode == "model":
            if draft is None:
                raise ValueError("--speculative=model needs --draft=SPEC (a run dir or hf:DIR).")
            if not isinstance(draft, InferenceEngine):
                draft = InferenceEngine.from_run(
                    draft, mesh=self.mesh, dtype=self.model_cfg.dtype, rules=self.rules
                )
            mine, theirs = self.tokenizer.fingerprint(), draft.tokenizer.fingerprint()
            if mine != theirs:
                target = self.facts.ref.path if self.facts is not None else "the target"
                name = draft.facts.ref.path if draft.facts is not None else "the draft"
                raise ValueError(
                    f"The draft model {name} has tokenizer {theirs[:12]} but the target "
                    f"{target} has {mine[:12]}: drafts must be the target's token ids; use a "
                    "draft trained with the target's tokenizer (e.g. its Flash student)."
                )
            self.draft = draft
        else:
            self.draft = None
        self.speculative = config

    def speculator(self, decoder: SlotDecoder) -> Speculator | None:
        """The drafter and policy for `decoder` (None when speculation is off); a draft
        model gets its own slot decoder of the same slots, length and windows."""
        cfg = self.speculative
        if not cfg.on:
            return None
        if cfg.mode == "ngram":
            return Speculator(cfg, decoder, NgramDrafter(cfg))
        assert self.draft is not None
        if self.draft.model_cfg.max_position_embeddings < decoder.max_len:
            raise ValueError(
                f"The draft model holds {self.draft.model_cfg.max_position_embeddings} "
                f"positions, fewer than the decoder's {decoder.max_len}; lower --max_context."
            )
        draft_dec = SlotDecoder(
            self.draft.params,
            self.draft.model_cfg,
            slots=decoder.slots,
            max_len=decoder.max_len,
            chunk=decoder.chunk,
            mesh=self.mesh,
            rules=self.rules,
            windows=decoder.windows,
        )
        drafter = ModelDrafter(draft_dec, cfg, self.model_cfg.vocab_size)
        return Speculator(cfg, decoder, drafter)

    def scheduler(self, decoder: SlotDecoder, **kwargs: Any) -> Scheduler:
        """A scheduler moving rows through `decoder`, stopping at this engine's stop ids and
        detokenizing with its tokenizer (kwargs: `Scheduler`'s options), speculating when
        `set_speculative` turned it on."""
        kwargs.setdefault("speculator", self.speculator(decoder))
        return Scheduler(decoder, self.tokenizer, self.stop_ids, **kwargs)

    def _sync_scheduler(self, positions: int, samplers: bool = False) -> Scheduler:
        """`complete`'s scheduler, on a fresh decoder whose rows hold `positions` tokens
        (a power of two, at least 256): the cache follows the call's longest row, not the
        model's context, and lives only as long as the call (as the compiled steps are
        cached by shape, a new decoder of a seen length compiles nothing)."""
        cfg = self.model_cfg
        max_len = min(cfg.max_position_embeddings, dec.bucket(positions, MIN_SLOT_LENGTH))
        # One window, the whole cache: it already follows the longest row (at most 2x),
        # and each extra window would compile one more step per chunk length.
        return self.scheduler(self.slot_decoder(max_len, windows=(max_len,), samplers=samplers))

    def complete(
        self, requests: Sequence[CompletionRequest], alive: Callable[[], bool] | None = None
    ) -> list[Completion]:
        """Decode token-level requests (any mix of settings); results in request order.
        alive: polled every decoder turn (the scheduler's per-job cancel, as the server's
        on a disconnect); once it returns False the call ends at that turn and every
        unfinished row comes back empty with finish_reason "cancelled" (its caller no
        longer wants it: the language server's `$/cancelRequest`).

        The slot engine run synchronously: every request a row of the one decoder, the
        longest prompts admitted first. A row's random draws are keyed by its own
        (seed, sample_index, step) only, so its tokens do not depend on which requests
        share the call (up to float rounding, e.g. of how its prompt was chunked)."""
        limit = self.model_cfg.max_position_embeddings
        for r in requests:
            r.check(limit)
        results: list[Completion | None] = [None] * len(requests)
        todo = []
        for i, r in enumerate(requests):
            if r.max_new_tokens == 0 and not r.prompt_logprobs:  # nothing to run
                results[i] = Completion("", [], "length", len(r.prompt_ids))
            else:
                todo.append(i)
        todo.sort(key=lambda i: -len(requests[i].prompt_ids))
        if todo:
            longest = max(len(requests[i].prompt_ids) + requests[i].max_new_tokens for i in todo)
            job = Job([requests[i] for i in todo], alive, stream=False)
            with self._lock:
                chained = any(
                    r.request.top_k > 0 or r.request.samplers is not None for r in job.rows
                )
                try:
                    self._sync_scheduler(longest, chained).run(job)
                except RuntimeError:  # rows dropped while waiting leave `run` no progress
                    if not job.cancelled.is_set():
                        raise
            for i, row in zip(todo, job.rows):
                if row.finish_reason is None:  # cancelled before it was admitted
                    row.finish_reason = "cancelled"
                results[i] = row.completion()
        return results  # type: ignore[return-value]

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> list[str]:
        """Left-to-right continuations of raw-text prompts (row i samples with (seed, i))."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string; wrap it: [prompt].")
        return self.generate_ids(
            [self._encode_prompt(p) for p in prompts],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
        )

    def generate_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> list[str]:
        """`generate` for prompts given as token ids (row i samples with (seed, i)): for
        prompts holding sentinel ids (repository layouts), which text cannot spell."""
        reqs = [
            CompletionRequest(
                list(ids) or [self.tokenizer.eot_id],
                max_new_tokens,
                temperature,
                top_p,
                tuple(stop),
                seed,
                i,
            )
            for i, ids in enumerate(prompt_ids)
        ]
        return [c.text for c in self.complete(reqs)]

    def _encode_prompt(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        # An empty prompt starts a document: condition on <|endoftext|> as in packed training.
        return ids if ids else [self.tokenizer.eot_id]

    def infill(
        self,
        prefixes: Sequence[str],
        suffixes: Sequence[str],
        *,
        mode: str = "psm",
        contexts: Sequence[Sequence[tuple[str, str]] | None] | None = None,
        paths: Sequence[str | None] | None = None,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> list[str]:
        """The middles for (prefix, suffix) pairs, from the training FIM format.

        contexts[i]: optional [(path, content), ...] repository files before the target;
        paths[i]: optional path of the target file (adds its `# File:` header).
        """
        n = len(prefixes)
        if isinstance(prefixes, str) or isinstance(suffixes, str):
            raise TypeError("prefixes and suffixes must be lists of strings; wrap one as [text].")
        if len(suffixes) != n:
            raise ValueError(f"{n} prefixes but {len(suffixes)} suffixes; pass one suffix each.")
        for name, val in (("contexts", contexts), ("paths", paths)):
            if val is not None and len(val) != n:
                raise ValueError(f"{name} has {len(val)} entries for {n} prefixes; pass one each.")
        reqs = [
            CompletionRequest(
                self.fim_prompt_ids(
                    prefixes[i],
                    suffixes[i],
                    mode,
                    contexts[i] if contexts is not None else None,
                    paths[i] if paths is not None else None,
                ),
                max_new_tokens,
                temperature,
                top_p,
                tuple(stop),
                seed,
                i,
            )
            for i in range(n)
        ]
        return [c.text for c in self.complete(reqs)]

    def token_logprobs(
        self,
        context_ids: Sequence[Sequence[int]],
        continuation_ids: Sequence[Sequence[int]],
        *,
        batch_size: int | None = None,
    ) -> list[np.ndarray]:
        """Teacher-forced log p of each continuation token given its context (float32 nats).

        Sum and divide by the continuation's UTF-8 bytes * ln 2 for bits per byte.
        """
        if len(context_ids) != len(continuation_ids):
            raise ValueError(
                f"{len(context_ids)} contexts but {len(continuation_ids)} continuations; "
                "pass one continuation per context."
            )
        bs = batch_size or self.max_batch_size
        n = len(context_ids)
        order = sorted(range(n), key=lambda i: -(len(context_ids[i]) + len(continuation_ids[i])))
        out: list[np.ndarray | None] = [None] * n
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            with self._context():
                res = dec.token_logprobs_ids(
                    self.params,
                    self.model_cfg,
                    [context_ids[i] for i in idx],
                    [continuation_ids[i] for i in idx],
                    pad_id=self.tokenizer.pad_id,
                    batch_multiple=self.batch_multiple,
                )
            for i, r in zip(idx, res):
                out[i] = r
        return out  # type: ignore[return-value]
