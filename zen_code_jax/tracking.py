"""TensorBoard scalars and hparams without TensorFlow, and the same scalars as metrics.jsonl.

The event files are written with `tensorboard`'s own pure-Python writer and protos, so the
package never imports TensorFlow. `SummaryWriter.hparams` writes the HParams plugin's
session-start record; `tensorboard --logdir WORKDIR/<experiment>` then lists one session per
arm with its overrides and final metrics in the HParams dashboard (the plugin infers the
experiment from the sessions, so arms need not share their hparam keys).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class SummaryWriter:
    """Scalars + hparams to TensorBoard event files, and the same scalars to metrics.jsonl.

    The JSONL copy is what `zen_code_jax.report` reads, so a report never depends on
    parsing event files.
    """

    def __init__(self, logdir: str | Path, jsonl_name: str = "metrics.jsonl") -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.logdir), flush_secs=10)
        self._jsonl = open(self.logdir / jsonl_name, "a", encoding="utf-8")  # noqa: SIM115

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
        """Write `{prefix}{name}: value` scalars at `step` (non-numbers are skipped)."""
        clean = {}
        for name, value in values.items():
            try:
                clean[prefix + name] = float(value)
            except (TypeError, ValueError):
                continue
        if not clean:
            return
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in clean.items()]
        )
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
        record = {"step": int(step), **{k: _json_float(v) for k, v in clean.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        # Flushed per write (writes happen every log_every steps): a SIGKILLed run keeps
        # the log of every step up to its newest checkpoint, so a resume can replay from it.
        self._jsonl.flush()

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        """Record this run as an HParams session: its hparams and its final metrics."""
        info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for name, value in hparams.items():
            if isinstance(value, bool):
                info.hparams[name].bool_value = value
            elif isinstance(value, int | float):
                info.hparams[name].number_value = float(value)
            else:
                info.hparams[name].string_value = str(value)
        self._add_plugin_summary(
            hp_metadata.SESSION_START_INFO_TAG,
            plugin_data_pb2.HParamsPluginData(session_start_info=info),
            step,
        )
        self.scalars(step, metrics, prefix="final/")
        end = plugin_data_pb2.SessionEndInfo(
            status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time()
        )
        self._add_plugin_summary(
            hp_metadata.SESSION_END_INFO_TAG,
            plugin_data_pb2.HParamsPluginData(session_end_info=end),
            step,
        )

    def _add_plugin_summary(self, tag: str, data: Any, step: int) -> None:
        value = summary_pb2.Summary.Value(
            tag=tag,
            metadata=hp_metadata.create_summary_metadata(data),
            tensor=hp_metadata.NULL_TENSOR,
        )
        event = event_pb2.Event(
            wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=[value])
        )
        self._writer.add_event(event)

    def flush(self) -> None:
        self._writer.flush()
        self._jsonl.flush()

    def close(self) -> None:
        self._writer.close()
        self._jsonl.close()


class NullWriter:
    """SummaryWriter's interface, writing nothing: processes other than 0 of a multi-host
    run, so one event file and one metrics.jsonl exist per arm."""

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
        del step, values, prefix

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
        del hparams, metrics, step

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _json_float(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def read_scalars(path: str | Path) -> list[dict[str, Any]]:
    """Read a metrics.jsonl written by SummaryWriter (later records of a step win)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def truncate_after(path: str | Path, step: int) -> None:
    """Drop records logged after `step`, so a resumed run does not log a step twice."""
    path = Path(path)
    if not path.exists():
        return
    keep = [r for r in read_scalars(path) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
