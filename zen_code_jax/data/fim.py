"""Fill-in-the-middle (FIM) transformation, shared by training and inference.

Bavarian et al. (2022): a document is split at the *character* level by two sorted uniform
draws into (prefix, middle, suffix) and rearranged with sentinel tokens so a left-to-right
model learns to infill:

  PSM: <|fim_prefix|> P <|fim_suffix|> S <|fim_middle|> M <|endoftext|>
  SPM: <|fim_prefix|> <|fim_suffix|> S <|fim_middle|> P M <|endoftext|>

Why the details matter:
- Sentinels are inserted as ids, never by encoding their spelling, so a literal
  "<|fim_prefix|>" inside a source file stays ordinary text (the tokenizer can never
  produce a sentinel id from raw text).
- The three parts are encoded separately. Inference (`fim_prompt_tokens`) encodes the
  user's prefix and suffix the same way, so the prompt is token-for-token what the model
  saw in training up to the point where the middle starts.
- Every unit (a file at `fim.level="document"`, a packed fragment at "context") gets one
  `FimDraw` keyed only by (seed, unit identity) (`unit_draw`): four uniforms, always all
  drawn, so the decision is `u < rate` and the split points do not depend on it. Arms that
  differ in `fim.rate` see common random numbers and their FIM sets are nested; nothing
  depends on read order, worker processes or restarts.
- Context level (Bavarian et al. 2022 section 4; bigcode Megatron) applies FIM after
  packing, to each fragment of a row, restoring its length (`fim_fragment`).
- `fim.span` moves the two character cuts to line boundaries ("line") or to the syntax
  node nearest them ("ast"), a function of the same draw (`data/spans.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from zen_code_jax.data.spans import span_points

Mode = Literal["psm", "spm"]
MODES: tuple[str, ...] = ("psm", "spm")
T = TypeVar("T")


class FimTokenizer(Protocol):
    """What FIM needs from `zen_code_jax.data.tokenizer.Tokenizer`."""

    eot_id: int
    fim_prefix_id: int
    fim_middle_id: int
    fim_suffix_id: int

    def encode(self, text: str) -> list[int]: ...


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"Unknown FIM mode {mode!r}; use one of {MODES} ('psm' or 'spm').")
    return mode


def arrange(
    prefix: Sequence[T],
    middle: Sequence[T],
    suffix: Sequence[T],
    mode: str,
    *,
    fim_prefix: T,
    fim_middle: T,
    fim_suffix: T,
    eot: T | None,
) -> list[T]:
    """The FIM layout over any sequences (token ids, or characters in tests).

    `eot=None` leaves the end-of-text marker off (used for prompts).
    """
    _check_mode(mode)
    if mode == "psm":
        out = [fim_prefix, *prefix, fim_suffix, *suffix, fim_middle, *middle]
    else:
        out = [fim_prefix, fim_suffix, *suffix, fim_middle, *prefix, *middle]
    if eot is not None:
        out.append(eot)
    return out


def fim_tokens(
    prefix_ids: Sequence[int],
    middle_ids: Sequence[int],
    suffix_ids: Sequence[int],
    mode: str,
    tok: FimTokenizer,
) -> list[int]:
    """Exactly the training sequence for one FIM example, ending with <|endoftext|>."""
    return arrange(
        list(prefix_ids),
        list(middle_ids),
        list(suffix_ids),
        mode,
        fim_prefix=tok.fim_prefix_id,
        fim_middle=tok.fim_middle_id,
        fim_suffix=tok.fim_suffix_id,
        eot=tok.eot_id,
    )


def fim_prompt_tokens(
    prefix: str,
    suffix: str,
    mode: str,
    tok: FimTokenizer,
    *,
    context_ids: Sequence[int] = (),
) -> list[int]:
    """The inference prompt: the training format up to and including where the middle starts.

    PSM ends with <|fim_middle|>; SPM ends with the prefix tokens (the middle continues the
    prefix). `context_ids` (already tokenized text that precedes `prefix`, e.g. repository
    files from `repo_window.context_ids`) is placed before the prefix tokens, as in training.
    """
    prefix_ids = [*context_ids, *tok.encode(prefix)]
    suffix_ids = tok.encode(suffix)
    return arrange(
        prefix_ids,
        [],
        suffix_ids,
        mode,
        fim_prefix=tok.fim_prefix_id,
        fim_middle=tok.fim_middle_id,
        fim_suffix=tok.fim_suffix_id,
        eot=None,
    )


LEVELS: tuple[str, ...] = ("document", "context")


def check_rates(rate: float, spm_rate: float) -> None:
    """Raise a one-line error unless both rates are probabilities."""
    if not (0.0 <= rate <= 1.0 and 0.0 <= spm_rate <= 1.0):
        raise ValueError(
            f"fim.rate={rate} and fim.spm_rate={spm_rate} must both be in [0, 1]; "
            "fix the `fim` group of the config."
        )


@dataclasses.dataclass(frozen=True)
class FimDraw:
    """Every random number one FIM unit (a file, or a packed fragment) can need.

    All four uniforms are always drawn, whatever the rate and the outcome (common random
    numbers): the decision is `u < rate`, the order `u_spm < spm_rate`, the split points
    come from `a` and `b`. Two arms that differ only in `fim.rate` therefore make the same
    choice for every unit they both turn into FIM, with the same split, and
    FIM(25%) is a subset of FIM(50%) is a subset of FIM(75%) unit by unit.
    """

    u: float
    u_spm: float
    a: float
    b: float

    def mode(self, rate: float, spm_rate: float) -> str | None:
        """None (plain) when u >= rate, else 'spm' when u_spm < spm_rate, else 'psm'."""
        check_rates(rate, spm_rate)
        if self.u >= rate:
            return None
        return "spm" if self.u_spm < spm_rate else "psm"

    def points(self, n: int) -> tuple[int, int]:
        """Two sorted cut positions, each uniform over the n + 1 cuts of an n-item text."""
        a, b = (min(n, int(x * (n + 1))) for x in (self.a, self.b))
        return (a, b) if a <= b else (b, a)

    def split(
        self, text: str, span: str = "char", grammar: str | None = None
    ) -> tuple[str, str, str]:
        """(prefix, middle, suffix) with prefix + middle + suffix == text: character cuts,
        or for `span` "line" / "ast" those cuts moved to lines / a syntax node of the
        `grammar` (`data/spans.py`; the same uniforms, so arms stay nested)."""
        a, b = self.points(len(text))
        if span != "char":
            a, b = span_points(text, a, b, span, grammar)
        return text[:a], text[a:b], text[b:]


def draw_fim(rng: np.random.Generator) -> FimDraw:
    """The four uniforms of one unit (always all four: see `FimDraw`)."""
    u, u_spm, a, b = (float(x) for x in rng.random(4))
    return FimDraw(u, u_spm, a, b)


def unit_key(*parts: str | bytes) -> int:
    """A stable 64-bit key of a unit's identity (e.g. repository and path of a file)."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        b = p.encode("utf-8") if isinstance(p, str) else bytes(p)
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return int.from_bytes(h.digest(), "little")


