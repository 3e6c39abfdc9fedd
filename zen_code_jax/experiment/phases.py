"""Wall time per phase of an experiment run, measured by the run itself: `timings.json`.

Why: the main job's cost used to be guessed from progress lines; issue 22 asks for it phase
by phase (prepare, per arm set-up / compile / train / evaluate, report), before and after
each speed change. `experiments/run.py` and `experiment.arm.run_arm` time themselves with
the clocks below and write `WORKDIR/<experiment>/timings.json`; `--mode=report` renders the
merged record into report.md, and the run prints its own table at the end.

Measuring never touches the numbers a run produces: the clocks read `time.perf_counter`
around calls that happen anyway (the first call of the jitted train step is passed through
unchanged; state hooks are wrapped, not reordered) and jax's own compile durations come
from `jax.monitoring` listeners.

Phases are exclusive: a phase opened inside another (the corpus inside set-up, a checkpoint
save inside training) is subtracted from the outer one, so an arm's phases add up to its
wall time. Per-task evaluation seconds are not copied here: `eval/summary.json` holds them
(`eval_seconds`, written by `eval.runner.run_tasks`) and the tables (`report_phases.py`)
read them from there; tokenizer-training seconds likewise come from the corpus's
`manifest.json`.

Merging (`Timings.merge`): every run.py command is one `Invocation`, appended (or replaced
by its own newer copy: a command rewrites its record after each arm); earlier invocations
are never changed, so a resumed run or another `--arm=` keeps what came before. The
experiment-level view (`combined`, report.md's table) sums the phases that accumulate work
(preparation, set-up, compile, training, checkpoints: a resumed arm continues where it
stopped) and takes evaluation from the newest invocation that evaluated the arm (as
eval/summary.json holds the newest scores).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax

from zen_code_jax.rundir import write_text_atomic
from zen_code_jax.train.hooks import Hooks

Clock = Callable[[], float]
TIMINGS_JSON = "timings.json"
FORMAT = "zen-code-jax phase timings v1"

# jax's compile events (jax/_src/dispatch.py): top-level tracing, lowering to MLIR, and
# the XLA compile, which includes a persistent-cache lookup. Nested traces are not
# recorded by jax, so the durations add up without double counting.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


@dataclasses.dataclass
class ArmPhases:
    """Seconds one arm spent in each phase during one run.py command (exclusive)."""

    prepare_s: float = 0.0  # corpus preparation (or cache load), tokenizer training included
    setup_s: float = 0.0  # data iterator, state (restore / init), hooks, step functions
    compile_s: float = 0.0  # the first call of the jitted train step: trace + compile
    train_s: float = 0.0  # every step after that, with the progress line and other hooks
    checkpoint_s: float = 0.0  # inside checkpoint saves (async: waiting for the last one)
    heldout_s: float = 0.0  # periodic held-out loss (train.eval_every)
    checkpoint_wait_s: float = 0.0  # the final wait for saves to land, closing files
    eval_s: float = 0.0  # the final evaluation, every task (per task: eval/summary.json)
    # Facts beside the seconds:
    jax_compile_s: float = 0.0  # jax's compile seconds inside the phases above (counted there)
    steps: int = 0  # optimizer steps run by this command
    evaluated: bool = False
    corpus_built: bool = False  # the corpus was prepared by this command (not a cache hit)
    corpus_dir: str = ""  # its cache directory (manifest.json: tokenizer seconds)

    PHASES: ClassVar[tuple[str, ...]] = (
        "prepare_s",
        "setup_s",
        "compile_s",
        "train_s",
        "checkpoint_s",
        "heldout_s",
        "checkpoint_wait_s",
        "eval_s",
    )

    def total_s(self) -> float:
        return sum(getattr(self, p) for p in self.PHASES)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ArmPhases:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class ArmClock:
    """Times the phases of one arm (`run_arm`): exclusive, nestable `phase` blocks, wrapped
    calls (`timed`, `first_call`) and jax's compile seconds while `compiles()` is open."""

    def __init__(self, clock: Clock = time.perf_counter) -> None:
        self.phases = ArmPhases()
        self._clock = clock
        self._inner: list[float] = []  # per open phase: seconds spent in phases inside it

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in ArmPhases.PHASES:
            raise ValueError(f"Unknown phase {name!r}; phases: {ArmPhases.PHASES}.")
        start = self._clock()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed = self._clock() - start
            inner = self._inner.pop()
            setattr(self.phases, name, getattr(self.phases, name) + elapsed - inner)
            if self._inner:
                self._inner[-1] += elapsed

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn`, its calls counted as phase `name`."""

        def call(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return fn(*args, **kwargs)

        return call

    def first_call(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn`, its first call counted as phase `name` (the jitted step's compile), the
        later ones left to the enclosing phase."""
        done = False

        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal done
            if done:
                return fn(*args, **kwargs)
            done = True
            with self.phase(name):
                return fn(*args, **kwargs)

        return call

    @contextlib.contextmanager
    def compiles(self) -> Iterator[None]:
        """Add jax's compile durations to `jax_compile_s` while open."""

        def listen(event: str, duration: float, **kwargs: Any) -> None:
            if event in COMPILE_EVENTS:
                self.phases.jax_compile_s += float(duration)

        jax.monitoring.register_event_duration_secs_listener(listen)
        try:
            yield
        finally:
            jax.monitoring.unregister_event_duration_listener(listen)


# State hooks whose time is a phase of its own (the others count as training).
TIMED_STATE_HOOKS = {"checkpoint": "checkpoint_s", "heldout_batches": "heldout_s"}


def time_state_hooks(hooks: Hooks, clock: ArmClock) -> None:
    """Wrap the checkpoint and periodic held-out state hooks in their phases, in place
    (same order, same calls)."""
    hooks.state[:] = [
        dataclasses.replace(h, fn=clock.timed(TIMED_STATE_HOOKS[h.name], h.fn))
        if h.name in TIMED_STATE_HOOKS
        else h
        for h in hooks.state
    ]


@dataclasses.dataclass
class Invocation:
    """One run.py command: its arms' phases and its own start-up and report."""

    id: str  # unique per command (merging replaces a command's own earlier copy)
    started: str  # UTC, ISO 8601
    pid: int
    mode: str  # --mode
    arm: str  # --arm ("" = every arm)
    cpus: int
    load_start: float  # 1-minute load average when the command started
    load_end: float = 0.0
    startup_s: float = 0.0  # process start -> first arm: imports, flags, config, plan
    arms: dict[str, ArmPhases] = dataclasses.field(default_factory=dict)
    report_s: float = 0.0
    reported: bool = False
    total_s: float = 0.0  # process start -> now, measured apart from the phases
    finished: bool = False  # False: still running, or stopped (crash, preemption, kill)

    def attributed_s(self) -> float:
        return self.startup_s + sum(a.total_s() for a in self.arms.values()) + self.report_s

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Invocation:
        names = {f.name for f in dataclasses.fields(cls)}
        inv = cls(**{k: v for k, v in d.items() if k in names and k != "arms"})
        inv.arms = {a: ArmPhases.from_dict(p) for a, p in d.get("arms", {}).items()}
        return inv


@dataclasses.dataclass
class Timings:
    """timings.json: every run.py command on this experiment directory, oldest first."""

    invocations: list[Invocation] = dataclasses.field(default_factory=list)

    @classmethod
    def read(cls, path: str | Path) -> Timings:
        path = Path(path)
        if not path.is_file():
            return cls()
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls([Invocation.from_dict(i) for i in d.get("invocations", [])])
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(
                f"{path} is not a timings record ({type(e).__name__}: {e}); delete it "
                "(only the wall times of earlier commands are lost)."
            ) from None

    def write(self, path: str | Path) -> None:
        d = {"format": FORMAT, "invocations": [dataclasses.asdict(i) for i in self.invocations]}
        write_text_atomic(path, json.dumps(d, indent=1) + "\n")

    def merge(self, inv: Invocation) -> None:
        """Replace this command's earlier copy of itself (same id), else append."""
        for k, old in enumerate(self.invocations):
            if old.id == inv.id:
                self.invocations[k] = inv
                return
        self.invocations.append(inv)

    def combined(self, arms: Sequence[str]) -> tuple[dict[str, ArmPhases], float]:
        """Each arm's phases over the commands that ran arms (see the module docstring:
        work that accumulates is summed, evaluation is the newest), and their start-up."""
        out = {a: ArmPhases() for a in arms}
        startup = 0.0
        for inv in self.invocations:
            if not inv.arms:
                continue  # --mode=report: rebuilding the report changes no phase of the arms
            startup += inv.startup_s
            for name, p in inv.arms.items():
                if name not in out:
                    continue
                c = out[name]
                for f in ArmPhases.PHASES:
                    if f != "eval_s":
                        setattr(c, f, getattr(c, f) + getattr(p, f))
                c.jax_compile_s += p.jax_compile_s
                c.steps += p.steps
                if p.corpus_built:
                    c.corpus_built, c.corpus_dir = True, p.corpus_dir
                if p.evaluated:
                    c.eval_s, c.evaluated = p.eval_s, True
        return out, startup


def note_corpus(phases: ArmPhases, corpus: Any, started: float) -> None:
    """Which cache directory the corpus is, and whether the call that returned it built it
    (its manifest is newer than the call, `started` = time.time() before it): the table
    reads the tokenizer's seconds from that manifest."""
    path = getattr(corpus, "directory", None)  # a PreparedCorpus (an in-memory one: none)
    manifest = Path(path) / "manifest.json" if path is not None else None
    if manifest is not None and manifest.is_file():
        phases.corpus_dir = str(path)
        phases.corpus_built = manifest.stat().st_mtime >= started - 1.0  # coarse clocks


class RunTimer:
    """run.py's clock: start-up, each arm (written to timings.json as it finishes), the
    report, and the total since the process started. Only process 0 writes."""

    def __init__(
        self,
        experiment_dir: str | Path,
        *,
        mode: str,
        arm: str,
        write: bool = True,
        clock: Clock = time.perf_counter,
        process_age_s: float | None = None,
    ) -> None:
        self.path = Path(experiment_dir) / TIMINGS_JSON
        self._clock, self._write = clock, write
        if process_age_s is None:
            process_age_s = _process_age_s()
        self._t0 = clock() - process_age_s  # the process's start, on this clock
        self._mark = clock()
        self.invocation = Invocation(
            id=uuid.uuid4().hex[:12],
            started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            pid=os.getpid(),
            mode=mode,
            arm=arm,
            cpus=os.cpu_count() or 0,
            load_start=_load(),
        )

    def startup_done(self) -> None:
        """Everything since the process started is start-up (call before the first arm)."""
        self.invocation.startup_s = self._clock() - self._t0

    def arm_done(self, name: str, phases: ArmPhases) -> None:
        self.invocation.arms[name] = phases
        self._save()

    @contextlib.contextmanager
    def report(self) -> Iterator[None]:
        start = self._clock()
        try:
            yield
        finally:
            self.invocation.report_s += self._clock() - start
            self.invocation.reported = True

    def finish(self) -> Invocation:
        self.invocation.finished = True
        self._save()
        return self.invocation

    def _save(self) -> None:
        self.invocation.total_s = self._clock() - self._t0
        self.invocation.load_end = _load()
        if not self._write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Two `--arm=` commands may finish at once: read-merge-write under a lock.
        with open(self.path.with_name(f".{TIMINGS_JSON}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                timings = Timings.read(self.path)
            except ValueError as e:  # never stop a run over its timings: start a new file
                bad = self.path.with_name(TIMINGS_JSON + ".bad")
                os.replace(self.path, bad)
                print(f"warning: {e} Moved to {bad}; starting a new one.", flush=True)
                timings = Timings()
            timings.merge(self.invocation)
            timings.write(self.path)


def _process_age_s() -> float:
    """Seconds since this process started (imports count as start-up); 0 if unknown.
    Linux's /proc first (both times count from boot, to 10 ms), else psutil where
    installed (macOS; its start time rests on a boot time rounded to the second)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - started)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional: the test extras pin it

        return max(0.0, time.time() - psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - not installed, or not permitted: unknown
        return 0.0


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0
