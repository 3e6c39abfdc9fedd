"""The Grain input pipeline: records -> (repo windows | file pieces) -> FIM -> pack -> batches.

Order of operations and why:

  shuffled(records or repositories)      global shuffle by seed, reshuffled every epoch
                                         (train only; held-out: fixed order, one pass)
    | or MapDataset.mix(shuffled groups) domain / language weights (train, file mode)
    .random_map(to_segments, seed)       windows, FIM, tokenize: Philox keyed by (seed, index)
    [shard_index::shard_count]           this host's disjoint, balanced share
    .to_iter_dataset()
    [.mp_prefetch(workers)]              worker processes do the per-record work above
    PackIterDataset                      first-fit packing into finished [batch, seq_len] batches
    .map(Batch.from_mapping)             the typed batch contract (data/batch.py)

Every random choice happens on the MapDataset side, keyed by the element's index in the
global (shuffled, repeated) stream, so it never depends on read order, threads or worker
processes. Packing runs after the worker processes, in the host process, so its input order
(and hence every batch) is identical with 0 or N workers. Worker processes read disjoint
slices and Grain re-interleaves them in the original order.

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
from zen_code_jax.data.import_graph import order_files
from zen_code_jax.data.packing import PackIterDataset
from zen_code_jax.data.repo_window import file_segments, repo_windows
from zen_code_jax.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MODES = ("file", "repo")
# First-fit bins per group, at least: more bins, less padding (measured in the benchmark).
MIN_PACKING_ROWS = 64


class FileToSegments:
    """Per-record transform for file mode (picklable for worker processes)."""

    def __init__(self, tok: Tokenizer, seq_len: int, fim_rate: float, spm_rate: float):
        self.tok, self.seq_len, self.fim_rate, self.spm_rate = tok, seq_len, fim_rate, spm_rate

    def __call__(self, record: dict, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        return file_segments(
            record["content"],
            self.tok,
            rng,
            self.seq_len,
            fim_rate=self.fim_rate,
            spm_rate=self.spm_rate,
        )


class RepoToWindows:
    """Per-repository transform for repo mode: read files, order by imports, window, FIM."""

    def __init__(
        self, source: Sequence[Any], tok: Tokenizer, seq_len: int, fim_rate: float, spm_rate: float
    ):
        self.source = source
        self.tok, self.seq_len, self.fim_rate, self.spm_rate = tok, seq_len, fim_rate, spm_rate

    def __call__(self, repo: Sequence, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        _, start, end = repo
        files = {}
        for i in range(int(start), int(end)):
            rec = _decode(self.source[i])
            files[rec["path"]] = rec["content"]
        ordered = [(p, files[p]) for p in order_files(files)]
        return repo_windows(
            ordered, self.tok, rng, self.seq_len, fim_rate=self.fim_rate, spm_rate=self.spm_rate
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


def _mixture(
    corpus: Corpus, split: str, data_cfg: ml_collections.ConfigDict, seed: int
) -> grain.MapDataset | None:
    """A deterministic weighted mixture by domain and language, or None when not needed.

    Needed when language weights are set, or domain weights name several domains or leave
    out a domain the corpus has. The weights are `corpus.mixture` (byte-share weights from
    the group statistics, `data.corpus.mixture_weights`). Each group is shuffled (reshuffled
    every epoch) and repeated; `MapDataset.mix` interleaves them by index (no stateful RNG).
    """
    source = corpus.source(split)
    dom_w = dict(data_cfg.domain_weights or {})
    lang_w = dict(data_cfg.language_weights or {})
    present_domains = {g.split("/", 1)[0] for g in corpus.groups(split)[0]}
    if not lang_w and len(dom_w) <= 1 and (not dom_w or present_domains == set(dom_w)):
        return None
    mix = corpus.mixture(data_cfg, split)
    keep = [(g, idx, w) for g, idx, w in zip(mix.groups, mix.indices, mix.weights) if w > 0]
    parts = [
        shuffled(np.asarray(idx, dtype=np.int64), (seed + j) % 2**32, None).map(_Lookup(source))
        for j, (_, idx, _) in enumerate(keep)
    ]
    log.info("Mixing %s", {g: round(w, 4) for g, _, w in keep})
    if len(parts) == 1:  # the weights only drop groups
        return parts[0]
    return grain.MapDataset.mix(parts, [w for _, _, w in keep])


class _Lookup:
    """Record index -> record (picklable)."""

    def __init__(self, source: Sequence[Any]):
        self.source = source

    def __call__(self, i: Any) -> Any:
        return self.source[int(i)]


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
    fim_rate = float(config.fim.rate) if train else 0.0
    spm_rate = float(config.fim.spm_rate) if train else 0.0
    source = corpus.source(split)

    if mode == "file":
        ds = grain.MapDataset.source(source)
        if len(ds) == 0:
            raise ValueError(f"The {split!r} split has no records; check data.source and filters.")
        fn = FileToSegments(tok, seq_len, fim_rate, spm_rate)
    else:
        repos = [tuple(r) for r in corpus.repos(split)]
        if not repos:
            raise ValueError(f"The {split!r} split has no repositories; check data.source.")
        ds = grain.MapDataset.source(repos)
        fn = RepoToWindows(source, tok, seq_len, fim_rate, spm_rate)

    if train:
        mixed = _mixture(corpus, split, data_cfg, seed) if mode == "file" else None
        if mixed is not None:
            if num_epochs is not None:
                log.warning("num_epochs is ignored with a weighted mixture (it repeats forever).")
            ds = mixed
        else:
            ds = shuffled(source if mode == "file" else repos, seed, num_epochs)
        ds = (ds.map(_decode) if mode == "file" else ds).random_map(fn, seed=seed)
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
    rows = max(batch_size, MIN_PACKING_ROWS)
    packed = PackIterDataset(
        it,
        seq_len=seq_len,
        batch_size=batch_size,
        batches_per_group=-(-rows // batch_size),
        pad_id=int(tok.pad_id),
    )
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
