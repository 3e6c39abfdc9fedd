"""The completions server over real HTTP on 127.0.0.1, driven by the official `openai`
client (and raw sockets where a client would hide the behaviour).

Every decoded answer is checked against the no-cache reference decoder
(`reference_decode.py`: the model's training path every step, no slots, no scheduler), so
the slot engine, the scheduler and the transport must add nothing. Logprobs are checked
against teacher-forced scoring.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from reference_decode import reference_decode

from zen_code_jax.infer.__main__ import build_server, parse_args
from zen_code_jax.infer.protocol import parse_fim_prompt
from zen_code_jax.infer.scheduler import Scheduler
from zen_code_jax.infer.server import CompletionServer
from zen_code_jax.infer.slots import COMPILES

KEY = "test-key-123"
LONG = "import json\nclass Foo:\n    def bar(self, x):\n        return x + "  # no early EOS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = build_server(
        [
            "--random_preset=tiny",
            "--port=0",
            "--max_batch_size=4",
            "--max_context=256",
            "--prefill_chunk=16",
            "--max_tokens_limit=64",
            "--max_rows_per_request=6",
            "--max_body_bytes=65536",
            "--read_timeout_s=1.0",
            f"--api_key={KEY}",
            f"--compilation_cache_dir={tmp_path_factory.mktemp('jax_cache')}",
        ]
    )
    srv.start()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


REF_BUDGET = 64  # every reference decodes 64 tokens (one forward length per 128 tokens)


class Ref:
    def __init__(self, text, token_ids, finish_reason):
        self.text, self.token_ids, self.finish_reason = text, token_ids, finish_reason


def refs(server, prompt_ids, max_new, n=1, temperature=0.0, seed=0):
    """The no-cache reference's completions (independent of the slot engine). A row's
    first k tokens do not depend on its budget, so one 64-token decode answers every
    budget."""
    eng = server.engine
    prompts = [list(p) for p in prompt_ids for _ in range(n)]
    length = 128 * -(-(max(len(p) for p in prompts) + REF_BUDGET) // 128)
    done = reference_decode(
        eng.params,
        eng.model_cfg,
        prompts,
        REF_BUDGET,
        temperature=temperature,
        seeds=seed,
        sample_index=[j for _ in prompt_ids for j in range(n)],
        stop_ids=eng.stop_ids,
        length=length,
    )
    out = []
    for token_ids, _ in done:
        ids = token_ids[:max_new]
        reason = "length" if len(token_ids) >= max_new else "stop"
        out.append(Ref(eng.tokenizer.decode(ids), ids, reason))
    return out


def ref(server, prompt_ids, max_new, **kw):
    return refs(server, [prompt_ids], max_new, **kw)[0]


def raw(server, method, path, body=None, headers=None, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})}
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    return r.status, r.read().decode(), r


def test_completion_list_token_prompts_n_seed(server, client):
    eng = server.engine
    r = client.completions.create(
        model=server.model_name, prompt="def add(a, b):", max_tokens=12, temperature=0
    )
    want = ref(server, eng._encode_prompt("def add(a, b):"), 12)
    assert r.choices[0].text == want.text and r.choices[0].finish_reason == want.finish_reason
    assert r.usage.completion_tokens == len(want.token_ids)
    assert r.usage.prompt_tokens == len(eng._encode_prompt("def add(a, b):"))
    ids = eng._encode_prompt(LONG)
    r = client.completions.create(
        model=server.model_name, prompt=["x = 1", LONG], max_tokens=10, temperature=0
    )
    want = refs(server, [eng._encode_prompt("x = 1"), ids], 10)
    assert [c.text for c in r.choices] == [w.text for w in want]
    r2 = client.completions.create(
        model=server.model_name, prompt=ids, max_tokens=10, temperature=0
    )
    assert r2.choices[0].text == r.choices[1].text  # token-id prompt == its text
    r = client.completions.create(
        model=server.model_name, prompt=LONG, max_tokens=10, temperature=0.9, n=2, seed=7
    )
    want = refs(server, [ids], 10, n=2, temperature=0.9, seed=7)
    assert [c.text for c in r.choices] == [w.text for w in want]


def test_stop_strings_cut_and_usage_counts_kept_tokens(server, client):
    eng = server.engine
    ids = eng._encode_prompt(LONG)
    full = ref(server, ids, 40)
    assert len(full.text) > 12, "the fixture prompt must give a long greedy completion"
    stop = full.text[8:11]
    want_text = full.text[: full.text.find(stop)]
    for stream in (False, True):
        if stream:
            chunks = list(
                client.completions.create(
                    model=server.model_name,
                    prompt=LONG,
                    max_tokens=40,
                    temperature=0,
                    stop=[stop],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            usage = chunks[-1].usage
            assert not chunks[-1].choices  # the usage chunk comes last
        else:
            r = client.completions.create(
                model=server.model_name, prompt=LONG, max_tokens=40, temperature=0, stop=[stop]
            )
            text, usage = r.choices[0].text, r.usage
            assert r.choices[0].finish_reason == "stop"
        assert text == want_text and stop not in text
        kept = next(
            k
            for k in range(len(full.token_ids) + 1)
            if len(eng.tokenizer.decode(full.token_ids[:k])) >= len(want_text)
        )
        assert usage.completion_tokens == kept < 40


def test_stream_first_chunk_before_last_token_done_and_usage(server, client):
    stats = server.scheduler.stats
    stream = client.completions.create(
        model=server.model_name,
        prompt=LONG,
        max_tokens=48,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    seen_at_first, texts, usage = None, [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text and seen_at_first is None:
            seen_at_first = stats["generated_tokens"]
        texts += [c.text for c in chunk.choices]
        usage = chunk.usage or usage
    want = ref(server, server.engine._encode_prompt(LONG), 48)
    assert "".join(texts) == want.text
    assert usage.completion_tokens == len(want.token_ids)
    # First text reached us while the row still had tokens left to decode.
    assert seen_at_first is not None and seen_at_first < stats["generated_tokens"]
    status, body, _ = raw(
        server, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 4, "stream": True}
    )
    events = [e for e in body.split("\n\n") if e]
    assert status == 200 and events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_fim_only_when_asked_and_repository_context(server, client):
    eng = server.engine
    r = client.completions.create(
        model=server.model_name,
        prompt="def f(x):\n    ",
        suffix="\n    return y\n",
        max_tokens=8,
        temperature=0,
    )
    fim = eng.fim_prompt_ids("def f(x):\n    ", "\n    return y\n")
    assert r.choices[0].text == ref(server, fim, 8).text
    spelled = "<|fim_prefix|>def f(x):\n    <|fim_suffix|>\n    return y\n<|fim_middle|>"
    r2 = client.completions.create(
        model=server.model_name, prompt=spelled, max_tokens=8, temperature=0
    )
    assert r2.choices[0].text == r.choices[0].text
    code = 'FIM = "<|fim_suffix|>" + x  # <|fim_middle|>\n'  # ordinary code spelling them
    r3 = client.completions.create(
        model=server.model_name, prompt=code, max_tokens=8, temperature=0
    )
    assert r3.choices[0].text == ref(server, eng._encode_prompt(code), 8).text
    ctx = [{"path": "pkg/util.py", "content": "def helper():\n    return 1\n"}]
    r4 = client.completions.create(
        model=server.model_name,
        prompt="from pkg.util import helper\n",
        suffix="",
        max_tokens=8,
        temperature=0,
        extra_body={"context": ctx, "path": "pkg/main.py"},
    )
    ids = eng.fim_prompt_ids(
        "from pkg.util import helper\n",
        "",
        "psm",
        context=[("pkg/util.py", ctx[0]["content"])],
        path="pkg/main.py",
    )
    assert r4.choices[0].text == ref(server, ids, 8).text
    assert r4.usage.prompt_tokens == len(ids)


def test_infill_llama_cpp_raw_http(server):
    eng = server.engine
    body = {
        "input_prefix": "def g(a):\n",
        "prompt": "    ",
        "input_suffix": "\n",
        "input_extra": [{"filename": "lib.py", "text": "X = 3\n"}],
        "n_predict": 8,
    }
    status, text, _ = raw(server, "POST", "/infill", body)
    got = json.loads(text)
    ids = eng.fim_prompt_ids("def g(a):\n    ", "\n", "psm", context=[("lib.py", "X = 3\n")])
    want = ref(server, ids, 8)
    assert status == 200 and got["content"] == want.text and got["stop"] is True
    assert got["tokens_predicted"] == len(want.token_ids)
    status, text, _ = raw(server, "POST", "/infill", {**body, "stream": True})
    msgs = [json.loads(e[6:]) for e in text.split("\n\n") if e]
    assert "".join(m["content"] for m in msgs) == want.text and msgs[-1]["stop"] is True


def test_logprobs_match_teacher_forced_scoring(server, client):
    eng = server.engine
    ids = eng._encode_prompt(LONG)
    r = client.completions.create(
        model=server.model_name, prompt=LONG, max_tokens=6, temperature=0, logprobs=3
    )
    lp = r.choices[0].logprobs
    out = ref(server, ids, 6).token_ids
    want = eng.token_logprobs([ids], [out])[0]
    assert lp.tokens == [eng.tokenizer.decode([t]) for t in out]
    assert lp.token_logprobs == pytest.approx(want.tolist(), abs=2e-4)
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) <= 3 and max(top.values()) == pytest.approx(chosen, abs=1e-6)  # greedy


def test_echo_with_logprobs_scores_the_prompt(server, client):
    """OpenAI's scoring call (lm-evaluation-harness: echo, logprobs, max_tokens=0): the
    prompt's tokens with their teacher-forced log-probabilities, across prefill chunks and
    never from a reused prefix; with max_tokens > 0 the completion's follow."""
    eng = server.engine
    ids = eng._encode_prompt(LONG)
    assert len(ids) > 16  # more than one prefill chunk (--prefill_chunk=16)
    want = eng.token_logprobs([ids[:1]], [ids[1:]])[0]
    for _ in range(2):  # the second request finds the prompt cached: still scored in full
        r = client.completions.create(
            model=server.model_name, prompt=LONG, max_tokens=0, echo=True, logprobs=2
        )
        c = r.choices[0]
        assert c.text == LONG and c.finish_reason == "length"
        assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens == len(ids)
        lp = c.logprobs
        assert lp.tokens == [eng.tokenizer.decode([t]) for t in ids]
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert lp.token_logprobs[1:] == pytest.approx(want.tolist(), abs=2e-4)
        # (ids decoding to one string share a key, hence <=)
        for chosen, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]):
            assert 1 <= len(top) <= 2 and max(top.values()) >= chosen - 1e-6
        assert lp.text_offset == [sum(len(t) for t in lp.tokens[:j]) for j in range(len(ids))]
    r = client.completions.create(
        model=server.model_name, prompt=LONG, max_tokens=3, temperature=0, echo=True, logprobs=1
    )
    out = ref(server, ids, 3)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == LONG + out.text
    assert lp.tokens == [eng.tokenizer.decode([t]) for t in ids + out.token_ids]
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(want.tolist(), abs=2e-4)
    gen = eng.token_logprobs([ids], [out.token_ids])[0]
    assert lp.token_logprobs[len(ids) :] == pytest.approx(gen.tolist(), abs=2e-4)
    # max_tokens=0 without echo: nothing generated, nothing counted.
    r = client.completions.create(model=server.model_name, prompt=LONG, max_tokens=0)
    assert r.choices[0].text == "" and r.usage.completion_tokens == 0


