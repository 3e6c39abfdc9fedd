"""llama.cpp `/infill` as llama.vim and llama.vscode use it, over real HTTP on 127.0.0.1.

llama.vim's request body is replayed as its source (autoload/llama.vim, `llama#fim`)
builds it, and the reply is checked with llama.vim's own acceptance test (the reply must
start with `{` and match `"content"\\s*:"`) and the flattened `response_fields` keys it
reads. Decoded tokens are checked against the no-cache reference decoder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from reference_decode import reference_decode
from test_server import KEY, raw, ref

from zen_code_jax.infer.__main__ import build_server
from zen_code_jax.infer.request import indent_cut

# llama.vim (autoload/llama.vim, s:fim_on_response): a reply is used only if it matches both.
LLAMA_VIM_ACCEPT = (re.compile(r"^\s*{"), re.compile(r'"content"\s*:"'))
TIMINGS = (
    "prompt_n",
    "prompt_ms",
    "prompt_per_token_ms",
    "prompt_per_second",
    "predicted_n",
    "predicted_ms",
    "predicted_per_token_ms",
    "predicted_per_second",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = build_server(
        [
            "--random_preset=tiny",
            "--port=0",
            "--max_batch_size=2",
            "--max_context=256",
            "--prefill_chunk=32",
            "--max_tokens_limit=64",
            f"--api_key={KEY}",
            f"--compilation_cache_dir={tmp_path_factory.mktemp('jax_cache')}",
        ]
    )
    srv.start()
    yield srv
    srv.shutdown()


def llama_vim_body(prefix: str, middle: str, suffix: str, indent: int) -> dict:
    """The body llama.vim's `llama#fim` sends with its default config (n_predict 128,
    stop_strings [], t_max_prompt_ms 500, t_max_predict_ms 250 on a first request; `model`
    is always set, to model_fim's default "")."""
    extra = [
        {"text": "import os\nimport sys\n", "time": 1733580000.0, "filename": "util.py"},
        {"text": "X = 3\nY = 4\n", "time": 1733580001.0, "filename": "lib.py"},
    ]
    return {
        "id_slot": 0,
        "input_prefix": prefix,
        "input_suffix": suffix,
        "input_extra": extra,
        "prompt": middle,
        "n_predict": 128,
        "stop": [],
        "n_indent": indent,
        "top_k": 40,
        "top_p": 0.90,
        "samplers": ["top_k", "top_p", "infill"],
        "stream": False,
        "cache_prompt": True,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 250,
        "response_fields": [
            "content",
            "timings/prompt_n",
            "timings/prompt_ms",
            "timings/prompt_per_token_ms",
            "timings/prompt_per_second",
            "timings/predicted_n",
            "timings/predicted_ms",
            "timings/predicted_per_token_ms",
            "timings/predicted_per_second",
            "truncated",
            "tokens_cached",
        ],
        "model": "",
    }


def post(server, body):
    status, text, _ = raw(server, "POST", "/infill", body)
    return status, text


def test_llama_vim_request_replayed_and_accepted(server):
    eng = server.engine
    body = llama_vim_body("def g(a):\n", "    ", "\n\nprint(g(1))\n", 4)
    status, text = post(server, body)
    assert status == 200, text
    assert all(r.search(text) for r in LLAMA_VIM_ACCEPT), text[:200]
    got = json.loads(text)
    assert set(got) == set(body["response_fields"])  # only those, under their paths
    ctx = [(f["filename"], f["text"]) for f in body["input_extra"]]
    ids = eng.fim_prompt_ids("def g(a):\n    ", "\n\nprint(g(1))\n", "psm", context=ctx)
    want = ref(server, ids, 64)
    # greedy (no temperature); the n_indent rule or the time budget may end it earlier
    assert want.text.startswith(got["content"])
    assert got["timings/prompt_n"] + got["tokens_cached"] == len(ids)
    assert got["timings/prompt_ms"] > 0 and got["timings/prompt_per_second"] > 0
    assert got["truncated"] is False
    # the same request again: its prompt is reused from the slot's cache (cache_prompt)
    full = {k: v for k, v in body.items() if k != "response_fields"}
    status, text = post(server, full)
    again = json.loads(text)
    assert status == 200 and again["tokens_cached"] == len(ids) - 1
    assert again["timings"]["prompt_n"] == 1 and again["tokens_evaluated"] == len(ids)
    n = len(again["tokens"])
    assert again["tokens"] == want.token_ids[:n] and want.text.startswith(again["content"])
    assert again["timings"]["predicted_n"] >= n == again["tokens_predicted"]
    assert set(again["timings"]) == set(TIMINGS) and again["stop_type"] in ("eos", "limit")


