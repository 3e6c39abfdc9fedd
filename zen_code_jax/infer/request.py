"""The one request type of the decoder, and its result.

Evaluation (`InferenceEngine.complete`, driving the scheduler synchronously) and the
server (`protocol.RequestParser`, handing rows to the scheduler thread) both build
`CompletionRequest`s, and the scheduler (`scheduler.py`) decodes nothing else: one row of
tokens with its own settings. What the scheduler changes while a row decodes (its tokens,
slot, released text) lives in its own record (`scheduler.RowState`), so a request stays a
value that can be built, compared and reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from zen_code_jax.infer.sampling import GREEDY_EPS, chain_code


@dataclass(frozen=True)
class CompletionRequest:
    """One row to decode: token ids in, settings per row.

    The sample of a row depends only on (seed, sample_index, step) and its own tokens, so
    `n` samples of one prompt differ by `sample_index` and nothing else in the batch
    changes them. `prompt_logprobs` (echo with logprobs) also scores every prompt token;
    with `max_new_tokens=0` nothing is generated.
    """

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0  # <= GREEDY_EPS: greedy (argmax)
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # stop strings (the text is cut before the first)
    seed: int = 0
    sample_index: int = 0
    prompt_logprobs: bool = False
    # llama.cpp's editor controls (/infill; 0 = off): stop when a later line is indented
    # less than n_indent; a prompt-phase budget (admission to first token: over it, nothing
    # is generated); a generation budget that applies once a newline was generated (so an
    # editor gets at least the current line, as llama.cpp does).
    n_indent: int = 0
    t_max_prompt_ms: float = 0.0
    t_max_predict_ms: float = 0.0
    # Keep only the top_k most likely tokens (0: off), and llama.cpp's `samplers`: the
    # order of top_k / top_p / temperature / infill (None: temperature, top_k, top_p;
    # a sampler left out does not apply). Greedy rows ignore both.
    top_k: int = 0
    samplers: tuple[str, ...] | None = None

    def check(self, max_positions: int) -> None:
        """Raise ValueError naming the fix when the request cannot be decoded."""
        if len(self.prompt_ids) == 0:
            raise ValueError(
                "Empty prompt: every prompt needs at least one token (e.g. the EOS id)."
            )
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}.")
        if not (self.temperature >= 0.0):
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(
                f"top_p must be in (0, 1], got {self.top_p}; use 1.0 to disable nucleus."
            )
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}.")
        n = len(self.prompt_ids) + self.max_new_tokens
        if n > max_positions:
            raise ValueError(
                f"Prompt of {len(self.prompt_ids)} tokens + {self.max_new_tokens} new tokens "
                f"exceeds the model's context of {max_positions} positions; shorten the "
                "prompt or lower max_new_tokens."
            )

    @property
    def greedy(self) -> bool:
        return self.temperature <= GREEDY_EPS

    @property
    def chain(self) -> int:
        """The sampler order as the decoder carries it (`sampling.chain_code`)."""
        return chain_code(self.samplers)


@dataclass
class Completion:
    """A decoded row: its text (cut before any stop string), the tokens whose text is kept,
    and why it ended: "stop" (a stop id or a stop string) or "length" (its budget)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.completion_tokens = len(self.token_ids)


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest occurrence of any stop string (the stop string excluded)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def indent_cut(text: str, n_indent: int) -> int:
    """Where llama.cpp's `n_indent` rule cuts `text` (-1: nowhere).

    A line after the first whose indentation (spaces and tabs, one each) is below
    `n_indent` once its first other character arrives (a newline included: a blank line)
    ends the completion there: the text keeps that line's newline and indentation, as
    llama.cpp's server erases from the first character past the indentation.
    """
    if n_indent <= 0:
        return -1
    nl = text.find("\n")
    while nl >= 0:
        i = nl + 1
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and i - (nl + 1) < n_indent:
            return i
        nl = text.find("\n", nl + 1)
    return -1