@pytest.mark.parametrize(
    "body,status,code",
    [
        ({"prompt": "x", "model": "gpt-4"}, 404, "model_not_found"),
        ({"prompt": ["a", "b"], "n": 4}, 400, "too_many_rows"),
        ({"prompt": "x " * 400}, 400, "context_length_exceeded"),
        ({"prompt": [5] * 220, "max_tokens": 60}, 400, "context_length_exceeded"),
        ({"prompt": "x", "max_tokens": 65}, 400, "invalid_value"),
        ({"prompt": "x", "logprobs": 6}, 400, "invalid_value"),
        ({"max_tokens": 3}, 400, "missing_required_parameter"),
    ],
)
def test_bad_requests_get_openai_errors(server, body, status, code):
    got, text, _ = raw(server, "POST", "/v1/completions", body)
    err = json.loads(text)["error"]
    assert got == status and err["code"] == code and err["message"]


def test_auth_json_body_limits_and_keepalive_after_404(server, client):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=server.model_name, prompt="x", max_tokens=2)
    assert server.authorized(f"Bearer {KEY}") and not server.authorized(None)
    status, text, _ = raw(server, "POST", "/v1/completions", b"{not json")
    assert status == 400 and json.loads(text)["error"]["code"] == "invalid_json"
    status, text, _ = raw(server, "POST", "/v1/completions", b"x" * 70000)
    assert status == 413
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    status, text, _ = raw(
        server,
        "POST",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}]},
        conn=conn,
    )
    assert status == 404 and "/v1/completions" in json.loads(text)["error"]["message"]
    status, text, _ = raw(
        server, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2}, conn=conn
    )  # same keep-alive connection
    assert status == 200 and json.loads(text)["object"] == "text_completion"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model=server.model_name, messages=[{"role": "user", "content": "hi"}]
        )
    old, server.scheduler.max_queue = server.scheduler.max_queue, 0
    try:
        status, text, resp = raw(server, "POST", "/v1/completions", {"prompt": "x"})
        assert status == 429 and resp.getheader("Retry-After") == "1"
    finally:
        server.scheduler.max_queue = old