def unit_draw(seed: int, *parts: str | bytes) -> FimDraw:
    """The draw of one unit, keyed only by (seed, unit identity): the same in every arm,
    whatever the read order, worker count or restart."""
    return draw_fim(record_rng(seed, unit_key(*parts), stream=1))


def split_text(text: str, rng: np.random.Generator) -> tuple[str, str, str]:
    """Character-level (prefix, middle, suffix) from a fresh draw (tests and tools)."""
    return draw_fim(rng).split(text)


def fim_parts(
    text: str,
    tok: FimTokenizer,
    draw: FimDraw,
    rate: float,
    spm_rate: float,
    *,
    context_text: str = "",
) -> tuple[str | None, list[int], list[int], list[int]]:
    """The FIM decision for one document and its parts, encoded separately.

    Returns (mode, prefix_ids, middle_ids, suffix_ids); mode None means a plain document whose
    ids are all in `prefix_ids`. `context_text` (e.g. the target file's header) is
    encoded together with the prefix: it always precedes the split.
    """
    mode = draw.mode(rate, spm_rate)
    if mode is None:
        return None, tok.encode(context_text + text), [], []
    prefix, middle, suffix = draw.split(text)
    return mode, tok.encode(context_text + prefix), tok.encode(middle), tok.encode(suffix)


