"""The `beam` runner of `prepare`: the same stages as an Apache Beam pipeline.

`data.prepare_runner='beam'` runs this with the options in `data.beam_options` (default:
DirectRunner, `--direct_num_workers=2 --direct_running_mode=multi_processing`); the same
pipeline runs on Dataflow, Flink or Spark with their options (docs/data_beam.md).

    read      Create(listing) | FlatMap(process_file / process_rows)   (prepare_read)
    exact     GroupByKey(exact key) | first in (repo, path) order
    LSH       FlatMap((band, band key) -> member) | GroupByKey | bucket_pairs | Distinct
    confirm   two CoGroupByKey joins bring both contents to a pair -> exact Jaccard
    CC + plan one global step over the metadata and the confirmed edges (union-find,
              split by repository, tokenizer sample, repo-FT filter, shard assignment:
              `prepare_stages`, the functions the local runner calls)
    write     GroupByKey((split, shard)) | sort by (repo, path) | ArrayRecord shard
    sample    the tokenizer sample's contents, sorted, to one ArrayRecord file

The tokenizer then trains in the launching process (SentencePiece is single-machine) and the
manifest is written there, by the same `prepare_finish.finish` as the local runner's, so
both runners write the same shards, groups, tokenizer and manifest (timings aside).

Why not `array_record.beam.WriteToArrayRecord`: it imports and writes with our pins
(apache-beam 2.77.0, array-record 0.8.6), but it is a `FileBasedSink`, which leaves the
order of records inside a shard, and which records go to which shard, to the runner. Our
read side needs records sorted by (repo, path) (a repository is one contiguous range) and
shard contents independent of the worker count, so each (split, shard) group is sorted and
written by one DoFn with the same writer options (`group_size:1`).

Connected components run in one worker over the edge list: edges are only the confirmed
near-duplicate pairs (a few per duplicated file), so this holds up to ~1e8 edges; beyond
that a distributed CC (e.g. large-star/small-star iterations) would replace `_decide`.
The global step also holds every kept file's metadata (~300 bytes each: ~3 GB at 10M
files), which a Dataflow high-memory worker holds.
"""

from __future__ import annotations

import collections
import json
import pickle
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from zen_code_jax.data import dedup, prepare_finish, prepare_read, prepare_stages, sources
from zen_code_jax.data.corpus import SPLITS, Manifest
from zen_code_jax.data.prepare_stages import meta_of, order_key
from zen_code_jax.data.tokenizer import Tokenizer

_SAMPLE = "tokenizer_sample.array_record"
_OUTCOME = "outcome.pkl"


def _read(item: Any, params: prepare_read.ReadParams) -> list[Any]:
    """One listed file, or one batch of rows -> records / skip reasons."""
    if isinstance(item, sources.FileRef):
        return [prepare_read.process_file((item, params))]
    return prepare_read.process_rows((item, params))


