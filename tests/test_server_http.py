"""The completions server's HTTP layer against what real traffic does, on 127.0.0.1.

Each test is one hole issue 19 found in the hand-written `http.server` layer (or one thing
that held and must keep holding), driven by raw sockets where a client library would hide
the behaviour. Every loop is bounded (counts and deadlines), so a regression fails instead
of hanging.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zen_code_jax.infer.__main__ import build_server
from zen_code_jax.infer.scheduler import Scheduler
from zen_code_jax.infer.server import CompletionServer, ConnectionLimits

KEY = "http-key"
AUTH = f"Authorization: Bearer {KEY}\r\n".encode()
DEADLINE_S = 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = build_server(
        [
            "--random_preset=tiny",
            "--port=0",
            "--max_batch_size=2",
            "--max_context=256",
            "--prefill_chunk=16",
            "--max_tokens_limit=200",
            "--max_body_bytes=400000",
            f"--read_timeout_s={DEADLINE_S}",
            f"--api_key={KEY}",
            f"--compilation_cache_dir={tmp_path_factory.mktemp('jax_cache')}",
        ]
    )
    srv.start()
    yield srv
    srv.shutdown()


class _Kept(io.BufferedReader):
    """The connection's read buffer, kept open across responses (http.client closes it)."""

    def close(self) -> None:
        pass


