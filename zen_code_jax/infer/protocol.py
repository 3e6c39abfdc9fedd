"""Request parsing for the completions server: OpenAI `/v1/completions` and llama.cpp
`/infill` bodies in, `CompletionRequest`s (one per row) out, every client mistake an `APIError` in OpenAI's
error shape (with the `code` clients switch on, e.g. `context_length_exceeded`).

FIM. A request is an infill when it carries `suffix` (OpenAI's insert mode: prompt =
prefix), repository `context`/`path` (our extension), or when sentinels are asked for:
`"fim": true`, or a prompt whose very first characters are a sentinel (the report's
`<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>`). Sentinel spellings anywhere
else are ordinary code (this repository's own source spells them) and are encoded as text.
Prompts are built by the engine's prompt builder (`InferenceEngine.fim_prompt_ids`), the
one owner of the training layout; this module never lays out a prompt itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from zen_code_jax.data.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from zen_code_jax.infer.request import CompletionRequest
from zen_code_jax.infer.slots import TOP_LOGPROBS

SENTINELS = (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)


class APIError(Exception):
    """A client-visible error: HTTP status plus OpenAI's {"error": {...}} body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": str(self),
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def RequestError(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:  # noqa: N802
    """A 400 (the old name, kept for callers)."""
    return APIError(400, message, param, code)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (the server's flags)."""

    max_prompt_tokens: int
    max_tokens: int = 1024
    max_rows: int = 16  # len(prompt) x n
    max_body_bytes: int = 4 * 1024 * 1024
    read_timeout_s: float = 10.0


@dataclass
class Parsed:
    """A validated request: rows to decode plus what the response needs."""

    requests: list[CompletionRequest]  # one per row (prompt x n)
    echo_texts: list[str]
    opts: dict[str, Any]


def parse_fim_prompt(prompt: str) -> tuple[str, str, str, str] | None:
    """(prefix, suffix, mode, started_middle) from a prompt spelling the FIM sentinels.

    None when the prompt has no sentinel spelling; APIError when it has some but not the
    `...<|fim_suffix|>{suffix}<|fim_middle|>` skeleton.
    """
    if not any(s in prompt for s in SENTINELS):
        return None
    fmt = (
        "Spell FIM prompts as '<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>' "
        "(PSM) or '<|fim_prefix|><|fim_suffix|>{suffix}<|fim_middle|>{prefix}' (SPM), each "
        "sentinel once, or send the prefix as `prompt` and the suffix as `suffix`."
    )
    counts = {s: prompt.count(s) for s in SENTINELS}
    if counts[FIM_SUFFIX] != 1 or counts[FIM_MIDDLE] != 1 or counts[FIM_PREFIX] > 1:
        raise RequestError(f"Malformed FIM prompt (sentinel counts {counts}). {fmt}", "prompt")
    i_s, i_m = prompt.index(FIM_SUFFIX), prompt.index(FIM_MIDDLE)
    if i_m < i_s or (FIM_PREFIX in prompt and prompt.index(FIM_PREFIX) > i_s):
        raise RequestError(f"Malformed FIM prompt (sentinels out of order). {fmt}", "prompt")
    before = prompt[:i_s]
    suffix = prompt[i_s + len(FIM_SUFFIX) : i_m]
    after = prompt[i_m + len(FIM_MIDDLE) :]
    if FIM_PREFIX in before:
        if before.endswith(FIM_PREFIX) and after:  # <|fim_prefix|><|fim_suffix|>S<|fim_middle|>P
            return before[: -len(FIM_PREFIX)] + after, suffix, "spm", ""
        k = before.index(FIM_PREFIX)
        before = before[:k] + before[k + len(FIM_PREFIX) :]
    return before, suffix, "psm", after


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


class _Body:
    def __init__(self, body: Any):
        if not isinstance(body, dict):
            raise RequestError(
                f"The request body must be a JSON object, got {type(body).__name__}; send "
                '{"prompt": "...", "max_tokens": 16}.'
            )
        self.d = body

    def get(self, name: str, default: Any, check, what: str) -> Any:
        v = self.d.get(name)
        if v is None:
            return default
        if not check(v):
            raise RequestError(f"`{name}` must be {what}, got {json.dumps(v)[:80]}.", name)
        return v


def _context(b: _Body) -> tuple[list[tuple[str, str]] | None, str | None]:
    """The repository-context extension: context=[{path, content}], path=target file."""

    def ok(v: Any) -> bool:
        return isinstance(v, list) and all(
            isinstance(f, dict)
            and isinstance(f.get("path"), str)
            and isinstance(f.get("content"), str)
            for f in v
        )

    ctx = b.get("context", None, ok, 'a list of {"path": str, "content": str} objects')
    path = b.get("path", None, lambda v: isinstance(v, str), "a string (the target file's path)")
    return ([(f["path"], f["content"]) for f in ctx] if ctx is not None else None), path


class RequestParser:
    """Turns bodies into rows with an engine's tokenizer and prompt builder."""

    def __init__(self, engine: Any, model_name: str, limits: Limits, max_len: int):
        self.engine, self.model_name, self.limits = engine, model_name, limits
        self.max_len = int(max_len)  # a slot's positions: prompt + completion must fit

    def check_model(self, b: _Body) -> None:
        model = b.d.get("model")
        if model not in (None, "", self.model_name):  # "" (llama.vim): the default model
            raise APIError(
                404,
                f"The model {model!r} does not exist on this server; it serves "
                f"{self.model_name!r} (GET /v1/models). Set `model` to that id or omit it.",
                "model",
                "model_not_found",
            )

    def sampling(self, b: _Body, max_key: str = "max_tokens") -> dict[str, Any]:
        lim = self.limits
        max_tokens = b.get(max_key, 16, lambda v: _is_int(v) and v >= 0, "an integer >= 0")
        if max_tokens > lim.max_tokens:
            raise RequestError(
                f"`{max_key}`={max_tokens} exceeds this server's limit of {lim.max_tokens}; "
                "lower it, or restart the server with a larger --max_tokens_limit.",
                max_key,
            )
        stop = b.get(
            "stop",
            [],
            lambda v: (
                isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))
            ),
            "a string or a list of strings",
        )
        stop = [stop] if isinstance(stop, str) else stop
        if len(stop) > 16:
            raise RequestError(f"At most 16 stop strings are supported, got {len(stop)}.", "stop")
        seed = b.get("seed", None, _is_int, "an integer")
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        return dict(
            max_new_tokens=max_tokens,
            temperature=float(
                b.get(
                    "temperature", 1.0, lambda v: _is_num(v) and 0 <= v <= 2, "a number in [0, 2]"
                )
            ),
            top_p=float(
                b.get("top_p", 1.0, lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]")
            ),
            seed=int(seed) & 0x7FFFFFFF,
            stop=tuple(s for s in stop if s),
            top_k=max(0, b.get("top_k", 0, _is_int, "an integer (<= 0: off)")),
        )

    def stream_opts(self, b: _Body) -> tuple[bool, bool]:
        stream = b.get("stream", False, lambda v: isinstance(v, bool), "true or false")
        so = b.get("stream_options", {}, lambda v: isinstance(v, dict), "an object")
        usage = so.get("include_usage", False)
        if not isinstance(usage, bool):
            raise RequestError(
                "`stream_options.include_usage` must be true or false.", "stream_options"
            )
        return stream, usage

    def check_length(self, ids: list[int], max_new: int) -> None:
        lim = self.limits
        if len(ids) > lim.max_prompt_tokens:
            raise APIError(
                400,
                f"The prompt has {len(ids)} tokens, more than this server's limit of "
                f"{lim.max_prompt_tokens}; send less context (trim the file around the cursor).",
                "prompt",
                "context_length_exceeded",
            )
        if len(ids) + max_new > self.max_len:
            raise APIError(
                400,
                f"The prompt has {len(ids)} tokens and max_tokens={max_new}: together more than "
                f"this server's context of {self.max_len} tokens. Shorten the prompt or lower "
                "max_tokens.",
                "max_tokens",
                "context_length_exceeded",
            )

    def fim_ids(self, prefix: str, suffix: str, mode: str, ctx, path) -> list[int]:
        return list(self.engine.fim_prompt_ids(prefix, suffix, mode, context=ctx, path=path))

    def completion(self, body: Any) -> Parsed:
        """Validate an OpenAI /v1/completions body."""
        b = _Body(body)
        self.check_model(b)
        if b.d.get("prompt") is None:
            raise RequestError(
                "Missing required field `prompt`; send the text to complete as a string "
                '(e.g. {"prompt": "def add(a, b):", "max_tokens": 32}).',
                "prompt",
                "missing_required_parameter",
            )
        prompts = _prompts(b.d["prompt"], self.engine.model_cfg.vocab_size)
        s = self.sampling(b)
        n = b.get("n", 1, lambda v: _is_int(v) and v >= 1, "an integer >= 1")
        if len(prompts) * n > self.limits.max_rows:
            raise APIError(
                400,
                f"{len(prompts)} prompts x n={n} = {len(prompts) * n} rows exceeds this server's "
                f"limit of {self.limits.max_rows} rows per request; send fewer prompts or a "
                "smaller n.",
                "n",
                "too_many_rows",
            )
        logprobs = b.get(
            "logprobs",
            None,
            lambda v: _is_int(v) and 0 <= v <= TOP_LOGPROBS,
            f"an integer in [0, {TOP_LOGPROBS}]",
        )
        if b.d.get("best_of") not in (None, n):
            raise RequestError("`best_of` is not supported; omit it or set it to n.", "best_of")
        echo = b.get("echo", False, lambda v: isinstance(v, bool), "true or false")
        suffix = b.get("suffix", None, lambda v: isinstance(v, str), "a string")
        fim_mode = b.get("fim_mode", "psm", lambda v: v in ("psm", "spm"), '"psm" or "spm"')
        fim_flag = b.get("fim", False, lambda v: isinstance(v, bool), "true or false")
        ctx, path = _context(b)
        stream, usage = self.stream_opts(b)
        eng = self.engine
        rows, echoes = [], []
        for p in prompts:
            if isinstance(p, list):
                if suffix is not None or ctx is not None or path is not None:
                    raise RequestError(
                        "Token-id prompts cannot be combined with `suffix`/`context`/`path`; "
                        "send the prefix as text.",
                        "prompt",
                    )
                ids, echo_text = list(p), eng.tokenizer.decode(p)
            else:
                echo_text = p
                fim = None
                if suffix is not None or ctx is not None or path is not None:
                    fim = (p, suffix or "", fim_mode, "")
                elif fim_flag or p.startswith((FIM_PREFIX, FIM_SUFFIX)):
                    fim = parse_fim_prompt(p)
                if fim is None:
                    ids = eng._encode_prompt(p)
                else:
                    prefix, suf, mode, started = fim
                    ids = self.fim_ids(prefix, suf, mode, ctx, path)
                    if started:
                        ids += eng.tokenizer.encode(started)
            self.check_length(ids, s["max_new_tokens"])
            echoes.append(echo_text)
            scored = echo and logprobs is not None
            rows += [
                CompletionRequest(list(ids), sample_index=j, prompt_logprobs=scored, **s)
                for j in range(n)
            ]
        opts = dict(stream=stream, include_usage=usage, echo=echo, n=n, logprobs=logprobs)
        return Parsed(rows, echoes, opts)

    def infill(self, body: Any) -> Parsed:
        """Validate a llama.cpp /infill body (input_prefix, input_suffix, input_extra, prompt)."""
        b = _Body(body)
        self.check_model(b)
        text = lambda v: isinstance(v, str)  # noqa: E731
        prefix = b.get("input_prefix", "", text, "a string")
        suffix = b.get("input_suffix", "", text, "a string")
        prompt = b.get("prompt", "", text, "a string")
        extra = b.get(
            "input_extra",
            [],
            lambda v: (
                isinstance(v, list)
                and all(isinstance(f, dict) and isinstance(f.get("text", ""), str) for f in v)
            ),
            'a list of {"filename": str, "text": str} objects',
        )
        ctx = [(str(f.get("filename", "")), f.get("text", "")) for f in extra] or None
        _, path = _context(b)
        n_predict = b.get(
            "n_predict", None, lambda v: _is_int(v) and v >= -1, "an integer >= -1 (-1: no cap)"
        )
        unlimited = n_predict == -1 and b.d.get("max_tokens") is None
        if n_predict is not None and n_predict > self.limits.max_tokens:
            n_predict = self.limits.max_tokens  # llama.cpp caps n_predict at its own limit
        if n_predict is not None and b.d.get("max_tokens") is None:
            b = _Body({**b.d, "max_tokens": None if unlimited else n_predict})
        s = self.sampling(b)
        ed = _editor_opts(b)
        if "temperature" not in b.d or ed["top_k"] == 1:
            s["temperature"] = 0.0  # llama.vim / llama.vscode expect greedy by default
        if ed["samplers"] is not None and "top_p" not in ed["samplers"]:
            s["top_p"] = 1.0  # a sampler left out of the chain does not apply
        stream, _ = self.stream_opts(b)
        ids = self.fim_ids(prefix + prompt, suffix, "psm", ctx, path)
        if unlimited:  # n_predict -1: up to the end of the context
            self.check_length(ids, 0)
            s["max_new_tokens"] = max(0, self.max_len - len(ids))
        self.check_length(ids, s["max_new_tokens"])
        row = CompletionRequest(
            ids,
            n_indent=ed["n_indent"],
            t_max_prompt_ms=ed["t_max_prompt_ms"],
            t_max_predict_ms=ed["t_max_predict_ms"],
            samplers=None if ed["samplers"] is None else tuple(ed["samplers"]),
            **s,
        )
        opts = dict(stream=stream, n=1, response_fields=ed["response_fields"])
        return Parsed([row], [prefix + prompt], opts)


