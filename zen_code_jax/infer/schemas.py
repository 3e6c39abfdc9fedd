"""Typed request and response shapes of the completions server (pydantic).

Requests: OpenAI's `/v1/completions` (plus our repository-context and FIM extensions) and
llama.cpp's `/infill` (every field llama.vim and llama.vscode send). A body is parsed and
type-checked here in one step (`parse_body`): the JSON parser (pydantic-core's jiter)
rejects what `json.loads` would turn into a 500 later (lone surrogates such as
`"\\ud83d"`, nesting deeper than 200 levels, invalid UTF-8), and every mistake becomes an
`APIError` in OpenAI's 400 shape with the offending field as `param` (never FastAPI's 422:
OpenAI clients switch on 400 `invalid_request_error`). What depends on the served model
(model name, token limits, prompt layout) stays in `protocol.RequestParser`, which reads
the validated body.

Models are strict (no "4" -> 4, no 1 -> true) and keep unknown fields (`extra="allow"`):
clients send fields this server does not use (`user`, `presence_penalty`, llama.vim's
`time` in `input_extra`), and those must not fail a request.

Responses: the shapes the handlers build (`Completion`, `InfillReply`, ...), serialized
compactly (no space after `:`; llama.vim accepts an `/infill` reply only if it matches
`"content"\\s*:"`).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zen_code_jax.infer.protocol import APIError
from zen_code_jax.infer.slots import TOP_LOGPROBS


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class StreamOptions(_Body):
    include_usage: bool | None = None


class ContextFile(_Body):
    """One repository file of the `context` extension."""

    path: str
    content: str


class CompletionBody(_Body):
    """OpenAI `POST /v1/completions`, plus `fim`, `fim_mode`, `context`, `path`."""

    prompt: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: int | None = Field(None, ge=0, le=TOP_LOGPROBS)
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    fim: bool | None = None
    fim_mode: Literal["psm", "spm"] | None = None
    context: list[ContextFile] | None = None
    path: str | None = None


class ExtraChunk(_Body):
    """llama.cpp's `input_extra` item (llama.vim adds `time`)."""

    text: str = ""
    filename: str = ""


class InfillBody(_Body):
    """llama.cpp `POST /infill`, as llama.vim and llama.vscode send it."""

    model: str | None = None
    input_prefix: str | None = None
    input_suffix: str | None = None
    prompt: str | None = None
    input_extra: list[ExtraChunk] | None = None
    path: str | None = None
    n_predict: int | None = Field(None, ge=-1)
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    samplers: list[str] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n_indent: int | None = Field(None, ge=0)
    t_max_prompt_ms: float | None = Field(None, ge=0)
    t_max_predict_ms: float | None = Field(None, ge=0)
    cache_prompt: bool | None = None
    id_slot: int | None = Field(None, ge=-1)
    response_fields: list[str] | None = None
    stream: bool | None = None


class CancelBody(_Body):
    """Our `POST /v1/cancel`: the id of a running completion."""

    id: str


B = TypeVar("B", bound=_Body)


def parse_body(model: type[B], raw: bytes) -> dict[str, Any]:
    """Parse and type-check `raw` as `model`; the fields the client set (unknown ones
    included), or APIError 400 naming the field."""
    try:
        return model.model_validate_json(raw).model_dump(exclude_unset=True)
    except ValidationError as e:
        raise _api_error(e, model) from None


def _api_error(e: ValidationError, model: type[_Body]) -> APIError:
    err = e.errors(include_url=False)[0]
    kind, loc = err["type"], [str(p) for p in err["loc"]]
    if kind == "json_invalid":
        return APIError(
            400,
            f"The request body is not valid JSON ({err['msg']}); send a JSON object such "
            'as {"prompt": "def f():", "max_tokens": 16} (UTF-8, no lone surrogates, at '
            "most 200 levels deep).",
            code="invalid_json",
        )
    if not loc:
        return APIError(
            400,
            f"The request body must be a JSON object ({err['msg']}); send "
            '{"prompt": "...", "max_tokens": 16}.',
        )
    # A union's errors name the member type last (`prompt.list[int].0`): keep the path.
    path = ".".join(p for p in loc if not p.startswith(("list[", "str", "int")))
    if kind == "missing":
        return APIError(
            400,
            f"Missing required field `{path}` in a {model.__name__} request "
            f"({model.__doc__.splitlines()[0] if model.__doc__ else ''}).",
            loc[0],
            "missing_required_parameter",
        )
    got = repr(err.get("input"))[:80]
    return APIError(400, f"Invalid `{path}`: {err['msg']} (got {got}).", loc[0], "invalid_value")


# ---------------------------------------------------------------- responses
class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Usage(_Out):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Logprobs(_Out):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class Choice(_Out):
    text: str
    index: int
    logprobs: Logprobs | None = None
    finish_reason: str | None = None


class Completion(_Out):
    """A completion, or one streamed chunk of it (`choices` empty on the usage chunk)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = Field(None, exclude_if=lambda v: v is None)  # absent unless asked


class Timings(_Out):
    prompt_n: int
    prompt_ms: float
    prompt_per_token_ms: float
    prompt_per_second: float
    predicted_n: int
    predicted_ms: float
    predicted_per_token_ms: float
    predicted_per_second: float


class InfillReply(_Out):
    """llama.cpp's /infill reply for a finished row (what llama.vim and llama.vscode read)."""

    content: str
    tokens: list[int]
    stop: bool
    model: str
    tokens_predicted: int
    tokens_evaluated: int
    tokens_cached: int
    truncated: bool
    stop_type: Literal["eos", "word", "limit"]
    stopping_word: str
    timings: Timings


class ModelCard(_Out):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "zen-code-jax"


class ModelList(_Out):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(_Out):
    status: Literal["ok"] = "ok"
    model: str
    slots: int
    busy_slots: int
    context_length: int
    repo_prefix_tokens: int = 0  # the run's path / symbol prefix budget (clients reserve it)
