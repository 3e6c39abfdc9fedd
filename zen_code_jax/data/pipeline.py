"""The Grain input pipeline: records -> (repo windows | file pieces) -> FIM -> pack -> batches.

Order of operations and why:

  shuffled(records or repositories)      global shuffle by seed, reshuffled every epoch
                                         (train only; held-out: fixed order, one pass)
    | or MapDataset.mix(shuffled groups) domain / language weights (train, file mode)
    .map(to_segments)                    windows, document-level FIM, tokenize
    [shard_index::shard_count]           this host's disjoint, balanced share
    .to_iter_dataset()
    [.mp_prefetch(workers)]              worker processes do the per-record work above
    PackIterDataset                      first-fit (or `data.packing="best_fit"`, train
                                         only) packing into finished [batch, seq_len]
                                         batches, rows shuffled within each group of
                                         `data.row_shuffle_window` rows
    [.map(ContextFim)]                   fim.level="context": FIM per packed fragment
    .map(Batch.from_mapping)             the typed batch contract (data/batch.py)

Every random choice is keyed by what it is about, never by a counter: the shuffle by
(seed, epoch), a file's FIM draw by (seed, repository, path), a window's by (seed,
repository, window index), a packed fragment's by (seed, its tokens), a group's row
permutation by (seed, the group's tokens). So nothing depends on read order, threads,
worker processes or restarts, and arms that differ only in `fim.rate` share every draw
(their FIM sets are nested). Packing runs after the worker processes, in the host process,
so its input order (and hence every batch) is identical with 0 or N workers.

`make_dataset` returns a Grain DatasetIterator: `get_state()`/`set_state()` (JSON-able dicts)
checkpoint it, e.g. with `grain.checkpoint.CheckpointSave` inside Orbax's Composite.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import flags

from zen_code_jax.data.batch import Batch
from zen_code_jax.data.corpus import HELDOUT_SPLIT, SPLITS, TRAIN_SPLIT, Corpus
from zen_code_jax.data.fim import LEVELS, check_rates, unit_draw
from zen_code_jax.data.fim_context import ContextFim, grammar_code
from zen_code_jax.data.hf_tokenizer import check_repo_format
from zen_code_jax.data.import_graph import order_files
from zen_code_jax.data.packing import PackIterDataset, check_packing
from zen_code_jax.data.repo_format import RepoFormat, RepoPrefix, check_format, log_parse_outcomes
from zen_code_jax.data.repo_window import file_segments, repo_windows
from zen_code_jax.data.spans import check_span
from zen_code_jax.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MODES = ("file", "repo")
# First-fit bins per group, at least: more bins, less padding (measured in the benchmark).
MIN_PACKING_ROWS = 64


def _fim_key(record: dict) -> tuple[str, ...]:
    """A file's identity for its FIM draw: (repository, path), or its content if it has none."""
    if record.get("path"):
        return ("file", str(record.get("repo", "")), str(record["path"]))
    return ("content", str(record.get("content", "")))


class FileToSegments:
    """Per-record transform for file mode (picklable for worker processes).

    `seed=None`: no FIM (held-out). At level "document" the FIM draw is keyed by
    (seed, repository, path), so it is one draw per file, common to every arm; at level
    "context" the pieces stay plain and are flagged for `fim_context.ContextFim`. Records
    whose domain is not in `domains` are never FIM'd.
    """

    def __init__(
        self,
        tok: Tokenizer,
        seq_len: int,
        fim_rate: float,
        spm_rate: float,
        seed: int | None = None,
        level: str = "document",
        domains: Sequence[str] = ("code",),
        span: str = "char",
    ):
        self.tok, self.seq_len, self.fim_rate, self.spm_rate = tok, seq_len, fim_rate, spm_rate
        self.seed, self.level, self.domains = seed, level, frozenset(domains)
        self.span = check_span(span)

    def __call__(self, record: dict, rng: Any = None) -> Any:
        eligible = self.seed is not None and record.get("domain", "code") in self.domains
        if self.level == "context":
            segs = file_segments(record["content"], self.tok, None, self.seq_len)
            flag: bool | int = eligible
            if self.span == "ast":  # the fragment's grammar rides on the packer's flag
                flag = grammar_code(eligible, str(record.get("path", "")))
            return {"segments": segs, "flag": flag} if self.seed is not None else segs
        draw = unit_draw(self.seed, *_fim_key(record)) if eligible else None
        if self.span == "ast":
            log_parse_outcomes("files")
        return file_segments(
            record["content"],
            self.tok,
            draw,
            self.seq_len,
            fim_rate=self.fim_rate,
            spm_rate=self.spm_rate,
            span=self.span,
            path=str(record.get("path", "")),
        )


