"""Speculative decoding against plain decoding: IDE-shaped FIM completions at 1 and N users.

Each user completes held-out-like files in turn (stdlib modules, not the tokenizer's
training files), with repository context (two sibling modules of the same package, cut so
the prompt stays under --prompt_tokens): a 20-token single-line completion (the rest of a
line, stop at a newline) and a 128-token multi-line one (a function body's next lines).
Every configuration decodes the same tasks greedily through the server's scheduler thread
(a slot decoder compiled at start-up, no HTTP), users in closed loop (next request when the
last one finished). Reported per (configuration, users, kind): p50/p95 latency, acceptance
rate (accepted / drafted tokens), and whether every text equals the `off` text of the
same task (greedy identity).

    python benchmarks/speculative.py --run_dir=RUN --draft=SPEC [--users 1,8]
    python benchmarks/speculative.py --run_dir=RUN --draft_layers=2   # self-speculation:
        # the target's first 2 layers + its head as the draft (no training, same tokenizer)
    python benchmarks/speculative.py            # tiny random target and draft: a smoke run

Without --run_dir the target is a random `tiny` model and the draft the target plus a
little noise (so drafts are mostly, not always, accepted); latencies then say nothing
about a real model.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import sys
import sysconfig
import threading
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zen_code_jax.data.tokenizer import Tokenizer  # noqa: E402
from zen_code_jax.infer.drafting import SpecConfig  # noqa: E402
from zen_code_jax.infer.engine import CompletionRequest, InferenceEngine, random_params  # noqa: E402
from zen_code_jax.infer.scheduler import Job  # noqa: E402
from zen_code_jax.model import get_preset  # noqa: E402

KINDS = {"single": (20, ("\n",)), "multi": (128, ())}
PACKAGES = ("email", "http", "logging", "xml/dom", "concurrent/futures", "importlib")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def tasks(engine: InferenceEngine, n: int, prompt_tokens: int, seed: int) -> list[dict]:
    """n single-line and n multi-line FIM tasks: (prompt ids, kind) with repo context."""
    rng = random.Random(seed)
    stdlib = sysconfig.get_paths()["stdlib"]
    files = [f for p in PACKAGES for f in sorted(glob.glob(f"{stdlib}/{p}/*.py"))]
    files = [f for f in files if 4000 < os.path.getsize(f) < 200_000]
    out = []
    for kind in KINDS:
        while sum(t["kind"] == kind for t in out) < n:
            path = rng.choice(files)
            lines = open(path).read().splitlines(keepends=True)
            body = [i for i, ln in enumerate(lines) if ln.startswith("        ") and i > 20]
            if not body:
                continue
            i = rng.choice(body)
            line = lines[i]
            cut = len(line) - len(line.lstrip()) + 4 if kind == "single" else 0
            prefix = "".join(lines[max(0, i - 40) : i]) + line[:cut]
            suffix = line[cut:] if kind == "single" else ""
            suffix += "".join(lines[i + 1 : i + 15] if kind == "single" else lines[i + 12 : i + 24])
            sibs = [f for f in files if os.path.dirname(f) == os.path.dirname(path) and f != path]
            ctx = [(os.path.relpath(f, stdlib), open(f).read()[:1500]) for f in sibs[:2]]
            rel = os.path.relpath(path, stdlib)
            ids = engine.fim_prompt_ids(prefix, suffix, context=ctx, path=rel)
            while len(ids) > prompt_tokens and ctx:
                ctx = [(p, c[: len(c) // 2]) for p, c in ctx if len(c) > 200]
                ids = engine.fim_prompt_ids(prefix, suffix, context=ctx, path=rel)
            if len(ids) <= prompt_tokens:
                out.append({"kind": kind, "ids": ids, "id": len(out)})
    return out


def run_config(engine, spec: SpecConfig, draft, users: int, work: list[dict], args) -> dict:
    """Serve `work` to `users` closed-loop users through one scheduler thread."""
    engine.set_speculative(spec, draft)
    dec = engine.slot_decoder(args.max_context)
    dec.warm_up()
    speculator = engine.speculator(dec)
    if speculator is not None:
        speculator.warm_up()
    sch = engine.scheduler(dec, speculator=speculator).start()
    lat: dict[str, list[float]] = {k: [] for k in KINDS}
    texts: dict[int, str] = {}
    lock = threading.Lock()

    def user(u: int) -> None:
        for t in work[u::users]:
            new, stop = KINDS[t["kind"]]
            job = Job([CompletionRequest(t["ids"], new, stop=stop)], stream=True)
            t0 = time.monotonic()
            sch.submit(job)
            while not job.finished:
                job.events.get()
            with lock:
                lat[t["kind"]].append(time.monotonic() - t0)
                texts[t["id"]] = job.rows[0].text

    t0 = time.monotonic()
    threads = [threading.Thread(target=user, args=(u,)) for u in range(users)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - t0
    st = dict(sch.stats)
    sch.shutdown()
    return {
        "mode": spec.mode,
        "users": users,
        "wall_s": wall,
        "lat": lat,
        "drafted": st.get("spec_draft_tokens", 0),
        "accepted": st.get("spec_accepted_tokens", 0),
        "verify_steps": st.get("spec_verify_steps", 0),
        "decode_steps": st.get("decode_steps", 0),
        "texts": texts,
    }


def layer_draft(engine: InferenceEngine, layers: int) -> InferenceEngine:
    """Self-speculation: the target's first `layers` layers, final norm and LM head."""
    cfg = engine.model_cfg.replace(num_layers=layers)
    params = dict(engine.params)
    params["layers"] = jax.tree.map(lambda x: x[:layers], params["layers"])
    return InferenceEngine(params, cfg, engine.tokenizer, max_batch_size=engine.max_batch_size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run_dir", default=None, help="target checkpoint spec")
    p.add_argument("--draft", default=None, help="draft checkpoint spec")
    p.add_argument("--draft_layers", type=int, default=0, help="draft = target's first N layers")
    p.add_argument("--users", default="1,8")
    p.add_argument("--modes", default="off,ngram,model")
    p.add_argument("--tasks", type=int, default=8, help="tasks per kind")
    p.add_argument("--max_batch_size", type=int, default=8)
    p.add_argument("--max_context", type=int, default=1024)
    p.add_argument("--prompt_tokens", type=int, default=768)
    p.add_argument("--max_draft", type=int, default=4)
    p.add_argument("--spec_max_batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2, help="passes over the modes, interleaved")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()

    if args.run_dir:
        engine = InferenceEngine.from_run(
            args.run_dir, dtype="float32", max_batch_size=args.max_batch_size
        )
        draft = args.draft
    else:
        cfg = get_preset("tiny")
        files = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/json/*.py"))
        tok = Tokenizer.train([open(f).read() for f in files], cfg.vocab_size)
        params = random_params(cfg, 0, 0.2)
        engine = InferenceEngine(params, cfg, tok, max_batch_size=args.max_batch_size)
        noisy = jax.tree.map(lambda a, b: a + b, params, random_params(cfg, 7, 0.05))
        draft = InferenceEngine(noisy, cfg, tok, max_batch_size=args.max_batch_size)
        args.max_context = min(args.max_context, 1024)
    if args.draft_layers:
        draft = layer_draft(engine, args.draft_layers)
    work = tasks(engine, args.tasks, args.prompt_tokens, seed=0)
    modes = [m for m in args.modes.split(",") if m != "model" or draft is not None]
    results = []
    for users in (int(u) for u in args.users.split(",")):
        agg: dict[str, dict] = {}
        for _ in range(args.rounds):  # rounds interleave the modes: load drifts between them
            for mode in modes:
                spec = SpecConfig(
                    mode=mode, max_draft=args.max_draft, max_batch=args.spec_max_batch
                )
                r = run_config(engine, spec, draft if mode == "model" else None, users, work, args)
                counts = ("drafted", "accepted", "verify_steps", "decode_steps")
                a = agg.setdefault(
                    mode,
                    {"lat": {k: [] for k in KINDS}, "wall_s": 0.0, "texts": r["texts"]}
                    | dict.fromkeys(counts, 0),
                )
                for k in KINDS:
                    a["lat"][k] += r["lat"][k]
                a["wall_s"] += r["wall_s"]
                for f in counts:
                    a[f] += r[f]
                a["identical"] = r["texts"] == agg.get("off", r)["texts"] and a.get(
                    "identical", True
                )
        for mode in modes:
            r = agg[mode]
            rate = r["accepted"] / r["drafted"] if r["drafted"] else float("nan")
            p50 = {k: pct(v, 0.5) for k, v in r["lat"].items()}
            p95 = {k: pct(v, 0.95) for k, v in r["lat"].items()}
            print(
                f"users={users} {mode:5s} "
                + " ".join(
                    f"{k}: p50 {p50[k] * 1000:6.0f} ms p95 {p95[k] * 1000:6.0f} ms" for k in KINDS
                )
                + f" | acceptance {rate:.2f} ({r['accepted']}/{r['drafted']}),"
                f" verify {r['verify_steps']}/{r['decode_steps']} steps,"
                f" identical to off: {r['identical']}",
                flush=True,
            )
            results.append(
                {
                    "users": users,
                    "mode": mode,
                    "p50": p50,
                    "p95": p95,
                    "acceptance": rate,
                    "identical": r["identical"],
                    "wall_s": r["wall_s"],
                }
            )
    engine.set_speculative(SpecConfig())
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    load = os.getloadavg()
    print(
        f"load average (1/5/15 min): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
        f"cpus {os.cpu_count()}; numpy {np.__version__}, jax {jax.__version__}"
    )


if __name__ == "__main__":
    main()
