"""Documents to token segments: file pieces, repository windows, and FIM after windowing.

Repository format (report section 2.3; the contract in docs/architecture.md): each file of one repository is written as
`# File: {path}\\n{content}\\n`, dependencies before their users (`import_graph`), and the
stream is cut into windows of at most `seq_len` tokens that end at file boundaries. A file
longer than a window is split (at line ends where possible) into pieces that each fit; every
piece keeps the `# File:` header so the model always knows where it is.

FIM is applied *after* windowing, to the last file (piece) of each window, with the files
before it in the FIM prefix (the report's listing). Because the window already fits, the
FIM sequence is complete: a middle is never cut from its sentinels. Re-encoding the three
parts separately can add a few tokens; the window then drops context tokens from its start
(then suffix tokens from its end) so it still fits.

File mode (pretraining) is the same machinery with one file and no header: a long file is
split into pieces of at most `seq_len` tokens and FIM is drawn per piece (Bavarian et al.'s
"context-level" FIM). Only the last piece of a document ends with <|endoftext|>; a FIM
piece always ends with it (it marks the end of the middle).

Everything random comes from the generator passed in, seeded per record by the pipeline.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from zen_code_jax.data.fim import draw_mode, fim_prompt_tokens, fim_tokens, split_text
from zen_code_jax.data.tokenizer import Tokenizer

# Tokens reserved in every piece for FIM: 3 sentinels + <|endoftext|> + re-encoding growth.
FIM_RESERVE = 16
_CHARS_PER_TOKEN_GUESS = 2.5  # conservative (code is ~3.4 bytes/token): pieces rarely overflow


def file_header(path: str) -> str:
    """The header line that introduces a file in a repository window."""
    return f"# File: {path}\n"


def file_block(path: str, content: str) -> str:
    """`# File: {path}\\n{content}\\n`: one file of a repository window."""
    return f"{file_header(path)}{content}\n"


def context_ids(contexts: Sequence[tuple[str, str]], tok: Any) -> list[int]:
    """Tokens of repository files [(path, content), ...] placed before a target file.

    Each block is encoded on its own, exactly as training encodes the files of a window.
    """
    out: list[int] = []
    for path, content in contexts:
        out.extend(tok.encode(file_block(path, content)))
    return out


def repo_fim_prompt_tokens(
    contexts: Sequence[tuple[str, str]],
    path: str,
    prefix: str,
    suffix: str,
    mode: str,
    tok: Any,
) -> list[int]:
    """Inference prompt for infilling file `path` with repository context, as in training.

    The target file's header is encoded together with its prefix (training does the same).
    """
    return fim_prompt_tokens(
        file_header(path) + prefix, suffix, mode, tok, context_ids=context_ids(contexts, tok)
    )


def _cut_points(text: str, n: int) -> list[int]:
    """n roughly equal pieces of text, each cut just after a newline when one is near."""
    size = len(text) / n
    cuts = [0]
    for k in range(1, n):
        target = int(k * size)
        lo = max(cuts[-1] + 1, int(target - size / 2))
        nl = text.rfind("\n", lo, target)
        cut = nl + 1 if nl >= 0 else target
        if cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(len(text))
    return cuts


def split_to_budget(
    text: str,
    encode: Callable[[str], list[int]],
    max_tokens: int,
    wrap: Callable[[str], str] | None = None,
) -> list[tuple[str, list[int]]]:
    """Pieces (text, encode(wrap(text))) with at most `max_tokens` tokens each.

    The piece texts concatenate to `text`. Cuts prefer line ends. Long texts are cut by a
    character estimate first so most characters are encoded once.
    """
    wrap = wrap or (lambda t: t)
    if max_tokens < 8:
        raise ValueError(f"max_tokens={max_tokens} is too small to split text; raise seq_len.")

    def rec(t: str) -> list[tuple[str, list[int]]]:
        ids = encode(wrap(t))
        if len(ids) <= max_tokens or len(t) <= 1:
            return [(t, ids)]
        n = max(2, math.ceil(len(ids) / (0.9 * max_tokens)))
        c = _cut_points(t, n)
        return [x for a, b in zip(c[:-1], c[1:]) for x in rec(t[a:b])]

    guess = int(max_tokens * _CHARS_PER_TOKEN_GUESS)
    if len(text) <= guess:
        return rec(text)
    c = _cut_points(text, math.ceil(len(text) / guess))
    return [x for a, b in zip(c[:-1], c[1:]) for x in rec(text[a:b])]


_SURFACE_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def token_surfaces(tok: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Per id: UTF-8 byte length of its text, and whether that text ends with a newline.

    Computed once per tokenizer: `split_ids` cuts encodings with it instead of re-encoding.
    """
    key = id(tok)
    if key in _SURFACE_CACHE:
        return _SURFACE_CACHE[key]
    n = int(tok.sp_vocab_size)
    lens = np.zeros(max(n, tok.vocab_size), dtype=np.int64)
    ends_nl = np.zeros(max(n, tok.vocab_size), dtype=bool)
    special = set(tok.special_ids)
    token_bytes = getattr(tok, "token_bytes", None)  # HF byte-level BPE: exact bytes
    for i in range(n):
        if i in special:
            continue
        if token_bytes is not None:
            b = token_bytes(i)
            lens[i], ends_nl[i] = len(b), b.endswith(b"\n")
            continue
        piece = tok.id_to_piece(i)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            lens[i] = 1
            ends_nl[i] = piece == "<0x0A>"
        else:
            surface = piece.replace("\u2581", " ")
            lens[i] = len(surface.encode("utf-8"))
            ends_nl[i] = surface.endswith("\n")
    _SURFACE_CACHE[key] = (lens, ends_nl)
    return lens, ends_nl