class RepoToWindows:
    """Per-repository transform for repo mode: read files, order by imports, window, FIM."""

    def __init__(
        self,
        source: Sequence[Any],
        tok: Tokenizer,
        seq_len: int,
        fim_rate: float,
        spm_rate: float,
        seed: int | None = None,
        repo_format: str = "report",
        domains: Sequence[str] = ("code",),
        span: str = "char",
        prefix: RepoPrefix = RepoPrefix(),
    ):
        self.source = source
        self.tok, self.seq_len, self.fim_rate, self.spm_rate = tok, seq_len, fim_rate, spm_rate
        self.seed, self.domains = seed, frozenset(domains)
        self.fmt, self.span = RepoFormat(repo_format, prefix), check_span(span)

    def __call__(self, repo: Sequence, rng: Any = None) -> list[np.ndarray]:
        name, start, end = repo
        files, fim_paths = {}, set()
        for i in range(int(start), int(end)):
            rec = _decode(self.source[i])
            files[rec["path"]] = rec["content"]
            if rec.get("domain", "code") in self.domains:
                fim_paths.add(rec["path"])
        ordered = [(p, files[p]) for p in order_files(files)]
        if self.span == "ast" or self.fmt.prefix.reserve:
            log_parse_outcomes("repositories")
        return repo_windows(
            ordered,
            self.tok,
            self.seed,
            self.seq_len,
            fim_rate=self.fim_rate,
            spm_rate=self.spm_rate,
            fmt=self.fmt,
            repo=str(name),
            fim_paths=fim_paths,
            span=self.span,
        )


def _decode(rec: Any) -> dict:
    """Records are dicts; raw JSON bytes are accepted too (an undecoded ArrayRecord source)."""
    if isinstance(rec, dict):
        return rec
    return json.loads(rec)


def _check_args(
    split: str, mode: str, seq_len: int, batch_size: int, shard_index: int, shard_count: int
) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")
    if mode not in MODES:
        raise ValueError(f"Unknown data.mode {mode!r}; set data.mode to one of {MODES}.")
    if seq_len < 64:
        raise ValueError(f"seq_len={seq_len} is too short for file headers and FIM; use >= 64.")
    if batch_size < 1:
        raise ValueError(
            f"Per-host batch_size={batch_size} must be >= 1; make train.global_batch_size a "
            "multiple of the number of hosts (jax.process_count())."
        )
    if not (shard_count >= 1 and 0 <= shard_index < shard_count):
        raise ValueError(
            f"shard_index={shard_index} must be in [0, shard_count={shard_count}); pass "
            "jax.process_index() and jax.process_count()."
        )


# Grain's index_shuffle costs ~10 ms per element on a 10-element dataset (~25 us at 100K);
# below this size we shuffle with an explicit per-epoch permutation instead (8 bytes/record).
_PERMUTATION_MAX = 1_000_000