def test_stalled_upload_times_out_without_blocking_others(server, client):
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\nContent-Length: 500\r\n\r\n{"
    )
    t0 = time.monotonic()
    r = client.completions.create(model=server.model_name, prompt="x", max_tokens=2)
    assert r.choices  # served while the upload stalls
    s.settimeout(10)
    answer = s.recv(4096).decode()
    assert " 408 " in answer.splitlines()[0] and time.monotonic() - t0 < 5
    s.close()


def _stream_socket(server, body):
    s = socket.create_connection(("127.0.0.1", server.port))
    data = json.dumps(body).encode()
    s.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(data)).encode()
        + b"\r\n\r\n"
        + data
    )
    return s


def test_cancel_mid_stream_frees_slot_next_step_others_unaffected(server, client):
    sch = server.scheduler
    want = ref(server, server.engine._encode_prompt(LONG), 60)
    assert len(want.token_ids) == 60, "the fixture prompt must decode to its budget"
    results = {}

    def other():
        chunks = client.completions.create(
            model=server.model_name, prompt=LONG, max_tokens=60, temperature=0, stream=True
        )
        results["text"] = "".join(c.choices[0].text for c in chunks if c.choices)

    t = threading.Thread(target=other)
    t.start()
    s = _stream_socket(
        server, {"prompt": LONG + "y", "max_tokens": 60, "temperature": 0, "stream": True}
    )
    buf = b""
    while buf.count(b"data: ") < 3:
        buf += s.recv(4096)
    job = server.jobs[json.loads(buf.split(b"data: ")[1].split(b"\n\n")[0])["id"]]
    busy, cancelled = sch.busy_slots, sch.stats["cancelled_rows"]
    closed = time.monotonic()
    s.close()  # the IDE aborts: a disconnect is the cancel
    # The event loop notices the disconnect and cancels the job (HTTP latency, in time:
    # the scheduler thread keeps decoding meanwhile, so it is not counted in steps) ...
    while not job.cancelled.is_set() and time.monotonic() < closed + 10:
        time.sleep(0.0005)
    assert job.cancelled.is_set() and time.monotonic() - closed < 2.0
    step = sch.stats["decode_steps"]
    deadline = time.monotonic() + 10
    while sch.stats["cancelled_rows"] == cancelled and time.monotonic() < deadline:
        time.sleep(0.001)
    assert sch.stats["cancelled_rows"] == cancelled + 1
    # ... and the scheduler frees the slot by the step after the cancel.
    assert sch.stats["decode_steps"] - step <= 1
    t.join(timeout=60)
    assert results["text"] == want.text  # the other stream is unaffected
    assert busy >= 1
    # Explicit cancel by id: the stream ends with finish_reason "cancelled".
    s = _stream_socket(server, {"prompt": LONG, "max_tokens": 60, "temperature": 0, "stream": True})
    buf = b""
    while b"data: " not in buf:
        buf += s.recv(4096)
    cid = json.loads(buf.split(b"data: ")[1].split(b"\n\n")[0])["id"]
    status, text, _ = raw(server, "POST", "/v1/cancel", {"id": cid})
    assert status == 200 and json.loads(text)["cancelled"] is True
    s.settimeout(10)
    while b"[DONE]" not in buf:
        buf += s.recv(4096)
    assert b'"finish_reason":"cancelled"' in buf  # compact JSON (as llama.cpp writes it)
    s.close()