def _first(kv: tuple[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return min(kv[1], key=order_key)


def _band_members(r: dict[str, Any]) -> list[tuple[tuple[int, int], tuple]]:
    return [((b, int(k)), order_key(r)) for b, k in enumerate(r["bands"])]


def _bucket(kv: tuple[Any, list[tuple]]) -> list[tuple[tuple, tuple]]:
    members = sorted(kv[1])
    return [(members[i], members[j]) for i, j in dedup.bucket_pairs(len(members)).tolist()]


def _content(r: dict[str, Any]) -> tuple[tuple, str]:
    return order_key(r), json.loads(r["blob"])["content"]


def _to_second(kv: tuple[tuple, dict[str, list]]) -> list[tuple[tuple, tuple[tuple, str]]]:
    a, g = kv
    return [(b, (a, c)) for b in g["pairs"] for c in g["content"]]


def _jaccard(kv: tuple[tuple, dict[str, list]], shingle: int) -> list[tuple[tuple, tuple, float]]:
    b, g = kv
    out = []
    for cb in g["content"]:
        sb = dedup.shingle_set(cb, shingle)
        for a, ca in g["pairs"]:
            out.append((a, b, dedup.jaccard(dedup.shingle_set(ca, shingle), sb)))
    return out


def _decide(metas, edges, skips, counts, cfg, vocab_size, work: str) -> dict[str, Any]:
    """The global step: CC over confirmed edges, then `make_plan`; pickles the outcome."""
    metas = sorted(metas, key=order_key)
    index = {order_key(m): i for i, m in enumerate(metas)}
    edges = sorted((index[a], index[b], j) for a, b, j in edges)
    pi = np.array([e[0] for e in edges], np.int64)
    pj = np.array([e[1] for e in edges], np.int64)
    jac = np.array([e[2] for e in edges], float)
    near = dedup.cluster_result(len(metas), pi, pj, jac >= float(cfg["minhash_threshold"]))
    kept = [m for m, k in zip(metas, near.keep) if k]
    plan = prepare_stages.make_plan(
        kept,
        float(cfg["heldout_fraction"]),
        prepare_finish.tokenizer_budget(vocab_size),
        int(cfg["min_repo_files"]),
        int(cfg["min_repo_lines"]),
    )
    c = dict(counts)
    outcome = prepare_finish.Outcome(
        n_seen=int(c.get("seen", 0)),
        skips=collections.Counter(dict(skips)),
        bytes_in=int(c.get("bytes_in", 0)),
        exact_removed=int(c.get("records", 0)) - len(metas),
        near=near.stats(),
        near_removed_bytes=int(sum(m["bytes"] for m, k in zip(metas, near.keep) if not k)),
        metas=kept,
        plan=plan,
    )
    Path(work, _OUTCOME).write_bytes(pickle.dumps(outcome))
    dest = {}
    for split in SPLITS:
        for s, shard in enumerate(plan.shards[split]):
            for i in shard:
                dest[order_key(kept[i])] = (split, s)
    sample = {order_key(kept[i]) for i in plan.tokenizer_sample}
    return {"dest": dest, "sample": sample, "names": {s: plan.shard_names(s) for s in SPLITS}}


def _route(r: dict[str, Any], decision: dict[str, Any]) -> list[tuple[tuple, tuple]]:
    d = decision["dest"].get(order_key(r))
    return [(d, (order_key(r), r["blob"]))] if d else []


def _write_shard(kv: tuple[tuple[str, int], list], decision: dict[str, Any], out_dir: str) -> int:
    (split, s), items = kv
    blobs = [b for _, b in sorted(items)]
    prepare_finish.write_shard(Path(out_dir) / decision["names"][split][s], blobs)
    return len(blobs)


def _write_sample(items: list[tuple[tuple, str]], work: str) -> int:
    blobs = [json.dumps({"content": c}).encode() for _, c in sorted(items)]
    prepare_finish.write_shard(Path(work) / _SAMPLE, blobs)
    return len(blobs)


def _items(listing: sources.Listing, params: prepare_read.ReadParams) -> list[Any]:
    if listing.kind in ("jsonl", "parquet"):
        return list(prepare_read.row_batches(listing.row_inputs, params.max_rows))
    return list(listing.files)


def run_pipeline(listing, cfg, vocab_size: int, out_dir: Path, work: Path, options: list[str]):
    """Build and run the pipeline; shards land in `out_dir`, the outcome and sample in `work`."""
    # local import: apache-beam is an optional extra (zen-code-jax[beam]), loaded only here
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    params = prepare_finish.read_params(cfg)
    shingle = params.shingle_size
    with beam.Pipeline(options=PipelineOptions(options)) as p:
        read = (
            p
            | "List" >> beam.Create(_items(listing, params), reshuffle=True)
            | "Read" >> beam.FlatMap(_read, params)
        )
        skips = (
            read
            | "Skips" >> beam.Filter(lambda r: isinstance(r, str))
            | "CountSkips" >> beam.combiners.Count.PerElement()
        )
        recs = read | "Kept" >> beam.Filter(lambda r: isinstance(r, dict))
        counts = (
            (
                read | "One" >> beam.Map(lambda _: ("seen", 1)),
                recs | "OneRec" >> beam.Map(lambda _: ("records", 1)),
                recs | "Bytes" >> beam.Map(lambda r: ("bytes_in", r["bytes"])),
            )
            | "Flatten" >> beam.Flatten()
            | "Sum" >> beam.CombinePerKey(sum)
        )
        exact = (
            recs
            | "ByKey" >> beam.Map(lambda r: (r["key"], r))
            | "Exact" >> beam.GroupByKey()
            | "First" >> beam.Map(_first)
        )
        pairs = (
            exact
            | "Bands" >> beam.FlatMap(_band_members)
            | "Buckets" >> beam.GroupByKey()
            | "Pairs" >> beam.FlatMap(_bucket)
            | "Distinct" >> beam.Distinct()
        )
        contents = exact | "Contents" >> beam.Map(_content)
        half = (
            {"pairs": pairs, "content": contents}
            | "JoinFirst" >> beam.CoGroupByKey()
            | "ToSecond" >> beam.FlatMap(_to_second)
        )
        edges = (
            {"pairs": half, "content": contents}
            | "JoinSecond" >> beam.CoGroupByKey()
            | "Jaccard" >> beam.FlatMap(_jaccard, shingle)
        )
        metas = exact | "Meta" >> beam.Map(meta_of)
        decision = (
            p
            | "Seed" >> beam.Create([None])
            | "Decide"
            >> beam.Map(
                lambda _, m, e, s, c: _decide(m, e, s, c, cfg, vocab_size, str(work)),
                beam.pvalue.AsList(metas),
                beam.pvalue.AsList(edges),
                beam.pvalue.AsList(skips),
                beam.pvalue.AsList(counts),
            )
        )
        dec = beam.pvalue.AsSingleton(decision)
        _ = (
            exact
            | "Route" >> beam.FlatMap(_route, dec)
            | "ByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.Map(_write_shard, dec, str(out_dir))
        )
        _ = (
            exact
            | "InSample" >> beam.Filter(lambda r, d: order_key(r) in d["sample"], dec)
            | "SampleText" >> beam.Map(_content)
            | "SampleList" >> beam.combiners.ToList()
            | "WriteSample" >> beam.Map(_write_sample, str(work))
        )


def build_beam(
    listing: sources.Listing,
    data_cfg: Any,
    cfg: dict[str, Any],
    key: str,
    vocab_size: int,
    out_dir: Path,
    tokenizer: Tokenizer | None = None,
) -> Manifest:
    """Run the pipeline, then train the tokenizer (or save `tokenizer`) and write the
    manifest (as `prepare`)."""
    t0 = time.perf_counter()
    options = shlex.split(str(data_cfg.beam_options))
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".beam-") as work:
        run_pipeline(listing, cfg, vocab_size, out_dir, Path(work), options)
        outcome: prepare_finish.Outcome = pickle.loads(Path(work, _OUTCOME).read_bytes())
        outcome.skips.update(listing.path_skips)  # counted by the listing, as locally
        prepare_finish.check_nonempty(
            listing.kind, outcome.n_seen, outcome.skips, len(outcome.metas)
        )
        timings = {"beam_pipeline_s": time.perf_counter() - t0}
        # local import: array_record is only needed when preparing (and is slow to import)
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        src = ArrayRecordDataSource([str(Path(work, _SAMPLE))])
        texts = (json.loads(src[i])["content"] for i in range(len(src)))
        return prepare_finish.finish(
            out_dir,
            listing=listing,
            cfg=cfg,
            key=key,
            outcome=outcome,
            sample_texts=texts,
            vocab_size=vocab_size,
            timings=timings,
            processes=int(data_cfg.num_prepare_processes or 1),
            runner="beam",
            tokenizer=tokenizer,
        )