class _EpochPermutation:
    """Index i of an endless stream -> item of epoch i // n, permuted by (seed, epoch)."""

    def __init__(self, items: Any, seed: int):
        self.items, self.seed = items, seed
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, index: int) -> Any:
        n = len(self.items)
        epoch, i = divmod(int(index), n)
        perm = self._cache.get(epoch)
        if perm is None:
            rng = np.random.Generator(np.random.Philox(key=[self.seed, epoch]))
            perm = rng.permutation(n)
            self._cache = {epoch: perm}  # epochs are read in order: keep one
        return self.items[int(perm[i])]

    def __getstate__(self) -> dict:
        return {"items": self.items, "seed": self.seed}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["items"], state["seed"])


def shuffled(items: Any, seed: int, num_epochs: int | None) -> grain.MapDataset:
    """A global shuffle by seed, reshuffled every epoch; `num_epochs=None` repeats forever."""
    n = len(items)
    if n > _PERMUTATION_MAX:
        return grain.MapDataset.source(items).shuffle(seed).repeat(num_epochs)
    total = n * num_epochs if num_epochs is not None else _ENDLESS
    return grain.MapDataset.source(_Range(total)).map(_EpochPermutation(items, seed))


_ENDLESS = 2**62


class _Range:
    """range(n) as a Grain random-access source (n may be 'endless')."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return int(i)


def _needs_mixture(corpus: Corpus, split: str, data_cfg: ml_collections.ConfigDict) -> bool:
    """Language weights set, or domain weights naming several domains or leaving one out."""
    dom_w = dict(data_cfg.domain_weights or {})
    lang_w = dict(data_cfg.language_weights or {})
    present_domains = {g.split("/", 1)[0] for g in corpus.groups(split)[0]}
    return bool(lang_w) or len(dom_w) > 1 or (bool(dom_w) and present_domains != set(dom_w))


def _mix(parts: list[grain.MapDataset], weights: list[float]) -> grain.MapDataset:
    return parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)


def _mixture(
    corpus: Corpus, split: str, data_cfg: ml_collections.ConfigDict, seed: int
) -> grain.MapDataset | None:
    """A deterministic weighted mixture of records by domain and language, or None.

    The weights are `corpus.mixture` (byte-share weights from the group statistics,
    `data.corpus.mixture_weights`). Each group is shuffled (reshuffled every epoch) and
    repeated; `MapDataset.mix` interleaves them by index (no stateful RNG).
    """
    if not _needs_mixture(corpus, split, data_cfg):
        return None
    source = corpus.source(split)
    mix = corpus.mixture(data_cfg, split)
    keep = [(g, idx, w) for g, idx, w in zip(mix.groups, mix.indices, mix.weights) if w > 0]
    parts = [
        shuffled(np.asarray(idx, dtype=np.int64), (seed + j) % 2**32, None).map(_Lookup(source))
        for j, (_, idx, _) in enumerate(keep)
    ]
    log.info("Mixing %s", {g: round(w, 4) for g, _, w in keep})
    return _mix(parts, [w for _, _, w in keep])


def repo_mixture_weights(
    corpus: Corpus, data_cfg: Any, split: str, repos: Sequence[tuple[str, int, int]]
) -> tuple[list[str], list[list[int]], list[float]]:
    """Repo mode's mixture: each repository joins the group holding most of its bytes
    (estimated from the group's mean record size); a group's repositories are drawn with
    probability byte_share / mean repository bytes, so the expected byte shares follow
    `corpus.mixture` as closely as whole repositories allow. Returns (groups, repository
    indices per group, weights) for groups with weight and repositories."""
    mix = corpus.mixture(data_cfg, split)
    names, gid = corpus.groups(split)
    stats = corpus.group_stats(split)
    avg = np.array([stats[n]["bytes"] / max(1, stats[n]["records"]) for n in names])
    members: dict[int, list[int]] = {}
    est: dict[int, float] = {}
    for j, (_, start, end) in enumerate(repos):
        g_of = gid[int(start) : int(end)]
        by_g = np.bincount(g_of, weights=avg[g_of], minlength=len(names))
        g = int(np.argmax(by_g))
        members.setdefault(g, []).append(j)
        est[g] = est.get(g, 0.0) + float(by_g.sum())
    groups, idx, weights = [], [], []
    for g, n in enumerate(names):
        share = mix.byte_shares[g]
        if share > 0 and g in members:
            groups.append(n)
            idx.append(members[g])
            weights.append(share / (est[g] / len(members[g])))
    if not groups:
        raise ValueError(
            f"No repository of the {split!r} split falls in a group with weight; check "
            "data.domain_weights / data.language_weights."
        )
    z = sum(weights)
    return groups, idx, [w / z for w in weights]


def _repo_mixture(
    corpus: Corpus,
    split: str,
    data_cfg: ml_collections.ConfigDict,
    seed: int,
    repos: list[tuple[str, int, int]],
) -> grain.MapDataset | None:
    """The weighted mixture over repositories (see `repo_mixture_weights`), or None."""
    if not _needs_mixture(corpus, split, data_cfg):
        return None
    groups, idx, weights = repo_mixture_weights(corpus, data_cfg, split, repos)
    parts = [
        shuffled(np.asarray(ix, dtype=np.int64), (seed + j) % 2**32, None).map(_Lookup(repos))
        for j, ix in enumerate(idx)
    ]
    log.info("Mixing repositories %s", {g: round(w, 4) for g, w in zip(groups, weights)})
    return _mix(parts, weights)


class _Lookup:
    """Record index -> record (picklable)."""

    def __init__(self, source: Sequence[Any]):
        self.source = source

    def __call__(self, i: Any) -> Any:
        item = self.source[int(i)]
        return tuple(item) if isinstance(item, list) else item


def build_dataset(
    corpus: Corpus,
    config: ml_collections.ConfigDict,
    *,
    split: str = TRAIN_SPLIT,
    seq_len: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
    num_workers: int | None = None,
    mode: str | None = None,
    read_threads: int = 0,
) -> grain.IterDataset:
    """The pipeline as a Grain IterDataset of `Batch` (see the module docstring)."""
    data_cfg = config.data
    seq_len = int(seq_len or config.train.seq_len)
    if batch_size is None:
        batch_size = int(config.train.global_batch_size) // shard_count
    seed = int(config.seed if seed is None else seed) % 2**32
    mode = mode or data_cfg.mode
    workers = int(data_cfg.num_workers if num_workers is None else num_workers)
    _check_args(split, mode, seq_len, batch_size, shard_index, shard_count)
    train = split == TRAIN_SPLIT
    tok = corpus.tokenizer
    fim_cfg = config.fim
    fim_rate = float(fim_cfg.rate) if train else 0.0
    spm_rate = float(fim_cfg.spm_rate) if train else 0.0
    check_rates(fim_rate, spm_rate)
    level = str(fim_cfg.level)
    domains = tuple(fim_cfg.domains)
    span = check_span(str(fim_cfg.get("span", "char")))
    prefix = RepoPrefix.from_config(data_cfg)
    # "" = the tokenizer's own layout (ours: report; an HF Qwen/StarCoder tokenizer: theirs)
    repo_format = check_format(check_repo_format(corpus.tokenizer, str(data_cfg.repo_format)))
    window = int(data_cfg.row_shuffle_window)
    # Training rows only: held-out batches stay first-fit, so every arm scores the same rows.
    packing = check_packing(str(data_cfg.get("packing", "first_fit"))) if train else "first_fit"
    if level not in LEVELS:
        raise ValueError(f"Unknown fim.level {level!r}; set fim.level to one of {LEVELS}.")
    if level == "context" and mode == "repo":
        raise ValueError(
            "fim.level='context' applies to data.mode='file' (repository windows put FIM "
            "inside the target file); use fim.level='document' with data.mode='repo'."
        )
    fim_seed = seed if train else None
    source = corpus.source(split)

    if mode == "file":
        ds = grain.MapDataset.source(source)
        if len(ds) == 0:
            raise ValueError(f"The {split!r} split has no records; check data.source and filters.")
        fn = FileToSegments(tok, seq_len, fim_rate, spm_rate, fim_seed, level, domains, span)
    else:
        repos = [tuple(r) for r in corpus.repos(split)]
        if not repos:
            raise ValueError(f"The {split!r} split has no repositories; check data.source.")
        ds = grain.MapDataset.source(repos)
        fn = RepoToWindows(
            source, tok, seq_len, fim_rate, spm_rate, fim_seed, repo_format, domains, span, prefix
        )

    if train:
        if mode == "file":
            mixed = _mixture(corpus, split, data_cfg, seed)
        else:
            mixed = _repo_mixture(corpus, split, data_cfg, seed, repos)
        if mixed is not None:
            if num_epochs is not None:
                log.warning("num_epochs is ignored with a weighted mixture (it repeats forever).")
            ds = mixed
        else:
            ds = shuffled(source if mode == "file" else repos, seed, num_epochs)
        ds = (ds.map(_decode) if mode == "file" else ds).map(fn)
    else:  # held-out: fixed order, no FIM, one pass
        ds = ds.map(_decode).map(fn) if mode == "file" else ds.map(fn)
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    # No prefetch threads by default: the per-record work is CPU-bound Python, so threads
    # only contend for the GIL (each hand-off cost ~9 ms on a busy 2-core host), and a long
    # buffer of an infinite stream does work far ahead of use (and again after a restore).
    # Worker processes (data.num_workers) scale it instead.
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=4 * max(1, read_threads))
    )
    if workers > 0:
        _ensure_absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    rows = max(batch_size, MIN_PACKING_ROWS, window)
    context = train and level == "context"
    packed = PackIterDataset(
        it,
        seq_len=seq_len,
        batch_size=batch_size,
        batches_per_group=-(-rows // batch_size),
        pad_id=int(tok.pad_id),
        shuffle_seed=seed if train and window > 0 else None,
        flags=context,
        packing=packing,
    )
    if context:
        packed = packed.map(ContextFim(tok, seed, fim_rate, spm_rate, span))
    # A map keeps the packer's checkpoint state as it is (grain forwards get/set_state).
    return packed.map(Batch.from_mapping)


def make_dataset(
    corpus: Corpus,
    config: ml_collections.ConfigDict,
    *,
    split: str = TRAIN_SPLIT,
    seq_len: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
    num_workers: int | None = None,
    mode: str | None = None,
    read_threads: int = 0,
) -> grain.DatasetIterator:
    """A checkpointable iterator of per-host `Batch`es (the contract in `data/batch.py`).

    `batch_size` is per host (default: train.global_batch_size // shard_count). split='train'
    shuffles, applies FIM and repeats forever (or `num_epochs`); split='heldout' reads the
    held-out split once in order without FIM (held-out loss). Pass shard_index /
    shard_count = jax.process_index() / jax.process_count() on multi-host runs. With
    worker processes (data.num_workers > 0) the calling script needs an
    `if __name__ == "__main__":` guard (Grain uses spawn).
    """
    return iter(
        build_dataset(
            corpus,
            config,
            split=split,
            seq_len=seq_len,
            batch_size=batch_size,
            seed=seed,
            shard_index=shard_index,
            shard_count=shard_count,
            num_epochs=num_epochs,
            num_workers=num_workers,
            mode=mode,
            read_threads=read_threads,
        )
    )


def make_eval_dataset(
    corpus: Corpus, config: ml_collections.ConfigDict, **kwargs: Any
) -> grain.DatasetIterator:
    """One ordered pass over the held-out split without FIM (for held-out loss)."""
    return make_dataset(corpus, config, split=HELDOUT_SPLIT, **kwargs)


def _ensure_absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; mark them parsed when no absl app ran."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