def test_prefix_reuse_and_no_compilation_after_start_up(server, client):
    """A request mix (lengths across prefill chunks, greedy/sampled, n, logprobs, streams,
    keystroke-extended prompts) compiles nothing on the scheduler after warm-up."""
    eng, st = server.engine, server.scheduler.stats
    before = COMPILES["scheduler"]
    base = LONG * 3
    client.completions.create(model=server.model_name, prompt=base, max_tokens=3, temperature=0)
    reused = st["prefix_reused_tokens"]
    r = client.completions.create(
        model=server.model_name, prompt=base + "z", max_tokens=5, temperature=0
    )
    assert st["prefix_reused_tokens"] - reused >= len(eng._encode_prompt(base)) - 2
    assert r.choices[0].text == ref(server, eng._encode_prompt(base + "z"), 5).text
    for i, (p, n, temp) in enumerate([("a", 1, 0), (LONG * 4, 2, 0.8), ("b" * 40, 3, 1.0)]):
        client.completions.create(
            model=server.model_name,
            prompt=p,
            max_tokens=5 + i,
            n=n,
            temperature=temp,
            top_p=0.9,
            logprobs=2,
        )
        list(
            client.completions.create(model=server.model_name, prompt=p, max_tokens=4, stream=True)
        )
    assert COMPILES["scheduler"] == before  # nothing compiled while serving these
    # ... nor since this server started (the counter is per process: other modules'
    # servers may have compiled on their own scheduler threads before this one existed).
    status, text, _ = raw(server, "GET", "/metrics")
    got = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert status == 200 and got["zen_compilations_since_start"] == 0
    assert got["zen_time_to_first_token_seconds_count"] >= 1 and "zen_slots_busy" in got
    status, text, _ = raw(server, "GET", "/v1/models")
    assert json.loads(text)["data"][0]["id"] == server.model_name
    assert json.loads(raw(server, "GET", "/health")[1])["status"] == "ok"


