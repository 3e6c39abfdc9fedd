"""The OpenAI-compatible completions server, over real HTTP on 127.0.0.1.

Responses are checked against the engine called directly (the server must add nothing but
transport): plain completions, FIM by `suffix` and by spelled sentinels, n/seed, stop
strings, streaming, concurrent batching, and 400s that name the fix.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from zen_code_jax.infer.__main__ import build_server, parse_args
from zen_code_jax.infer.server import CompletionServer, RequestError, parse_fim_prompt

MAX_TOKENS = 12  # every request stays in the (batch 4, prompt 16, new 16) buckets


@pytest.fixture(scope="module")
def server():
    srv = build_server(
        [
            "--random_preset=tiny",
            "--port=0",
            "--max_batch_size=4",
            "--min_batch_bucket=4",  # one batch bucket for every request: one compile
            "--max_tokens_limit=64",
        ]
    )
    srv.batch_window_s = 0.5  # concurrent test requests reliably share a batch
    srv.start()
    yield srv
    srv.shutdown()


def call(srv: CompletionServer, path: str, body=None, raw: bytes | None = None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(srv.url + path, data=data, method="POST" if data else "GET")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            payload = r.read().decode()
            return r.status, (payload if path.endswith("stream") else json.loads(payload))
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def complete(srv, **body):
    return call(srv, "/v1/completions", {"model": "zen-code", "max_tokens": MAX_TOKENS, **body})


def test_completion_shape_and_greedy_text(server):
    eng = server.engine
    status, r = complete(server, prompt="def add(a, b):", temperature=0)
    assert status == 200
    assert r["object"] == "text_completion" and r["id"].startswith("cmpl-")
    assert isinstance(r["created"], int) and r["model"] == "zen-code"
    (choice,) = r["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] in ("stop", "length")
    assert choice["text"] == eng.generate(["def add(a, b):"], max_new_tokens=MAX_TOKENS)[0]
    usage = r["usage"]
    assert usage["prompt_tokens"] == len(eng.tokenizer.encode("def add(a, b):"))
    assert 0 < usage["completion_tokens"] <= MAX_TOKENS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_list_prompt_n_seed_and_stop(server):
    body = dict(prompt=["import json\n", "class A:"], n=2, temperature=1.0, top_p=0.9, seed=11)
    s1, a = complete(server, **body)
    s2, b = complete(server, **body)
    assert s1 == s2 == 200
    assert [c["index"] for c in a["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
    assert a["choices"][0]["text"] != a["choices"][1]["text"]  # samples of one prompt differ
    assert a["usage"]["prompt_tokens"] == sum(
        len(server.engine.tokenizer.encode(p)) for p in body["prompt"]
    )
    text = a["choices"][0]["text"]
    stop = text[2:4]
    _, c = complete(server, **body, stop=stop)
    assert c["choices"][0]["text"] == text[: text.find(stop)]
    assert c["choices"][0]["finish_reason"] == "stop"


def test_fim_by_suffix_and_by_spelled_sentinels(server):
    eng = server.engine
    prefix, suffix = "def f(a):\n ", "\n return r\n"  # prompt <= 16 tokens
    want = eng.infill([prefix], [suffix], max_new_tokens=MAX_TOKENS)[0]
    _, by_suffix = complete(server, prompt=prefix, suffix=suffix, temperature=0)
    spelled = f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
    _, by_text = complete(server, prompt=spelled, temperature=0)
    assert by_suffix["choices"][0]["text"] == want == by_text["choices"][0]["text"]
    assert by_text["usage"]["prompt_tokens"] == len(eng.fim_prompt_ids(prefix, suffix, "psm"))
    want_spm = eng.infill([prefix], [suffix], mode="spm", max_new_tokens=MAX_TOKENS)[0]
    _, spm = complete(
        server, prompt=f"<|fim_prefix|><|fim_suffix|>{suffix}<|fim_middle|>{prefix}", temperature=0
    )
    assert spm["choices"][0]["text"] == want_spm


def test_parse_fim_prompt():
    assert parse_fim_prompt("plain <| text") is None
    assert parse_fim_prompt("<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>") == ("P", "S", "psm", "")
    assert parse_fim_prompt("<|fim_prefix|><|fim_suffix|>S<|fim_middle|>P") == ("P", "S", "spm", "")
    # The report's repository listing: context, then the target prefix, no <|fim_prefix|>.
    ctx = "# File: a.py\nx = 1\n# File: b.py\n"
    assert parse_fim_prompt(f"{ctx}y<|fim_suffix|>z<|fim_middle|>") == (ctx + "y", "z", "psm", "")
    assert parse_fim_prompt("<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>M") == (
        "P",
        "S",
        "psm",
        "M",
    )
    for bad in ("<|fim_prefix|>P<|fim_suffix|>S", "P<|fim_middle|>S<|fim_suffix|>"):
        with pytest.raises(RequestError, match="Spell FIM prompts as"):
            parse_fim_prompt(bad)


def test_stream_models_health_and_routes(server):
    req = urllib.request.Request(
        server.url + "/v1/completions",
        data=json.dumps({"prompt": "x = ", "max_tokens": 4, "stream": True, "n": 2}).encode(),
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and len(events) == 3
    chunk = json.loads(events[0][len("data: ") :])
    assert chunk["object"] == "text_completion" and chunk["choices"][0]["index"] == 0
    status, models = call(server, "/v1/models")
    assert status == 200 and models["data"][0]["id"] == server.model_name
    status, health = call(server, "/health")
    assert status == 200 and health["status"] == "ok" and health["vocab_size"] == 512
    status, err = call(server, "/v2/nothing")
    assert status == 404 and "/v1/completions" in err["error"]["message"]


@pytest.mark.parametrize(
    "body,needle",
    [
        (b"{not json", "not valid JSON"),
        ({"max_tokens": 4}, "Missing required field `prompt`"),
        ({"prompt": 5}, "`prompt` must be a string"),
        ({"prompt": "x", "max_tokens": "ten"}, "`max_tokens` must be an integer"),
        ({"prompt": "x", "max_tokens": 65}, "exceeds this server's limit of 64"),
        ({"prompt": "x", "temperature": 3}, "`temperature` must be a number in [0, 2]"),
        ({"prompt": "x", "stop": [1]}, "`stop` must be a string or a list"),
        ({"prompt": "x", "n": 0}, "`n` must be an integer"),
        ({"prompt": "<|fim_suffix|>a<|fim_suffix|>b<|fim_middle|>"}, "Malformed FIM prompt"),
        ({"prompt": "x " * 3000, "max_tokens": 64}, "more than the model's context"),
    ],
)
def test_malformed_requests_are_400_with_the_fix(server, body, needle):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, err = call(server, "/v1/completions", raw=raw)
    assert status == 400, err
    assert needle in err["error"]["message"]
    assert err["error"]["type"] == "invalid_request_error"


def test_unknown_fields_ignored_and_concurrent_requests_batched(server):
    prompts = ["def a():", "def b():\n", "x = [", "import os"]
    want = server.engine.generate(prompts, max_new_tokens=MAX_TOKENS)
    before = server.batches_run
    results: dict[int, dict] = {}

    def worker(i: int) -> None:
        results[i] = complete(
            server, prompt=prompts[i], temperature=0, user="ide", frequency_penalty=0
        )

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(results[i][0] == 200 for i in range(len(prompts)))
    assert [results[i][1]["choices"][0]["text"] for i in range(len(prompts))] == want
    assert server.batches_run - before < len(prompts)  # concurrent requests shared a batch


def test_cli_speaks_the_project_vocabulary():
    """--run_dir is one run; multi-word flags use underscores (as experiments/run.py)."""
    a = parse_args(["--run_dir=W/exp/arm", "--max_batch_size=2", "--batch_window_ms=5"])
    assert (a.run_dir, a.max_batch_size, a.batch_window_ms) == ("W/exp/arm", 2, 5.0)
    assert parse_args(["--random_preset=tiny"]).random_preset == "tiny"
    for old in (["--random-preset=tiny"], ["--workdir=W/exp/arm"]):
        with pytest.raises(SystemExit):
            parse_args(old)
