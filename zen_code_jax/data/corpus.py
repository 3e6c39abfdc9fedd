"""The read side of a prepared corpus: what the pipeline, evaluation and SFT consume.

`data/prepare.py` builds a corpus directory once (shards, tokenizer, `manifest.json`); this
module only reads one. Consumers type against the `Corpus` protocol, not `PreparedCorpus`,
so tests can hand them an in-memory corpus (`tests/conftest.py`) with the same methods
and no production code needs to probe for missing ones.

A prepared directory holds, per split in `SPLITS`:
  {split}-NNNNN-of-NNNNN.array_record   JSON records {repo, path, content, language,
                                        domain}, sorted by (repo, path)
  {split}.groups.npy                    int32 group id ("domain/language") per record
and `tokenizer/` plus `manifest.json` (the `Manifest` fields; written last, so a directory
with a manifest is complete).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from zen_code_jax.data.languages import normalize_language
from zen_code_jax.data.sources import CorpusError
from zen_code_jax.data.tokenizer_load import AnyTokenizer, load_tokenizer

SPLITS = ("train", "heldout")
TRAIN_SPLIT, HELDOUT_SPLIT = SPLITS


def check_split(split: str) -> None:
    """Raise a ValueError naming the valid splits (every reader checks the same way)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")


@dataclasses.dataclass
class Manifest(Mapping[str, Any]):
    """`manifest.json`: what was prepared, from what, and the statistics of each split.

    The fields are the file's keys in file order (so writing `to_dict()` reproduces the
    file byte for byte). It is also a read-only Mapping (`m["splits"]`, `m.get(...)`,
    `dict(m)`) because consumers and reports index it like the JSON it is. `mixture` is
    not written: `prepare_corpus` fills it on every load from the configured weights, which
    are not part of the cache key. Defaults exist so an in-memory corpus can build one.
    """

    format: str = "zen-code-jax prepared corpus"
    cache_version: int = 0
    input_hash: str = ""
    listing_signature: str = ""
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = ""
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    dedup: dict[str, Any] = dataclasses.field(default_factory=dict)
    languages: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    domains: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    domains_absent: list[str] = dataclasses.field(default_factory=list)
    note: str = ""
    # split -> {records, bytes, json_bytes, repos, shards, languages, domains, groups,
    #           group_stats}
    splits: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # split -> [[repo, start, end], ...] record ranges in record order
    repos: dict[str, list[list[Any]]] = dataclasses.field(default_factory=dict)
    tokenizer: dict[str, Any] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    processes: int = 1
    mixture: dict[str, Any] | None = None  # not written (see the class docstring)

    _UNWRITTEN = ("mixture",)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"manifest.json has keys {unknown} this version does not know; re-prepare "
                "the corpus (delete WORKDIR/cache/<hash>/) with this version of the code."
            )
        return cls(**dict(d))

    @classmethod
    def read(cls, path: str | os.PathLike) -> Manifest:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        """The written keys and values (a deep copy), in file order."""
        d = dataclasses.asdict(self)
        for k in self._UNWRITTEN:
            d.pop(k)
        return d

    def write(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n")

    def split(self, split: str) -> dict[str, Any]:
        """The statistics of one split (records, bytes, shards, groups, group_stats, ...)."""
        check_split(split)
        return self.splits[split]

    # Mapping: the fields that hold a value (so `"mixture" in m` is False until it is set).
    def __getitem__(self, key: str) -> Any:
        if key.startswith("_") or key not in self._names():
            raise KeyError(key)
        value = getattr(self, key)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return (k for k in self._names() if getattr(self, k) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def _names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]


@dataclasses.dataclass
class Mixture:
    """Deterministic sampling weights over (domain, language) groups of one split.

    `weights[g]` is the probability of drawing a record from group g so that the expected
    share of *bytes* (a proxy for tokens) from g matches the configured weights; within a
    group records are uniform. `record_weights` is the same as one per-record distribution
    (sums to 1) for samplers that take per-record weights. Feed `indices` and `weights` to
    grain's `MapDataset.mix` (one sub-dataset per group).
    """

    groups: list[str]
    indices: list[np.ndarray]
    weights: list[float]
    byte_shares: list[float]
    record_weights: np.ndarray
    absent_domains: list[str]
    absent_languages: list[str]
    dropped: list[str]

    def summary(self) -> dict[str, Any]:
        return {
            "groups": {
                g: {"records": int(len(i)), "sample_prob": w, "byte_share": s}
                for g, i, w, s in zip(self.groups, self.indices, self.weights, self.byte_shares)
            },
            "absent_domains": self.absent_domains,
            "absent_languages": self.absent_languages,
            "dropped_groups": self.dropped,
        }


@runtime_checkable
class Corpus(Protocol):
    """What every consumer of a corpus may use; `PreparedCorpus` is the real one.

    Records are dicts {repo, path, content, language, domain}, sorted by (repo, path) within
    a split; `language` uses the names of `languages.normalize_language` and a group is
    "domain/language". Every method takes a split in `SPLITS` and raises ValueError for
    another.
    """

    @property
    def tokenizer(self) -> AnyTokenizer:
        """The tokenizer trained on this corpus's training split."""
        ...

    @property
    def manifest(self) -> Manifest:
        """What was prepared and the statistics of each split."""
        ...

    def source(self, split: str = TRAIN_SPLIT) -> Sequence[dict[str, str]]:
        """Random-access records of a split (picklable, so Grain workers can read it)."""
        ...

    def repos(self, split: str = TRAIN_SPLIT) -> list[tuple[str, int, int]]:
        """(repo, start, end) record ranges of a split, in record order."""
        ...

    def groups(self, split: str = TRAIN_SPLIT) -> tuple[list[str], np.ndarray]:
        """Sorted group names and the int32 group id of every record of a split."""
        ...

    def group_stats(self, split: str = TRAIN_SPLIT) -> dict[str, dict[str, int]]:
        """Per group of a split: {"records": n, "bytes": UTF-8 bytes of content}."""
        ...

    def mixture(self, data_cfg: Any, split: str = TRAIN_SPLIT) -> Mixture:
        """Sampling weights from `data.domain_weights` / `data.language_weights`."""
        ...


class RecordSource:
    """Random-access grain data source of JSON records -> dicts (picklable, lazy reader)."""

    def __init__(self, paths: Sequence[str | os.PathLike], length: int):
        self.paths = [str(p) for p in paths]
        self._len = int(length)
        self._src: Any = None

    def _reader(self) -> Any:
        # Opened on first read, so a pickled copy (a Grain worker's) opens its own; imported
        # here so reading a manifest does not load array_record (0.6 s; grain's takes 7 s).
        if self._src is None:
            from array_record.python.array_record_data_source import ArrayRecordDataSource

            self._src = ArrayRecordDataSource(self.paths) if self.paths else []
        return self._src

    def __len__(self) -> int:
        return self._len

    def raw(self, index: int) -> bytes:
        """The JSON bytes of record `index`."""
        if not -self._len <= index < self._len:
            raise IndexError(f"record {index} out of range for a source of {self._len}")
        return self._reader()[index % self._len]

    def __getitem__(self, index: int) -> dict[str, str]:
        return json.loads(self.raw(int(index)))

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths, "_len": self._len, "_src": None}

    def __repr__(self) -> str:
        return f"RecordSource({len(self.paths)} shards, {self._len} records)"