def test_parse_fim_prompt():
    assert parse_fim_prompt("plain code") is None
    assert parse_fim_prompt("<|fim_prefix|>A<|fim_suffix|>B<|fim_middle|>") == ("A", "B", "psm", "")
    assert parse_fim_prompt("<|fim_prefix|><|fim_suffix|>B<|fim_middle|>A") == ("A", "B", "spm", "")


def test_cli_speaks_the_project_vocabulary():
    a = parse_args(
        [
            "--run_dir=W/exp/arm",
            "--max_batch_size=2",
            "--api_key=k",
            "--step=3",
            "--mesh=tensor=2",
            "--continuous_batching=false",
        ]
    )
    assert (a.run_dir, a.max_batch_size, a.api_key, a.step) == ("W/exp/arm", 2, "k", 3)
    assert a.mesh == "tensor=2" and a.continuous_batching is False
    for old in (["--random-preset=tiny"], ["--workdir=W/exp/arm"]):
        with pytest.raises(SystemExit):
            parse_args(old)


def test_server_decodes_with_the_scheduler_it_is_given(server):
    """The decoding machinery is injected: a server built around another scheduler (here
    one that counts its turns, on a decoder of its own) decodes with it, and sizes its
    limits from that decoder."""

    class Counting(Scheduler):
        turns = 0

        def step(self) -> bool:
            Counting.turns += 1
            return super().step()

    eng = server.engine
    sch = Counting(eng.slot_decoder(128, chunk=16), eng.tokenizer, eng.stop_ids)
    srv = CompletionServer(eng, sch, port=0, api_key=KEY).start()
    try:
        body = {"prompt": "def add(a, b):", "max_tokens": 5, "temperature": 0}
        status, text, _ = raw(srv, "POST", "/v1/completions", body)
        assert status == 200
        want = ref(server, eng._encode_prompt("def add(a, b):"), 5).text
        assert json.loads(text)["choices"][0]["text"] == want
        assert Counting.turns >= 5  # one prefill turn and a turn per further token
        assert srv.decoder is sch.dec and srv.limits.max_prompt_tokens == 127
    finally:
        srv.shutdown()