def test_llama_vim_cache_warming_request(server):
    """llama.vim's ring-buffer request: n_predict 0, response_fields [""], samplers []."""
    body = {
        "id_slot": 0,
        "input_prefix": "",
        "input_suffix": "",
        "input_extra": [{"text": "def h():\n    pass\n", "time": 1.0, "filename": "a.py"}],
        "prompt": "",
        "n_predict": 0,
        "temperature": 0.0,
        "samplers": [],
        "stream": False,
        "cache_prompt": True,
        "t_max_prompt_ms": 1,
        "t_max_predict_ms": 1,
        "response_fields": [""],
        "model": "",
    }
    status, text = post(server, body)
    assert status == 200 and json.loads(text) == {}


def test_model_empty_or_missing_is_the_default(server):
    body = {"input_prefix": "x = ", "n_predict": 2}
    for extra in ({}, {"model": ""}, {"model": server.model_name}):
        status, text = post(server, {**body, **extra})
        assert status == 200, text
    status, text = post(server, {**body, "model": "other"})
    assert status == 404 and json.loads(text)["error"]["code"] == "model_not_found"


def test_every_json_reply_is_compact(server):
    cases = [
        ("POST", "/infill", {"input_prefix": "def f():\n", "n_predict": 4}),
        ("POST", "/v1/completions", {"prompt": "def f():", "max_tokens": 4}),
        ("GET", "/v1/models", None),
        ("POST", "/infill", {"n_predict": "x"}),  # an error body
    ]
    for method, path, body in cases:
        _, text, _ = raw(server, method, path, body)
        assert text == json.dumps(json.loads(text), separators=(",", ":")), text[:120]


def test_reply_fields_eos_limit_word_and_tokens(server):
    eng = server.engine
    prefix = "import json\nclass Foo:\n    def bar(self, x):\n        return x + "
    ids = eng.fim_prompt_ids(prefix, "", "psm")
    want = ref(server, ids, 40)
    status, text = post(server, {"input_prefix": prefix, "n_predict": 40})
    got = json.loads(text)
    assert status == 200 and got["tokens"] == want.token_ids and got["content"] == want.text
    expect = "limit" if want.finish_reason == "length" else "eos"
    assert got["stop_type"] == expect and got["stopping_word"] == ""
    assert got["timings"]["predicted_n"] == len(want.token_ids)
    assert len(want.text) > 12, "the fixture prompt must give a long greedy completion"
    stop = want.text[8:11]
    status, text = post(server, {"input_prefix": prefix, "n_predict": 40, "stop": [stop, "@@@"]})
    got = json.loads(text)
    assert got["stop_type"] == "word" and got["stopping_word"] == stop
    assert got["content"] == want.text[: want.text.find(stop)]
    assert want.token_ids[: len(got["tokens"])] == got["tokens"]


def test_n_predict_minus_one_runs_to_the_context(server):
    eng = server.engine
    prefix = "import json\nclass Foo:\n    def bar(self, x):\n        return x + "
    ids = eng.fim_prompt_ids(prefix, "", "psm")
    status, text = post(server, {"input_prefix": prefix, "n_predict": -1, "temperature": 1.0})
    got = json.loads(text)
    assert status == 200, text
    n = got["timings"]["predicted_n"]
    if got["stop_type"] == "eos":
        assert got["truncated"] is False and len(ids) + n < server.decoder.max_len
    else:  # not capped at 16 or at --max_tokens_limit=64: it ran to the end of the context
        assert got["truncated"] is True and len(ids) + n == server.decoder.max_len
    assert n > 64 or got["stop_type"] == "eos"


def test_prompt_time_budget_stops_before_generating(server):
    body = {"input_prefix": "def f(a):\n    ", "n_predict": 16, "t_max_prompt_ms": 0.001}
    status, text = post(server, body)
    got = json.loads(text)
    assert status == 200 and got["stop_type"] == "limit"
    assert got["content"] == "" and got["tokens"] == [] and got["timings"]["predicted_n"] == 0