class PreparedCorpus:
    """A prepared corpus directory (see the module docstring); implements `Corpus`."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.manifest: Manifest = Manifest.read(self.directory / "manifest.json")
        self._tokenizer: AnyTokenizer | None = None

    @property
    def tokenizer(self) -> AnyTokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.directory / "tokenizer")
        return self._tokenizer

    def source(self, split: str = TRAIN_SPLIT) -> RecordSource:
        """Random-access records of a split, sorted by (repo, path)."""
        s = self.manifest.split(split)
        return RecordSource([self.directory / f for f in s["shards"]], s["records"])

    def repos(self, split: str = TRAIN_SPLIT) -> list[tuple[str, int, int]]:
        check_split(split)
        return [tuple(r) for r in self.manifest.repos[split]]  # type: ignore[misc]

    def groups(self, split: str = TRAIN_SPLIT) -> tuple[list[str], np.ndarray]:
        s = self.manifest.split(split)
        return list(s["groups"]), np.load(self.directory / f"{split}.groups.npy")

    def group_stats(self, split: str = TRAIN_SPLIT) -> dict[str, dict[str, int]]:
        return self.manifest.split(split)["group_stats"]

    def mixture(self, data_cfg: Any, split: str = TRAIN_SPLIT) -> Mixture:
        return mixture_weights(self, data_cfg, split)

    def __repr__(self) -> str:
        sp = self.manifest.splits
        return (
            f"PreparedCorpus({self.directory}, train={sp['train']['records']} records, "
            f"heldout={sp['heldout']['records']} records)"
        )


def _as_dict(x: Any) -> dict[str, float]:
    """A weights group (ConfigDict, dict or None) as a plain {name: float}."""
    if x is None:
        return {}
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    return {str(k): float(v) for k, v in dict(x).items()}


def _language_shares(
    members: Sequence[str], lw: Mapping[str, float], bytes_of: Mapping[str, int]
) -> dict[str, float]:
    """Unnormalized weight per "code/<language>" group: a named language gets its weight,
    the unnamed ones share the "Other" weight in proportion to their bytes."""
    lang = {m: m.split("/", 1)[1] for m in members}
    others = [m for m in members if lang[m] not in lw]
    other_bytes = sum(bytes_of[m] for m in others)
    other_w = lw.get("Other", 0.0)
    w = {m: lw[lang[m]] for m in members if lang[m] in lw}
    for m in others:
        w[m] = other_w * bytes_of[m] / other_bytes if other_bytes else 0.0
    return w


def mixture_weights(corpus: Corpus, data_cfg: Any, split: str = TRAIN_SPLIT) -> Mixture:
    """Deterministic group weights for a split (see `Mixture`).

    Domain weights (Table 2) split the mass between domains present in the split; an empty
    dict means natural frequencies. Language weights (Table 3) split the `code` domain's mass
    between languages; keys may be aliases ("c" and "cpp" both add to "C/C++"); a language
    missing from the dict gets the "Other" weight (0 if none), an empty dict means natural
    frequencies. Configured domains/languages absent from the corpus are listed (and their
    mass goes to the rest), as are present groups dropped by a zero weight.

    "Other" is *one* share (Table 3's "Other: 13%"), divided among the languages the dict
    does not name in proportion to their bytes; it is never given in full to each of them.
    """
    names, gid = corpus.groups(split)
    if not names:
        raise CorpusError(
            f"The {split} split is empty, so it has no mixture; use the other split or "
            "change data.heldout_fraction."
        )
    stats = corpus.group_stats(split)
    dw = _as_dict(data_cfg.domain_weights)
    lw: dict[str, float] = collections.defaultdict(float)
    for k, v in _as_dict(data_cfg.language_weights).items():
        # Aliases ("c", "cpp", "python", "bash") map to the manifest's names and add up.
        lw["Other" if k.lower() == "other" else normalize_language(k)] += v
    lw = dict(lw)
    by_domain: dict[str, list[int]] = collections.defaultdict(list)
    for g, name in enumerate(names):
        by_domain[name.split("/", 1)[0]].append(g)
    present_domains = sorted(by_domain)
    present_langs = {n.split("/", 1)[1] for n in names if n.startswith("code/")}
    absent_domains = sorted(set(dw) - set(present_domains))
    absent_langs = sorted(set(lw) - present_langs - {"Other"})
    bytes_of = {n: stats[n]["bytes"] for n in names}
    total_bytes = sum(bytes_of.values()) or 1
    share: dict[str, float] = {}
    dropped: list[str] = []
    dom_mass = {}
    for d in present_domains:
        natural = sum(bytes_of[names[g]] for g in by_domain[d]) / total_bytes
        dom_mass[d] = dw.get(d, 0.0) if dw else natural
    if dw and sum(dom_mass.values()) <= 0:
        raise CorpusError(
            f"data.domain_weights={dw} gives no weight to any domain present in the {split} "
            f"split ({', '.join(present_domains)}). Add one of them, e.g. "
            f"data.domain_weights={{'{present_domains[0]}': 1.0}}."
        )
    z = sum(dom_mass.values())
    for d in present_domains:
        members = [names[g] for g in by_domain[d]]
        if d == "code" and lw:
            w = _language_shares(members, lw, bytes_of)
            if dom_mass[d] > 0 and sum(w.values()) <= 0:
                raise CorpusError(
                    f"data.language_weights={lw} gives no weight to any language present in "
                    f"the {split} split ({', '.join(sorted(present_langs))}). Add one of them "
                    "or an 'Other' weight."
                )
        else:
            w = {m: float(bytes_of[m]) for m in members}
        wz = sum(w.values()) or 1.0
        for m in members:
            share[m] = dom_mass[d] / z * w[m] / wz
    for n in names:
        if share[n] <= 0:
            dropped.append(n)
    # Record-sampling probability so that expected byte shares match `share`.
    probs = np.array(
        [
            share[n] / (bytes_of[n] / max(1, stats[n]["records"])) if share[n] > 0 else 0.0
            for n in names
        ]
    )
    probs = probs / probs.sum()
    counts = np.bincount(gid, minlength=len(names))
    rec_w = probs[gid] / np.maximum(counts[gid], 1)
    indices = [np.flatnonzero(gid == g) for g in range(len(names))]
    return Mixture(
        groups=names,
        indices=indices,
        weights=[float(p) for p in probs],
        byte_shares=[float(share[n]) for n in names],
        record_weights=rec_w / rec_w.sum(),
        absent_domains=absent_domains,
        absent_languages=absent_langs,
        dropped=dropped,
    )