def split_ids(
    text: str,
    ids: Sequence[int],
    max_tokens: int,
    tok: Tokenizer,
    *,
    first_budget: int | None = None,
) -> list[tuple[str, list[int]]] | None:
    """Cut one encoding into pieces of <= max_tokens tokens (the first <= first_budget).

    Cuts fall on token boundaries that are character boundaries, after a newline token when
    one is in the last quarter of the piece. The piece texts concatenate to `text` and the
    piece ids to `ids`, so unsplit and split files have exactly the same tokens. Returns
    None when the tokens do not map back onto the text (then split by text instead).
    """
    lens, ends_nl = token_surfaces(tok)
    if len(ids) == 0:
        return [] if not text else None
    arr = np.asarray(ids, dtype=np.int64)
    blen = lens[arr]
    data = text.encode("utf-8")
    ends = np.cumsum(blen)
    if ends[-1] != len(data):
        return None
    # A cut after token k is valid if the byte that follows starts a character.
    nxt = np.frombuffer(data, dtype=np.uint8)[np.minimum(ends, len(data) - 1)]
    ok = ((nxt & 0xC0) != 0x80) | (ends == len(data))
    nl = ends_nl[arr] & ok
    out: list[tuple[str, list[int]]] = []
    a, a_byte = 0, 0
    budget = first_budget or max_tokens
    n = len(arr)
    while a < n:
        b = min(n, a + budget)
        if b < n:
            lo = a + max(1, (3 * budget) // 4)
            cand = np.nonzero(nl[lo - 1 : b])[0]
            if len(cand):
                b = lo + int(cand[-1])
            else:
                cand = np.nonzero(ok[a:b])[0]
                b = a + int(cand[-1]) + 1 if len(cand) else b
        b_byte = int(ends[b - 1])
        out.append((data[a_byte:b_byte].decode("utf-8"), [int(x) for x in arr[a:b]]))
        a, a_byte, budget = b, b_byte, max_tokens
    return out


def _fit_fim(
    ctx: list[int],
    p: list[int],
    m: list[int],
    s: list[int],
    mode: str,
    tok: Tokenizer,
    seq_len: int,
) -> list[int]:
    """FIM sequence of at most seq_len tokens: trim context front, then suffix end, then prefix."""
    excess = len(ctx) + len(p) + len(m) + len(s) + 4 - seq_len
    if excess > 0:
        cut = min(excess, len(ctx))
        ctx, excess = ctx[cut:], excess - cut
    if excess > 0:
        cut = min(excess, len(s))
        s, excess = s[: len(s) - cut], excess - cut
    if excess > 0:
        cut = min(excess, len(p))
        p, excess = p[cut:], excess - cut
    if excess > 0:  # a middle longer than the window cannot happen with FIM_RESERVE; be safe
        m = m[: len(m) - excess]
    return fim_tokens([*ctx, *p], m, s, mode, tok)


def file_segments(
    content: str,
    tok: Tokenizer,
    rng: np.random.Generator | None,
    seq_len: int,
    *,
    fim_rate: float = 0.0,
    spm_rate: float = 0.0,
) -> list[np.ndarray]:
    """Token segments (each <= seq_len) of one file for pretraining, FIM drawn per piece.

    With `rng=None` no FIM is applied (evaluation).
    """
    if not content:
        return []
    budget = seq_len - 1 - FIM_RESERVE
    ids = tok.encode(content)
    pieces = [(content, ids)] if len(ids) <= budget else split_ids(content, ids, budget, tok)
    if pieces is None:
        pieces = split_to_budget(content, tok.encode, budget)
    out: list[np.ndarray] = []
    for k, (text, ids) in enumerate(pieces):
        last = k == len(pieces) - 1
        mode = draw_mode(rng, fim_rate, spm_rate) if rng is not None else None
        if mode is None:
            seq = [*ids, tok.eot_id] if last else list(ids)
        else:
            pre, mid, suf = split_text(text, rng)
            seq = _fit_fim(
                [], tok.encode(pre), tok.encode(mid), tok.encode(suf), mode, tok, seq_len
            )
        out.append(np.asarray(seq, dtype=np.int32))
    return out


@dataclasses.dataclass(frozen=True)
class Piece:
    """One file (or a piece of a long file) in a repository stream."""

    path: str
    text: str  # content of this piece (the last piece includes the block's trailing "\n")
    ids: list[int]  # tokens of header + text


def repo_pieces(files: Sequence[tuple[str, str]], tok: Tokenizer, max_tokens: int) -> list[Piece]:
    """Files [(path, content)] (already in dependency order) as pieces of <= max_tokens.

    An unsplit file has exactly the tokens of `context_ids` for it (one encoding of its
    block). Continuation pieces of a long file start with the file's header again.
    """
    out: list[Piece] = []
    for path, content in files:
        header = file_header(path)
        block = header + content + "\n"
        ids = tok.encode(block)
        if len(ids) <= max_tokens:
            out.append(Piece(path, content + "\n", ids))
            continue
        hdr_ids = tok.encode(header)
        if len(hdr_ids) >= max_tokens // 2:
            raise ValueError(
                f"The header of {path!r} takes {len(hdr_ids)} tokens of a {max_tokens}-token "
                "piece; raise seq_len."
            )
        cut = split_ids(block, ids, max_tokens - len(hdr_ids), tok, first_budget=max_tokens)
        if cut is not None and cut[0][0].startswith(header):
            for k, (text, pids) in enumerate(cut):
                if k == 0:
                    out.append(Piece(path, text[len(header) :], pids))
                else:
                    out.append(Piece(path, text, hdr_ids + pids))
            continue
        for text, pids in split_to_budget(
            content + "\n", tok.encode, max_tokens, wrap=lambda t, h=header: h + t
        ):
            out.append(Piece(path, text, pids))
    return out


def repo_windows(
    files: Sequence[tuple[str, str]],
    tok: Tokenizer,
    rng: np.random.Generator | None,
    seq_len: int,
    *,
    fim_rate: float = 0.0,
    spm_rate: float = 0.0,
) -> list[np.ndarray]:
    """Windows (each <= seq_len tokens) of one repository whose files are in the given order.

    Windows end at file (piece) boundaries. In FIM mode the last piece of a window is the
    target: `<|fim_prefix|>{earlier files}# File: t\\n{prefix}<|fim_suffix|>...` (PSM) or
    the SPM layout with the same prefix. The repository's last window ends with
    <|endoftext|>; FIM windows always do.
    """
    pieces = repo_pieces(files, tok, seq_len - 1 - FIM_RESERVE)
    groups: list[list[Piece]] = []
    cur: list[Piece] = []
    n = 0
    for pc in pieces:
        if cur and n + len(pc.ids) > seq_len - 1:
            groups.append(cur)
            cur, n = [], 0
        cur.append(pc)
        n += len(pc.ids)
    if cur:
        groups.append(cur)
    out: list[np.ndarray] = []
    for g, group in enumerate(groups):
        last = g == len(groups) - 1
        ctx = [t for pc in group[:-1] for t in pc.ids]
        target = group[-1]
        mode = draw_mode(rng, fim_rate, spm_rate) if rng is not None else None
        if mode is None:
            seq = [*ctx, *target.ids] + ([tok.eot_id] if last else [])
        else:
            pre, mid, suf = split_text(target.text, rng)
            seq = _fit_fim(
                ctx,
                tok.encode(file_header(target.path) + pre),
                tok.encode(mid),
                tok.encode(suf),
                mode,
                tok,
                seq_len,
            )
        out.append(np.asarray(seq[:seq_len], dtype=np.int32))
    return out