# llama.cpp's sampler names (`samplers`: the chain's order); the device sampler applies
# top_k, top_p, temperature and infill in the order given (sampling.py); the others are
# accepted and have no effect.
LLAMA_SAMPLERS = frozenset(
    "dry top_k typ_p typical_p top_p min_p xtc temperature infill penalties top_n_sigma".split()
)


def _editor_opts(b: _Body) -> dict[str, Any]:
    """llama.cpp /infill's editor fields (llama.vim and llama.vscode send them all)."""
    ms = lambda v: _is_num(v) and v >= 0  # noqa: E731
    strs = lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)  # noqa: E731
    samplers = b.get("samplers", None, strs, "a list of sampler names")
    bad = sorted(set(samplers or ()) - LLAMA_SAMPLERS)
    if bad:
        raise RequestError(
            f"Unknown sampler(s) {bad} in `samplers`; use names from {sorted(LLAMA_SAMPLERS)}.",
            "samplers",
        )
    b.get("cache_prompt", True, lambda v: isinstance(v, bool), "true or false")
    b.get("id_slot", -1, lambda v: _is_int(v) and v >= -1, "an integer >= -1")
    return dict(
        top_k=b.get("top_k", 0, lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: off)"),
        samplers=samplers,
        n_indent=b.get("n_indent", 0, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        t_max_prompt_ms=float(b.get("t_max_prompt_ms", 0, ms, "a number of ms >= 0 (0: off)")),
        t_max_predict_ms=float(b.get("t_max_predict_ms", 0, ms, "a number of ms >= 0 (0: off)")),
        response_fields=b.get(
            "response_fields", None, strs, 'a list of field paths ("timings/prompt_n")'
        ),
    )


def _prompts(prompt: Any, vocab: int) -> list[str | list[int]]:
    """A string, a list of strings, a token-id list, or a list of token-id lists."""

    def ids_ok(p: Any) -> bool:
        return isinstance(p, list) and bool(p) and all(_is_int(t) and 0 <= t < vocab for t in p)

    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if ids_ok(prompt):
            return [list(prompt)]
        if all(ids_ok(p) for p in prompt):
            return [list(p) for p in prompt]
    raise RequestError(
        "`prompt` must be a string, a non-empty list of strings, a list of token ids in "
        f"[0, {vocab}), or a list of such lists.",
        "prompt",
    )
