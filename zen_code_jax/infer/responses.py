"""Reply bodies of the completions server, built from a job's finished rows.

OpenAI's completion (choices, legacy logprobs, usage), llama.cpp's `/infill` reply
(`timings`, `stop_type`, `response_fields`), and compact JSON (`dumps`): llama.vim accepts
an `/infill` reply only if it matches `"content"\\s*:"`, so no reply has a space after a
colon. Kept apart from the HTTP handlers (`server_http.py`) so the wire framing (SSE,
status codes) and the body shapes change independently.
"""

from __future__ import annotations

import json
from typing import Any

from zen_code_jax.infer.schemas import InfillReply, Logprobs, Timings, Usage


def dumps(obj: Any) -> str:
    """Compact JSON (no spaces after separators), llama.cpp's spelling."""
    return json.dumps(obj, separators=(",", ":"))


def logprobs_obj(tok: Any, recs: list, k: int, offset: int) -> Logprobs:
    """OpenAI's legacy completions logprobs: tokens, token_logprobs, top_logprobs, offsets."""
    tokens, lps, tops, offs = [], [], [], []
    for tid, lp, top_ids, top_lps in recs:
        s = tok.decode([tid])
        tokens.append(s)
        lps.append(lp)
        tops.append({tok.decode([t]): v for t, v in list(zip(top_ids, top_lps))[:k]})
        offs.append(offset)
        offset += len(s)
    return Logprobs(tokens=tokens, token_logprobs=lps, top_logprobs=tops, text_offset=offs)


def prompt_logprobs_obj(tok: Any, row: Any, k: int, completion: Logprobs) -> Logprobs:
    """Echo with logprobs (OpenAI's legacy scoring call, e.g. lm-evaluation-harness with
    max_tokens=0): the prompt's tokens first, the first one without a log-probability,
    then the completion's. Offsets follow the decoded prompt tokens (for a FIM or
    repository prompt: the layout the model saw, not the echoed text)."""
    first = row.prompt_ids[0]
    head = logprobs_obj(tok, [(first, None, [], [])] + row.prompt_records, k, 0)
    head.top_logprobs[0] = None
    shift = sum(len(t) for t in head.tokens) - (completion.text_offset or [0])[0]
    return Logprobs(
        tokens=head.tokens + completion.tokens,
        token_logprobs=head.token_logprobs + completion.token_logprobs,
        top_logprobs=head.top_logprobs + completion.top_logprobs,
        text_offset=head.text_offset + [o + shift for o in completion.text_offset],
    )


def usage(rows: list) -> Usage:
    """Prompt tokens as decoded, completion tokens as kept (a stop string's tokens cut)."""
    p = sum(len(r.prompt_ids) for r in rows)
    c = sum(r.kept_tokens for r in rows)
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


def _rate(n: int, ms: float) -> tuple[float, float]:
    """(ms per token, tokens per second), 0 where undefined."""
    return (ms / n if n else 0.0), (1000.0 * n / ms if ms > 0 else 0.0)


def infill_obj(row: Any, content: str, model: str, max_len: int) -> InfillReply:
    """llama.cpp's /infill reply for a finished row (the fields llama.vim and llama.vscode
    read): generated `tokens`, `timings`, `stop_type` ("eos", "word", "limit"),
    `stopping_word`, `truncated` (prompt + generated reached the context) and
    `tokens_cached` (prompt tokens reused from a slot's cache)."""
    prompt_n = len(row.prompt_ids) - row.reused
    prompt_ms = max(0.0, row.t_prompt_done - row.t_admitted) * 1000 if row.t_prompt_done else 0.0
    predicted_n = len(row.ids)
    predicted_ms = max(0.0, row.t_done - row.t_prompt_done) * 1000 if row.t_prompt_done else 0.0
    p_tok, p_sec = _rate(prompt_n, prompt_ms)
    g_tok, g_sec = _rate(predicted_n, predicted_ms)
    return InfillReply(
        content=content,
        tokens=row.ids[: row.kept_tokens],
        stop=True,
        model=model,
        tokens_predicted=row.kept_tokens,
        tokens_evaluated=len(row.prompt_ids),
        tokens_cached=row.reused,
        truncated=len(row.prompt_ids) + len(row.ids) >= max_len,
        stop_type=row.stop_type or "limit",
        stopping_word=row.stop_word,
        timings=Timings(
            prompt_n=prompt_n,
            prompt_ms=prompt_ms,
            prompt_per_token_ms=p_tok,
            prompt_per_second=p_sec,
            predicted_n=predicted_n,
            predicted_ms=predicted_ms,
            predicted_per_token_ms=g_tok,
            predicted_per_second=g_sec,
        ),
    )


def select_fields(obj: dict, fields: list[str] | None) -> dict:
    """llama.cpp's `response_fields`: only the named paths ("timings/prompt_n"), each under
    its path as the key (llama.vim reads `timings/prompt_n` at the top level); paths that
    name nothing are left out. None: the whole object."""
    if fields is None:
        return obj
    out = {}
    for path in fields:
        v: Any = obj
        for part in path.split("/"):
            if not isinstance(v, dict) or part not in v:
                break
            v = v[part]
        else:
            if path:
                out[path] = v
    return out
