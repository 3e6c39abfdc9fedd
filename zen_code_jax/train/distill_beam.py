"""The Beam runner of the offline teacher-logit preparation (`distill.logits_runner="beam"`).

The teacher's forward pass is the whole cost of the preparation, and it is embarrassingly
parallel over batches, so it is what the pipeline spreads over workers:

    Create((i, batch i))            the student's own batches, from the launching process
    TopK (DoFn)                     each worker loads the teacher once (setup) and emits
                                    batch i's encoded rows, keyed by its part i // part_batches
    GroupByKey(part) | WritePart    one DoFn sorts a part's batches by i and writes them to
                                    one ArrayRecord part file (`teacher_logits.part_file`)

then the launching process checks every part is there and writes meta.json last, as the
local runner does. The records are `teacher_logits.encode_row` of the same rows and the
same jitted top-k (`distill.make_topk_fn`), so the parts read in order are the
local runner's file byte for byte (tests/test_distill_beam.py), and the student reads them
through the same Grain `ArrayRecordDataSource` (`teacher_logits.shard_paths`).

Why the batches come from the launching process: the Grain pipeline's order is
sequential (batch i needs the packer's state after batch i-1), and reading tokens is
cheap next to the teacher; the elements are the token arrays only (5 x int32 [B, S] per
batch: ~40 KB for 4 x 512). Why parts and not one file: a part's records are held by one
worker before writing (`part_batches` x rows x S x k x 8 bytes: 64 batches x 4 x 512 x 32 x
8 = 34 MB), so a shard of any length never sits in one worker's memory; why not
`array_record.beam.WriteToArrayRecord`: it leaves record order to the runner, while the
reader indexes record i*B + r (the same reason as data/beam_prepare.py).

Runner options: `distill.beam_options` (default the in-process DirectRunner with one
worker; `--direct_num_workers=N --direct_running_mode=multi_processing` runs N teachers
on one host; Dataflow/Flink/Spark options run them on that cluster, each worker holding
one teacher on its own devices).
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

from zen_code_jax.data.batch import FIELDS, Batch
from zen_code_jax.data.teacher_logits import encode_row, part_file, shard_file, shard_paths
from zen_code_jax.parallel import make_mesh
from zen_code_jax.parallel.rules import DEFAULT_RULES
from zen_code_jax.resolve import load_model
from zen_code_jax.train.distill import make_topk_fn

PART_BATCHES = 64  # batches per part file (see the module docstring for the memory bound)


@dataclasses.dataclass(frozen=True)
class TeacherJob:
    """What a worker needs to run the teacher (plain values: pickled to every worker)."""

    teacher: str  # a resolved checkpoint name (resolve.py)
    dtype: str
    top_k: int
    temperature: float
    chunk: int
    mesh: dict[str, int]  # the config's mesh group: each worker builds it on its devices


class TopKFn(beam.DoFn):
    """(i, {field: [B, S]}) -> (part, (i, [encoded row records])): the teacher once per worker."""

    def __init__(self, job: TeacherJob, part_batches: int) -> None:
        self.job, self.part_batches = job, part_batches

    def setup(self) -> None:
        j = self.job
        self.mesh = make_mesh(j.mesh)
        self.teacher = load_model(j.teacher, mesh=self.mesh, dtype=jnp.dtype(j.dtype))
        self.fn = make_topk_fn(self.teacher.model_cfg, j.top_k, j.temperature, j.chunk)

    def process(self, element: tuple[int, dict[str, np.ndarray]]) -> Iterator[Any]:
        i, fields = element
        batch = Batch.from_mapping(fields)
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(list(DEFAULT_RULES)):
            top = jax.tree.map(np.asarray, self.fn(self.teacher.params, batch))
        tokens = fields["inputs"]
        rows = [
            encode_row(tokens[r], top.ids[r], top.logp[r], top.rest[r], top.nll[r])
            for r in range(tokens.shape[0])
        ]
        yield i // self.part_batches, (i, rows)


def _write_part(
    kv: tuple[int, Iterable[tuple[int, list[bytes]]]],
    directory: str,
    shard: tuple[int, int],
    parts: int,
) -> int:
    # local import: array_record comes with grain; only the preparation step writes
    from array_record.python.array_record_module import ArrayRecordWriter

    part, batches = kv
    writer = ArrayRecordWriter(str(part_file(directory, *shard, part, parts)), "group_size:1")
    n = 0
    for _, rows in sorted(batches, key=lambda b: b[0]):
        for record in rows:
            writer.write(record)
            n += 1
    writer.close()
    return n


def write_teacher_logits_beam(
    batches: Iterable[Batch],
    job: TeacherJob,
    directory: str | Path,
    *,
    options: str,
    shard: tuple[int, int] = (0, 1),
    part_batches: int | None = None,
) -> int:
    """Run the pipeline over `batches` (batch i = the i-th); returns the number of batches.
    The caller writes meta.json after it (its presence = complete)."""
    elements = [
        (i, {k: np.asarray(v) for k, v in b.to_dict().items() if k in FIELDS})
        for i, b in enumerate(batches)
    ]
    part_batches = part_batches or PART_BATCHES
    parts = max(1, -(-len(elements) // part_batches))
    Path(directory).mkdir(parents=True, exist_ok=True)
    stem = shard_file(directory, *shard).name.removesuffix(".array_record")
    for stale in Path(directory).glob(f"{stem}*.array_record"):
        stale.unlink()  # this shard's earlier (incomplete, or local-runner) preparation
    with beam.Pipeline(options=PipelineOptions(shlex.split(options))) as p:
        _ = (
            p
            | "Batches" >> beam.Create(elements, reshuffle=True)
            | "TopK" >> beam.ParDo(TopKFn(job, part_batches))
            | "ByPart" >> beam.GroupByKey()
            | "WritePart" >> beam.Map(_write_part, str(directory), shard, parts)
        )
    shard_paths(directory, *shard)  # every part written, or a one-line error
    return len(elements)