def apply_fim(
    text: str,
    tok: FimTokenizer,
    draw: FimDraw,
    rate: float,
    spm_rate: float,
    *,
    context_ids: Sequence[int] = (),
    context_text: str = "",
) -> tuple[list[int], str | None]:
    """Tokens of one document (plain or FIM) ending with <|endoftext|>, and the mode used.

    `context_ids` are tokens that precede `text` (repository files before the target file);
    `context_text` is text that precedes `text` inside the same encoding call (the target
    file's header). Both belong to the FIM prefix.
    """
    mode, p, m, s = fim_parts(text, tok, draw, rate, spm_rate, context_text=context_text)
    if mode is None:
        return [*context_ids, *p, tok.eot_id], None
    return fim_tokens([*context_ids, *p], m, s, mode, tok), mode


def fim_fragment(
    ids: Sequence[int],
    tok: Any,
    draw: FimDraw,
    rate: float,
    spm_rate: float,
    *,
    span: str = "char",
    grammar: str | None = None,
) -> list[int] | None:
    """Context-level FIM of one packed fragment, length preserved (bigcode Megatron's
    `permute` with `truncate_or_pad`): None when it stays plain.

    The fragment is decoded, split (`FimDraw.split` with `span` / `grammar`), its parts re-encoded and laid out with
    the sentinels; a trailing <|endoftext|> stays last. The result has exactly len(ids)
    tokens: a longer one drops tokens from the end of the suffix (when the suffix has too
    few, the fragment stays plain, as in bigcode), a shorter one is padded with
    <|fim_pad|> after the suffix; the pipeline masks every target that is <|fim_pad|>.
    """
    mode = draw.mode(rate, spm_rate)
    if mode is None or len(ids) < 2:
        return None
    ids = list(ids)
    eot = ids[-1] == tok.eot_id
    body = ids[:-1] if eot else ids
    text = tok.decode(body)
    prefix, middle, suffix = draw.split(text, span, grammar)
    p, m, s = tok.encode(prefix), tok.encode(middle), tok.encode(suffix)
    diff = len(p) + len(m) + len(s) + 3 + int(eot) - len(ids)
    if diff > 0:
        if len(s) <= diff:
            return None
        s = s[: len(s) - diff]
    elif diff < 0:
        s = s + [tok.fim_pad_id] * (-diff)
    out = arrange(
        p,
        m,
        s,
        mode,
        fim_prefix=tok.fim_prefix_id,
        fim_middle=tok.fim_middle_id,
        fim_suffix=tok.fim_suffix_id,
        eot=tok.eot_id if eot else None,
    )
    assert len(out) == len(ids)
    return out


def record_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """A Philox generator keyed only by (seed, record index, stream): order-independent."""
    key = np.array([seed & 0xFFFFFFFFFFFFFFFF, index & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(key=key, counter=[stream, 0, 0, 0]))


def unfim(ids: Sequence[int], tok: Any) -> tuple[list[int], list[int], list[int], str | None]:
    """Invert `fim_tokens`: (prefix_ids, middle_ids, suffix_ids, mode) of a FIM sequence.

    A plain document (no leading <|fim_prefix|>) returns (ids, [], [], None). A trailing
    <|endoftext|> is dropped. Used by tests and by analysis tools; raises on malformed input.
    """
    ids = list(ids)
    if ids and ids[-1] == tok.eot_id:
        ids = ids[:-1]
    if not ids or ids[0] != tok.fim_prefix_id:
        return ids, [], [], None
    fp, fs, fm = tok.fim_prefix_id, tok.fim_suffix_id, tok.fim_middle_id
    for s in (fp, fs, fm):
        if ids.count(s) != 1:
            raise ValueError(
                f"Malformed FIM sequence: sentinel id {s} occurs {ids.count(s)} times."
            )
    i_s, i_m = ids.index(fs), ids.index(fm)
    if i_s == 1:  # SPM: FP FS S FM P M -- prefix/middle boundary is not marked
        suffix = ids[2:i_m]
        return [], ids[i_m + 1 :], suffix, "spm"
    return ids[1:i_s], ids[i_m + 1 :], ids[i_s + 1 : i_m], "psm"