def test_indent_cut_is_llama_cpp_rule():
    assert indent_cut("x = 1\n    y\n", 4) == -1
    text = "a\n    b\n  c\n"
    assert text[: indent_cut(text, 4)] == "a\n    b\n  "
    assert indent_cut("    a\n", 8) == -1  # the first line is never cut
    assert indent_cut("a\n\nb", 1) == 2  # a blank line ends it (as llama.cpp)
    assert indent_cut("a\n  ", 4) == -1  # undecided until the line's first character
    assert indent_cut("a\nb", 0) == -1  # 0: off


def sampled_refs(server, ids, max_new, seeds):
    """The reference's sampled completions (temperature 1, sample_index 0) per seed."""
    eng = server.engine
    done = reference_decode(
        eng.params,
        eng.model_cfg,
        [list(ids)] * len(seeds),
        max_new,
        temperature=1.0,
        seeds=list(seeds),
        sample_index=[0] * len(seeds),
        stop_ids=eng.stop_ids,
        length=128 * -(-(len(ids) + max_new) // 128),
    )
    return [(eng.tokenizer.decode(t), list(t)) for t, _ in done]


def test_n_indent_and_predict_budget_end_where_llama_cpp_does(server):
    """Seeds whose reference sample has a newline (a random model rarely writes one):
    n_indent cuts the reply where the reference dedents; a tiny t_max_predict_ms stops
    at the first token that completes a newline."""
    eng = server.engine
    prefix = "x = [\n"
    ids = eng.fim_prompt_ids(prefix, "", "psm")
    samples = sampled_refs(server, ids, 40, range(16))
    with_nl = [(s, t, toks) for s, (t, toks) in enumerate(samples) if "\n" in t]
    assert with_nl, "the fixture must give some sample with a newline"
    cuts = 0
    for seed, text, toks in with_nl[:3]:
        for n_indent in (1, 4):
            body = {"input_prefix": prefix, "n_predict": 40, "n_indent": n_indent}
            status, raw_text = post(server, {**body, "temperature": 1.0, "seed": seed})
            got = json.loads(raw_text)
            cut = indent_cut(text, n_indent)
            assert status == 200 and indent_cut(got["content"], n_indent) == -1
            if cut >= 0:
                cuts += 1
                assert got["content"] == text[:cut] and got["stop_type"] == "limit"
            else:
                assert got["content"] == text and got["tokens"] == toks
        body = {"input_prefix": prefix, "n_predict": 40, "t_max_predict_ms": 0.001}
        status, raw_text = post(server, {**body, "temperature": 1.0, "seed": seed})
        got = json.loads(raw_text)
        first_nl = next(
            k for k in range(1, len(toks) + 1) if "\n" in eng.tokenizer.decode(toks[:k])
        )
        assert status == 200 and got["tokens"] == toks[:first_nl]
        if first_nl < len(toks):  # stopped by the budget, not by its length
            assert got["stop_type"] == "limit" and "\n" in got["content"]
    assert cuts, "no sample dedented: the n_indent check never ran"


@pytest.mark.parametrize(
    "body,param",
    [
        ({"samplers": ["top_k", "nope"]}, "samplers"),
        ({"top_k": -1}, "top_k"),
        ({"n_indent": "4"}, "n_indent"),
        ({"t_max_predict_ms": -5}, "t_max_predict_ms"),
        ({"n_predict": -2}, "n_predict"),
        ({"response_fields": "content"}, "response_fields"),
        ({"cache_prompt": 1}, "cache_prompt"),
        ({"id_slot": "0"}, "id_slot"),
    ],
)
def test_bad_llama_fields_are_400(server, body, param):
    status, text = post(server, {"input_prefix": "x", **body})
    assert status == 400 and json.loads(text)["error"]["param"] == param


def test_documented_continue_template_gives_the_training_prompt(server):
    """The Continue template in docs/serving.md, rendered, is parsed as FIM: its prompt is
    the engine's training layout (sentinel ids), not sentinels spelled as text."""
    doc = (Path(__file__).parents[1] / "docs" / "serving.md").read_text()
    template = re.search(r'promptTemplate: "([^"]+)"', doc).group(1)
    assert "'endpoint_fim'" in doc and "{'endpoint'" not in doc
    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    prompt = template.replace("{{{prefix}}}", prefix).replace("{{{suffix}}}", suffix)
    parsed = server.parser.completion({"prompt": prompt, "max_tokens": 0})
    want = list(server.engine.fim_prompt_ids(prefix, suffix, "psm"))
    assert parsed.requests[0].prompt_ids == want
    as_text = server.engine._encode_prompt(prompt)
    assert len(want) < len(as_text)