class Conn:
    """A raw keep-alive connection: send bytes, read whole responses (http.client parses,
    skipping interim 1xx responses)."""

    def __init__(self, port: int, timeout: float = 30):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = _Kept(socket.SocketIO(self.sock, "rb"))

    def send(self, data: bytes) -> Conn:
        self.sock.sendall(data)
        return self

    def response(self) -> tuple[int, bytes, http.client.HTTPResponse]:
        r = http.client.HTTPResponse(self)  # type: ignore[arg-type]
        r.begin()
        return r.status, r.read(), r

    def makefile(self, *a, **k):  # http.client.HTTPResponse reads through this
        return self.file

    def closed_by_server(self) -> bool:
        """The server closed (FIN, or a reset when our unread bytes were still coming)."""
        self.sock.settimeout(5)
        try:
            return self.file.read(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def post(path: str, body: bytes, extra: bytes = AUTH) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def get(path: str, extra: bytes = AUTH) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n"


COMPLETION = json.dumps({"prompt": "def f(x):", "max_tokens": 3, "temperature": 0}).encode()


def wait_until(cond, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)


def open_connections(srv: CompletionServer) -> set:
    return srv._http.server.server_state.connections  # uvicorn's live connection set


def error(body: bytes) -> dict:
    return json.loads(body)["error"]


def test_malformed_json_is_400_never_500(server):
    c = Conn(server.port)
    cases = [
        b'{"prompt": "\\ud83d", "max_tokens": 2}',  # lone surrogate
        b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # 100k deep
        b'{"prompt": "\xff\xfe"}',  # not UTF-8
        b"[1, 2]",  # not an object
        b'{"prompt": 5}',
        b'{"prompt": "x", "temperature": "hot"}',
        b'{"prompt": "x", "stream": 1}',  # strict: 1 is not true
        b"",
    ]
    for body in cases:
        status, text, _ = c.send(post("/v1/completions", body)).response()
        assert status == 400, (body[:40], text)
        err = error(text)
        assert err["type"] == "invalid_request_error" and err["message"], err
    status, text, _ = c.send(post("/v1/completions", cases[5])).response()
    assert error(text)["param"] == "temperature" and error(text)["code"] == "invalid_value"
    # ... and the same connection still serves (keep-alive after every 400).
    status, text, _ = c.send(post("/v1/completions", COMPLETION)).response()
    assert status == 200 and json.loads(text)["choices"][0]["finish_reason"]
    c.close()


def test_keepalive_after_400_401_404_and_get_with_a_body(server):
    c = Conn(server.port)
    assert c.send(post("/v1/completions", b"{", extra=AUTH)).response()[0] == 400
    assert c.send(post("/v1/completions", COMPLETION, extra=b"")).response()[0] == 401
    assert c.send(get("/nope")).response()[0] == 404
    # A GET with a body: the body is consumed, the next request is parsed from its start.
    c.send(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 14\r\n\r\n")
    c.send(b"GET /nope HTTP")
    status, text, _ = c.response()
    assert status == 200 and json.loads(text)["data"][0]["id"] == server.model_name
    status, text, _ = c.send(post("/v1/completions", COMPLETION)).response()
    assert status == 200 and json.loads(text)["object"] == "text_completion"
    c.close()


def test_chunked_post_is_served_and_leaks_nothing(server):
    c = Conn(server.port)
    half = len(COMPLETION) // 2
    chunks = [COMPLETION[:half], COMPLETION[half:]]
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in chunks) + b"0\r\n\r\n"
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + AUTH
    c.send(head + b"Transfer-Encoding: chunked\r\n\r\n" + body)
    status, text, _ = c.response()
    assert status == 200 and json.loads(text)["object"] == "text_completion"
    status, text, _ = c.send(get("/v1/models")).response()  # the next request, in sync
    assert status == 200 and json.loads(text)["object"] == "list"
    # Over the body cap while chunked: 413 and the connection closes (no bytes reach a
    # next request).
    big = b"x" * 300_000
    c.send(head + b"Transfer-Encoding: chunked\r\n\r\n")
    c.send((b"%x\r\n%s\r\n" % (len(big), big)) * 2)
    status, text, _ = c.response()
    assert status == 413 and error(text)["code"] == "request_too_large"
    assert c.closed_by_server()
    c.close()
    # A malformed chunk: a 400 and a closed connection.
    c = Conn(server.port)
    c.send(head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
    status, _, _ = c.response()
    assert status == 400 and c.closed_by_server()
    c.close()


def test_half_closed_client_gets_its_response(server):
    for path, body in (
        ("/v1/completions", COMPLETION),
        ("/infill", json.dumps({"input_prefix": "def f():\n", "n_predict": 3}).encode()),
    ):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        s.sendall(post(path, body))
        s.shutdown(socket.SHUT_WR)  # sent everything; still reading
        r = http.client.HTTPResponse(s)
        r.begin()  # skips the interim 100 Continue probes
        assert r.status == 200 and json.loads(r.read())
        s.close()


def test_half_closed_stream_is_a_cancel(server):
    """An EOF on a stream request is the editor's cancel, whether it arrives before the
    stream started (400 client_closed, nothing decoded) or during it."""
    st = server.scheduler.stats
    before = st["requests"]
    body = json.dumps({"prompt": "x", "max_tokens": 4, "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    s.sendall(post("/v1/completions", body))
    s.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := s.recv(4096):
        got += chunk
    s.close()
    while got.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):  # the half-close probes
        got = got[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
    if got.startswith(b"HTTP/1.1 400"):  # the EOF came before the route chose to stream
        assert b"client_closed" in got and st["requests"] == before
    else:  # or after: the stream was cut (no [DONE])
        assert (not got or got.startswith(b"HTTP/1.1 200")) and b"[DONE]" not in got


def test_closed_non_streaming_client_is_cancelled(server):
    """A closed client (not half-closed) of a whole-body request frees its slot early."""
    sch = server.scheduler
    long = "import json\nclass Foo:\n    def bar(self, x):\n        return x + "  # no early EOS
    body = json.dumps({"prompt": long, "max_tokens": 200, "temperature": 0})
    cancelled = sch.stats["cancelled_rows"]
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(post("/v1/completions", body.encode()))
    deadline = time.monotonic() + 20
    while sch.busy_slots == 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    s.close()
    while sch.stats["cancelled_rows"] == cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sch.stats["cancelled_rows"] == cancelled + 1


def test_whole_request_deadline_for_trickled_headers_and_bodies(server):
    """One byte at a time, each well inside any per-read timeout: the deadline is for the
    whole request, so both a trickled header and a trickled body end at 408."""
    threads_before = threading.active_count()
    body = COMPLETION
    heads = [
        post("/v1/completions", body)[:30],  # inside the headers
        post("/v1/completions", body)[: -len(body) + 1],  # inside the body
    ]
    for head in heads:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        t0 = time.monotonic()
        s.sendall(head[:-5])
        answer = b""
        for b in head[-5:] + b"     ":  # one byte every 0.4 s: 10 bytes = 4 s > deadline
            try:
                s.sendall(bytes([b]))
            except OSError:
                break
            time.sleep(0.4)
            s.setblocking(False)
            try:
                answer += s.recv(4096)
            except BlockingIOError:
                pass
            s.setblocking(True)
            if answer:
                break
        took = time.monotonic() - t0
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert DEADLINE_S <= took < DEADLINE_S + 2.0
        s.close()
    # Stalled uploads hold no thread (the old server: one thread each, unbounded).
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(32)]
    for s in socks:
        s.sendall(post("/v1/completions", body)[:-10])
    time.sleep(0.2)
    assert threading.active_count() <= threads_before + 2
    for s in socks:
        s.settimeout(DEADLINE_S + 5)
        assert s.recv(4096).startswith(b"HTTP/1.1 408")
        s.close()


def test_auth_is_checked_before_the_body_arrives(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
        b"Content-Length: 100000\r\n\r\n{"
    )  # 99,999 bytes of the body never sent
    t0 = time.monotonic()
    assert s.recv(4096).startswith(b"HTTP/1.1 401")
    assert time.monotonic() - t0 < DEADLINE_S  # answered without waiting for the body
    s.close()
    status, text, _ = Conn(server.port).send(get("/metrics", extra=b"")).response()
    assert status == 401  # metrics need the key too


def test_metrics_labels_are_a_fixed_set(server):
    c = Conn(server.port)

    def scrape() -> str:
        status, text, _ = c.send(get("/metrics")).response()
        assert status == 200
        return text.decode()

    before = scrape()
    for i in range(150):
        c.send(get(f"/random/{i}?q={i}")).response()
        c.send(get('/a"b\\c')).response()
    after = scrape()
    families = {f.name: f for f in text_string_to_metric_families(after)}  # valid exposition
    series = lambda t: {ln.split(" ")[0] for ln in t.splitlines() if ln[:1] != "#"}  # noqa: E731
    grown = series(after) - series(before)
    assert all('route="other"' in s or 'route="/metrics"' in s for s in grown), grown
    routes = {s.labels["route"] for s in families["zen_requests"].samples}
    assert routes <= {"other", "/metrics", "/v1/completions", "/infill", "/v1/models", "/health"}
    assert not hasattr(server.scheduler, "ttft")  # no per-request list kept
    ttft = families["zen_time_to_first_token_seconds"]
    assert any(s.name.endswith("_count") and s.value >= 1 for s in ttft.samples)
    c.close()


def test_connect_burst_is_accepted_at_once(server):
    """100 simultaneous connects: none waits for a SYN retry (the old backlog of 5 made
    86 of 100 wait ~1 s), and every one is answered."""
    socks, connect_s = [], []
    for _ in range(100):
        t = time.monotonic()
        socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=30))
        connect_s.append(time.monotonic() - t)
    for s in socks:
        s.sendall(get("/health", extra=b""))
    for s in socks:
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.close()
    assert max(connect_s) < 0.9, max(connect_s)


def test_connection_cap_answers_503(server):
    """Past `max_connections`, a request is answered 503 (not queued without bound)."""
    eng = server.engine
    sch = Scheduler(server.decoder, eng.tokenizer, eng.stop_ids)  # never given work
    srv = CompletionServer(eng, sch, port=0, connections=ConnectionLimits(max_connections=4))
    srv.start()
    try:
        held = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
        wait_until(lambda: len(open_connections(srv)) == 3)
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        s.sendall(get("/health", extra=b""))
        assert s.recv(4096).startswith(b"HTTP/1.1 503")
        for h in held + [s]:
            h.close()
        wait_until(lambda: not open_connections(srv))
        status, _, _ = Conn(srv.port).send(get("/health", extra=b"")).response()
        assert status == 200  # the cap counts open connections only
    finally:
        srv.shutdown()


def test_stream_disconnects_leak_no_slot(server):
    sch = server.scheduler
    body = json.dumps({"prompt": "def f(x):", "max_tokens": 32, "stream": True}).encode()
    for _ in range(30):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        s.sendall(post("/v1/completions", body))
        buf = b""
        while b"data: " not in buf:
            got = s.recv(4096)
            assert got
            buf += got
        s.close()
    wait_until(lambda: not (sch.busy_slots or sch.queue_depth or server.jobs))
    assert sch.busy_slots == 0 and sch.queue_depth == 0 and not server.jobs
