"""Simulated IDE users against the completions server: continuous batching vs a baseline.

Each of N users types into their own file (a stdlib module, cursor at a random point):
every keystroke sends a streaming 20-token completion, and the next keystroke, 50-300 ms
later, cancels it (closes the connection, as Continue's debounce does) and sends the
prompt with one more character. After `--burst` keystrokes the user pauses and waits for
the completion: those are the single-line completions whose latency we report. Same
process, same weights, same workload for both servers:

  - ours: continuous batching (rows join and leave slots between decode steps);
  - baseline: the same server with `--continuous_batching=false` (rows join only an
    empty machine: static batching).

Reported per (server, users): p50/p95 time to first token (all requests that got one),
p50/p95 latency of the awaited completions, tokens/s delivered, the share of decoded
tokens (decoded and prefilled) thrown away by cancellations, and compilations after start-up (must be 0).

    python benchmarks/serve.py [--preset cpu_small] [--users 1,8] [--duration_s 20]

Connection burst (`--scenario burst`): 100 simultaneous connects each sending a request
the moment it connects; reports connect times (a full listen backlog shows as ~1 s SYN
retries) and connect-to-response times (goal: all within 100 ms), against a tiny server
of ours or any running server (`--url http://127.0.0.1:8000`, e.g. the old one):

    python benchmarks/serve.py --scenario burst [--url URL] [--repeats 5]

`--scenario hog` (fairness across requests): one single-line user (sequential 20-token
greedy completions, none cancelled) alone, then while a hog request (n=16, --hog_tokens
each) runs; p50/p95 latency of both phases, their ratio (goal <= 2x) and the hog's
completion time, for the server with fairness (--max_slot_share 0.5, short budgets
first) and without it (--max_slot_share 1, first come first served):

    python benchmarks/serve.py --scenario hog [--hog_tokens 256] [--hog_n 16]
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import select
import selectors
import socket
import sys
import sysconfig
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zen_code_jax.infer.__main__ import build_server  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def one_request(
    port: int, body: dict, deadline: float | None
) -> tuple[float | None, float | None, int]:
    """(ttft, latency, tokens) of a streaming request; closed at `deadline` (cancelled)."""
    data = json.dumps(body).encode()
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data
    )
    buf, ttft, pieces = b"", None, 0
    try:
        while b"data: [DONE]" not in buf:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return ttft, None, pieces  # cancelled
            r, _, _ = select.select([s], [], [], wait)
            if not r:
                continue
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            n = buf.count(b'"text":"') - buf.count(b'"text":""')  # compact JSON
            if n and ttft is None:
                ttft = time.monotonic() - t0
            pieces = n
        return ttft, time.monotonic() - t0, pieces
    finally:
        s.close()


def user(port, text, stop_at, rng, args, out):
    """Type into `text` at a cursor: the suffix (text after the cursor) stays, the prefix
    grows by the next character of the file per keystroke, from a fixed window start."""
    cursor = rng.randint(len(text) // 4, len(text) // 2)
    start, suffix = max(0, cursor - args.prompt_chars), text[cursor : cursor + 200]
    while time.monotonic() < stop_at:
        for k in range(args.burst + 1):
            body = {
                "prompt": text[start:cursor],
                "suffix": suffix,
                "max_tokens": args.max_tokens,
                "temperature": 0,
                "stream": True,
            }
            final = k == args.burst
            deadline = None if final else time.monotonic() + rng.uniform(0.05, 0.3)
            ttft, lat, _ = one_request(port, body, deadline)
            if ttft is not None:
                out["ttft"].append(ttft)
            if final and lat is not None:
                out["latency"].append(lat)
            if not final:
                out["cancelled"] += lat is None
            cursor += 1
        time.sleep(rng.uniform(0.05, 0.2))  # the user reads, then types on


def connection_burst(host: str, port: int, n: int = 100, path: str = "/health") -> dict:
    """`n` simultaneous connects (non-blocking, one thread, so the client adds no thread
    scheduling), each sending `GET path` the moment it connects. Per connection: connect
    time (a full listen backlog shows as ~1 s SYN retries) and accept-to-response time
    (connect done -> whole response read). Goal: every response within 100 ms."""
    sel = selectors.DefaultSelector()
    req = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    t0 = time.monotonic()
    state = {}
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((host, port))
        state[s] = {"i": i, "connected": None, "done": None, "buf": b""}
        sel.register(s, selectors.EVENT_WRITE)
    left, deadline = n, t0 + 30
    while left and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            s, st = key.fileobj, state[key.fileobj]
            now = time.monotonic()
            if st["connected"] is None:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    st["done"], left = float("nan"), left - 1
                    sel.unregister(s)
                    continue
                st["connected"] = now
                s.sendall(req)
                sel.modify(s, selectors.EVENT_READ)
                continue
            chunk = s.recv(65536)
            st["buf"] += chunk
            if not chunk:
                st["done"], left = now, left - 1
                sel.unregister(s)
    for s in state:
        s.close()
    rows = list(state.values())
    ok = [r for r in rows if r["buf"].startswith(b"HTTP/1.1 200")]
    connect = [r["connected"] - t0 for r in rows if r["connected"] is not None]
    serve = [r["done"] - r["connected"] for r in ok if r["done"] is not None]
    return {
        "connections": n,
        "answered_200": len(ok),
        "connect_p50_ms": 1000 * pct(connect, 0.5),
        "connect_max_ms": 1000 * max(connect, default=float("nan")),
        "serve_p50_ms": 1000 * pct(serve, 0.5),
        "serve_p95_ms": 1000 * pct(serve, 0.95),
        "serve_max_ms": 1000 * max(serve, default=float("nan")),
        "within_100ms": sum(x <= 0.1 for x in serve),
    }


def run(server, users: int, args, files: list[str]) -> dict:
    st = server.scheduler.stats
    before = dict(st)
    out = {"ttft": [], "latency": [], "cancelled": 0}
    t0 = time.monotonic()
    stop_at = t0 + args.duration_s
    threads = [
        threading.Thread(
            target=user,
            args=(server.port, files[i % len(files)], stop_at, random.Random(i), args, out),
        )
        for i in range(users)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    gen = st["generated_tokens"] - before.get("generated_tokens", 0)
    wasted = st["wasted_tokens"] - before.get("wasted_tokens", 0)
    prefill = st["prefill_tokens"] - before.get("prefill_tokens", 0)
    wasted_prefill = st["wasted_prefill_tokens"] - before.get("wasted_prefill_tokens", 0)
    return {
        "users": users,
        "ttft_p50": pct(out["ttft"], 0.5),
        "ttft_p95": pct(out["ttft"], 0.95),
        "lat_p50": pct(out["latency"], 0.5),
        "lat_p95": pct(out["latency"], 0.95),
        "completions": len(out["latency"]),
        "tok_s": (gen - wasted) / wall,
        "wasted": wasted / max(gen, 1),
        "wasted_prefill": wasted_prefill / max(prefill, 1),
        "prefill_tokens": prefill,
        "prefix_reused": st["prefix_reused_tokens"] - before.get("prefix_reused_tokens", 0),
        "compiles": server.compiles_since_start,
    }


def _completion(port: int, body: dict) -> tuple[float, float, int]:
    """(ttft, latency, completion tokens) of a streamed request read to its end; the token
    count from the usage chunk (random weights may stop a row early at a special id)."""
    data = json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}})
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data.encode()
        )
        buf, ttft = b"", float("nan")
        while b"data: [DONE]" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if ttft != ttft and b"data: {" in buf:  # the first chunk (text) arrived
                ttft = time.monotonic() - t0
    latency = time.monotonic() - t0
    tokens = 0
    for line in buf.split(b"\n"):
        if line.startswith(b"data: {") and b'"usage"' in line:
            usage = json.loads(line[6:]).get("usage") or {}
            tokens = max(tokens, int(usage.get("completion_tokens", 0)))
    return ttft, latency, tokens


def _hog_phases(name: str, flags: list[str], args, body: dict, hog_body: dict) -> dict:
    """One server: the user alone, then beside the hog (until it ends or enough samples)."""
    server = build_server(
        [
            f"--random_preset={args.preset}",
            "--port=0",
            f"--max_batch_size={args.slots}",
            "--max_context=1024",
            f"--prefill_chunk={args.prefill_chunk}",
            "--max_queue=256",
            *flags,
        ]
    ).start()
    # Random weights end rows early at special ids (a 20-token request made 2 tokens, the
    # hog 70% of its budget): without stop ids every row runs to its budget, so the
    # workload has the shape the scenario names.
    server.scheduler.stop_ids = frozenset()
    done, hog_time = threading.Event(), {}

    ttft: list[float] = []
    user_tokens: list[int] = []

    def user(n: int, until: threading.Event | None = None) -> list[float]:
        lat: list[float] = []
        while len(lat) < n and not (until is not None and until.is_set()):
            first, total, k = _completion(server.port, body)
            ttft.append(first)
            lat.append(total)
            user_tokens.append(k)
            time.sleep(0.05)
        return lat

    def run_hog() -> None:
        _, hog_time["s"], hog_time["tokens"] = _completion(server.port, hog_body)
        done.set()

    user(2)  # warm the path; not measured
    alone = user(args.hog_samples)
    t = threading.Thread(target=run_hog)
    t.start()
    time.sleep(0.2)  # the hog's rows are in their slots
    beside = user(args.hog_samples, until=done)
    beside_ttft = ttft[-len(beside) :]
    t.join()
    after = user(args.hog_samples)  # alone again: how much the machine's load drifted
    r = {
        "server": name,
        "alone_p50": pct(alone, 0.5),
        "alone_p95": pct(alone, 0.95),
        "hog_p50": pct(beside, 0.5),
        "hog_p95": pct(beside, 0.95),
        "beside": len(beside),
        "hog_ttft_p95": pct(beside_ttft, 0.95),
        "after_p95": pct(after, 0.95),
        "hog_s": hog_time["s"],
        "hog_tokens": hog_time["tokens"],
        "user_tokens": sum(user_tokens) / len(user_tokens),
        "compiles": server.compiles_since_start,
    }
    r["ratio"] = r["hog_p95"] / r["alone_p95"]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))
    server.shutdown()
    return r


def hog_scenario(args, files: list[str]) -> None:
    """The single-line user's latency alone and beside an n x hog_tokens request, with and
    without fairness (scheduler.Admission), on one server each; prints a table."""
    text = files[0]
    cursor = len(text) // 3
    body = {
        "prompt": text[max(0, cursor - args.prompt_chars) : cursor],
        "suffix": text[cursor : cursor + 200],
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "stream": True,
    }
    hog_body = {
        "prompt": "def main():\n",
        "n": args.hog_n,
        "max_tokens": args.hog_tokens,
        "temperature": 1.0,
        "seed": 1,
        "stream": True,
    }
    rows = [
        _hog_phases(name, flags, args, body, hog_body)
        for name, flags in (
            ("fair", ["--max_slot_share=0.5", "--short_first=true"]),
            ("fifo", ["--max_slot_share=1", "--short_first=false"]),
        )
    ]
    print(
        f"\n| server | user p50 / p95 alone (s) | beside n={args.hog_n} x {args.hog_tokens} hog "
        "(s) | p95 ratio | TTFT p95 beside (s) | alone again p95 (s) | completions beside "
        "| hog done in (s) | hog tokens | user tokens | compiles |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['server']} | {r['alone_p50']:.3f} / {r['alone_p95']:.3f} | "
            f"{r['hog_p50']:.3f} / {r['hog_p95']:.3f} | {r['ratio']:.2f}x | "
            f"{r['hog_ttft_p95']:.3f} | {r['after_p95']:.3f} | {r['beside']} | "
            f"{r['hog_s']:.1f} | {r['hog_tokens']} | {r['user_tokens']:.1f} | {r['compiles']} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="cpu_small")
    ap.add_argument("--users", default="1,8")
    ap.add_argument("--duration_s", type=float, default=20.0)
    ap.add_argument("--max_tokens", type=int, default=20)
    ap.add_argument("--prompt_chars", type=int, default=1500)
    ap.add_argument("--burst", type=int, default=3, help="cancelled keystrokes per pause")
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--prefill_chunk", type=int, default=128)
    ap.add_argument("--servers", default="ours,baseline")
    ap.add_argument("--prefill_interval", type=int, default=1)
    ap.add_argument(
        "--scenario",
        default="users",
        choices=("users", "burst", "hog"),
        help="burst: 100 simultaneous connects (against --url, or a tiny server of ours)",
    )
    ap.add_argument("--url", default=None, help="burst: a running server (e.g. an old one)")
    ap.add_argument("--repeats", type=int, default=5, help="burst: rounds")
    ap.add_argument("--hog_n", type=int, default=16, help="hog scenario: the hog's n")
    ap.add_argument("--hog_tokens", type=int, default=256, help="hog: max_tokens per row")
    ap.add_argument("--hog_samples", type=int, default=15, help="hog: user requests/phase")
    args = ap.parse_args()
    if args.scenario == "burst":
        burst_main(args)
        return
    files = [
        open(f).read() for f in sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/json/*.py"))
    ]
    files = [f for f in files if len(f) > 4 * args.prompt_chars] or files
    if args.scenario == "hog":
        hog_scenario(args, files)
        return
    rows = []
    for name, flag in (("ours", "true"), ("baseline", "false")):
        if name not in args.servers.split(","):
            continue
        t = time.monotonic()
        server = build_server(
            [
                f"--random_preset={args.preset}",
                "--port=0",
                f"--max_batch_size={args.slots}",
                "--max_context=1024",
                f"--prefill_chunk={args.prefill_chunk}",
                f"--continuous_batching={flag}",
                f"--prefill_interval={args.prefill_interval}",
                "--max_queue=256",
            ]
        ).start()
        print(f"{name}: start-up (load + compile) {time.monotonic() - t:.1f} s", flush=True)
        for n in (int(u) for u in args.users.split(",")):
            r = run(server, n, args, files)
            rows.append((name, r))
            print(
                name,
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}),
                flush=True,
            )
        server.shutdown()
    print(
        "\n| server | users | TTFT p50 / p95 (s) | latency p50 / p95 (s) | completions | tok/s "
        "| wasted decode / prefill | prefix reused / prefilled | compiles |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['users']} | {r['ttft_p50']:.3f} / {r['ttft_p95']:.3f} | "
            f"{r['lat_p50']:.3f} / {r['lat_p95']:.3f} | {r['completions']} | "
            f"{r['tok_s']:.0f} | {r['wasted']:.0%} / {r['wasted_prefill']:.0%} | "
            f"{r['prefix_reused']} / {r['prefill_tokens']} | {r['compiles']} |"
        )
    for name in ("ours", "baseline"):
        lat = {r["users"]: r["lat_p95"] for n, r in rows if n == name}
        if len(lat) >= 2:
            lo, hi = min(lat), max(lat)
            print(f"{name}: p95 latency {hi} users / {lo} user = {lat[hi] / lat[lo]:.2f}x")


def burst_main(args) -> None:
    """The connection-burst scenario: `--repeats` rounds of 100 simultaneous connects."""
    server = None
    if args.url:
        host, port = args.url.removeprefix("http://").rsplit(":", 1)
    else:
        server = build_server(["--random_preset=tiny", "--port=0", "--max_context=256"]).start()
        host, port = "127.0.0.1", str(server.port)
    print(
        "| round | answered 200 | connect p50 / max (ms) | served p50 / p95 / max (ms) "
        "| within 100 ms |"
    )
    print("|---|---|---|---|---|")
    for k in range(args.repeats):
        r = connection_burst(host, int(port))
        print(
            f"| {k} | {r['answered_200']}/{r['connections']} | {r['connect_p50_ms']:.1f} / "
            f"{r['connect_max_ms']:.1f} | {r['serve_p50_ms']:.1f} / {r['serve_p95_ms']:.1f} / "
            f"{r['serve_max_ms']:.1f} | {r['within_100ms']} |",
            flush=True,
        )
        time.sleep(0.5)
    if server is not None:
        server.shutdown()


if __name__ == "__main__":
    main()
