"""Documents to token segments: file pieces, repository windows, and FIM.

File mode (pretraining, `fim.level="document"`): the FIM decision and split are drawn once
per *file* (`fim.FimDraw`, keyed by the file), applied to the whole file, and the FIM'd
token sequence is then cut into pieces of at most `seq_len - 1 - FIM_RESERVE` tokens, so a
long file's pieces share one decision and one pair of split points (the paper's unit at
64K, whatever our sequence length). A plain file is cut the same way. Only the last piece
of a file ends with <|endoftext|>. At `fim.level="context"` pieces stay plain here and FIM
is applied after packing, per fragment (`data/fim_context.py`).

Repository mode (report section 2.3): the files of one repository, dependencies first
(`import_graph`), in the chosen `data/repo_format.py` layout, cut into windows of at most
`seq_len` tokens that end at file boundaries; each window starts with the repository
opening (`<|repo_name|>...` in the qwen2.5 / starcoder2 formats). A file longer than a
window is split (at line ends where possible) into pieces that each fit; every piece
repeats the file's header so the model always knows where it is. With `data.repo_prefix`
on, every window opens with its path / symbol-table prefix (`RepoFormat.open_ids`, after the
repository opening, see `repo_format`): pieces are cut to fit beside a full prefix
(`data.repo_prefix_tokens`), and a window takes pieces while its tokens and its exact
prefix, which grows with them, fit.

Repository FIM is applied to the last file (piece) of a window, *inside* it: the context
files stay plain text, the target's header follows, and only the target's content is
rearranged (see `repo_format`), so SPM never moves the repository after the suffix.
Because the window already fits, the FIM sequence is complete: a middle is never cut from
its sentinels. Re-encoding the three parts can add a few tokens; the window then drops
context tokens from its start (then suffix tokens from its end) so it still fits. The draw
is keyed by (seed, repository, window index).

Everything random comes from `fim.FimDraw`s keyed by unit identity (common random numbers).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Container, Sequence
from typing import Any

import numpy as np

from zen_code_jax.data.fim import FimDraw, fim_tokens, unit_draw
from zen_code_jax.data.repo_format import RepoFormat, comment_header
from zen_code_jax.data.symbols import grammar_of
from zen_code_jax.data.tokenizer import Tokenizer

# Tokens reserved in every piece for FIM: 3 sentinels + <|endoftext|> + re-encoding growth.
FIM_RESERVE = 16
_CHARS_PER_TOKEN_GUESS = 2.5  # conservative (code is ~3.4 bytes/token): pieces rarely overflow


_REPORT = RepoFormat("report")


def file_header(path: str) -> str:
    """The report format's header line of a file (its language's comment syntax)."""
    return comment_header(path)


def file_block(path: str, content: str) -> str:
    """`{comment} File: {path}\n{content}\n`: one file of a report-format window (text)."""
    return f"{file_header(path)}{content}\n"


def context_ids(contexts: Sequence[tuple[str, str]], tok: Any) -> list[int]:
    """Tokens of repository files [(path, content), ...] before a target (report format)."""
    return _REPORT.context_ids(contexts, tok)


def repo_fim_prompt_tokens(
    contexts: Sequence[tuple[str, str]],
    path: str,
    prefix: str,
    suffix: str,
    mode: str,
    tok: Any,
) -> list[int]:
    """Inference prompt for infilling file `path` with repository context (report format;
    `RepoFormat(name).fim_prompt_ids` for the others)."""
    return _REPORT.fim_prompt_ids(contexts, path, prefix, suffix, mode, tok)


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
    n_ctx: int,
    p: list[int],
    m: list[int],
    s: list[int],
    mode: str,
    tok: Tokenizer,
    seq_len: int,
) -> tuple[int, list[int]]:
    """Fit context + FIM in seq_len: trim context front, then suffix end, then prefix front.

    Returns (how many context tokens to keep, from its end; the FIM tokens).
    """
    excess = n_ctx + len(p) + len(m) + len(s) + 4 - seq_len
    if excess > 0:
        cut = min(excess, n_ctx)
        n_ctx, excess = n_ctx - cut, excess - cut
    if excess > 0:
        cut = min(excess, len(s))
        s, excess = s[: len(s) - cut], excess - cut
    if excess > 0:
        cut = min(excess, len(p))
        p, excess = p[cut:], excess - cut
    if excess > 0:  # a middle longer than the window cannot happen with FIM_RESERVE; be safe
        m = m[: len(m) - excess]
    return n_ctx, fim_tokens(p, m, s, mode, tok)


def _pieces(text: str, ids: list[int], tok: Tokenizer, budget: int) -> list[list[int]]:
    """`ids` (whose surfaces spell `text`) cut into pieces of <= budget, at line ends."""
    if len(ids) <= budget:
        return [ids]
    cut = split_ids(text, ids, budget, tok)
    if cut is not None:
        return [p for _, p in cut]
    if tok.decode(ids) == text:  # no sentinels: cut by text (exact but re-encoded)
        return [p for _, p in split_to_budget(text, tok.encode, budget)]
    return [ids[i : i + budget] for i in range(0, len(ids), budget)]


def file_segments(
    content: str,
    tok: Tokenizer,
    draw: FimDraw | None,
    seq_len: int,
    *,
    fim_rate: float = 0.0,
    spm_rate: float = 0.0,
    span: str = "char",
    path: str = "",
) -> list[np.ndarray]:
    """Token segments (each < seq_len) of one file for pretraining; FIM drawn per file.

    With `draw=None` no FIM is applied (evaluation, `fim.level="context"`, a domain that
    `fim.domains` leaves out). A FIM file is rearranged whole, then cut into pieces.
    `span` is `fim.span`; `path` picks the grammar of an "ast" span.
    """
    if not content:
        return []
    budget = seq_len - 1 - FIM_RESERVE
    mode = draw.mode(fim_rate, spm_rate) if draw is not None else None
    if mode is None:
        ids = tok.encode(content)
        pieces = _pieces(content, ids, tok, budget)
        pieces[-1] = [*pieces[-1], tok.eot_id]
    else:
        pre, mid, suf = draw.split(content, span, grammar_of(path) if span == "ast" else None)
        p, m, s = tok.encode(pre), tok.encode(mid), tok.encode(suf)
        seq = fim_tokens(p, m, s, mode, tok)  # ends with <|endoftext|>
        ordered = pre + suf + mid if mode == "psm" else suf + pre + mid
        pieces = _pieces(ordered, seq, tok, budget + 1)
    return [np.asarray(x, dtype=np.int32) for x in pieces]


@dataclasses.dataclass(frozen=True)
class Piece:
    """One file (or a piece of a long file) in a repository stream."""

    path: str
    text: str  # content of this piece (the last piece includes the format's trailer)
    header: list[int]  # the file's header tokens (repeated on every piece)
    body: list[int]  # tokens of `text`

    @property
    def ids(self) -> list[int]:
        return [*self.header, *self.body]


def repo_pieces(
    files: Sequence[tuple[str, str]],
    tok: Tokenizer,
    max_tokens: int,
    fmt: RepoFormat = _REPORT,
) -> list[Piece]:
    """Files [(path, content)] (already in dependency order) as pieces of <= max_tokens.

    An unsplit file has exactly the tokens of `fmt.file_ids` for it, which is what a
    serving prompt puts before a target. Continuation pieces repeat the file's header.
    """
    out: list[Piece] = []
    for path, content in files:
        header = fmt.header_ids(path, tok)
        if len(header) >= max_tokens // 2:
            raise ValueError(
                f"The header of {path!r} takes {len(header)} tokens of a {max_tokens}-token "
                "piece; raise seq_len."
            )
        text = content + fmt.trailer()
        body = tok.encode(text)
        budget = max_tokens - len(header)
        if len(body) <= budget:
            out.append(Piece(path, text, header, body))
            continue
        cut = split_ids(text, body, budget, tok)
        if cut is None:
            cut = split_to_budget(text, tok.encode, budget)
        out.extend(Piece(path, t, header, ids) for t, ids in cut)
    return out


class _MemoEncode:
    """`tok.encode` remembered per text (a window's prefix lines are encoded again for
    every piece the window considers); other attributes are the tokenizer's."""

    def __init__(self, tok: Any):
        self._tok, self._cache = tok, {}

    def encode(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self._tok.encode(text)
        return self._cache[text]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


def repo_windows(
    files: Sequence[tuple[str, str]],
    tok: Tokenizer,
    seed: int | None,
    seq_len: int,
    *,
    fim_rate: float = 0.0,
    spm_rate: float = 0.0,
    fmt: RepoFormat = _REPORT,
    repo: str = "",
    fim_paths: Container[str] | None = None,
    span: str = "char",
) -> list[np.ndarray]:
    """Windows (each <= seq_len tokens) of one repository whose files are in the given order.

    Windows end at file (piece) boundaries and start with `fmt.repo_ids(repo)`. In FIM mode
    the last piece of a window is the target (when `fim_paths` is None or holds its path):
    `{repo}{earlier files}{target header}<|fim_prefix|>{prefix}<|fim_suffix|>...` (PSM) or
    the SPM layout after the same header. The draw of window g is `unit_draw(seed, repo,
    g)`; `seed=None` means no FIM (evaluation). The repository's last window ends with
    <|endoftext|>; FIM windows always do. `span` (`fim.span`) places the target's middle.
    """
    opening = fmt.repo_ids(repo, tok)
    reserve = fmt.prefix.reserve  # the path / symbol prefix's budget (0 when off)
    if reserve and 4 * reserve > seq_len:
        raise ValueError(
            f"data.repo_prefix_tokens={reserve} is over a quarter of seq_len={seq_len}; "
            "lower data.repo_prefix_tokens or raise seq_len."
        )
    # A piece always fits beside the opening and a full prefix; windows then take pieces
    # while their exact prefix (which grows with them) and tokens fit.
    pieces = repo_pieces(files, tok, seq_len - 1 - FIM_RESERVE - len(opening) - reserve, fmt)
    contents, memo = dict(files), _MemoEncode(tok)

    def head_of(group: list[Piece]) -> list[int]:
        """The window's opening and prefix (`RepoFormat.open_ids`) for its pieces."""
        if not reserve:
            return opening
        ctx_files = [(p, contents[p]) for p in dict.fromkeys(pc.path for pc in group[:-1])]
        return fmt.open_ids(ctx_files, memo, repo, group[-1].path)

    groups: list[list[Piece]] = []
    cur: list[Piece] = []
    n = len(opening)
    for pc in pieces:
        fits = n + len(pc.ids) <= seq_len - 1
        if cur and fits and reserve:
            fits = n - len(opening) + len(pc.ids) + len(head_of([*cur, pc])) <= seq_len - 1
        if cur and not fits:
            groups.append(cur)
            cur, n = [], len(opening)
        cur.append(pc)
        n += len(pc.ids)
    if cur:
        groups.append(cur)
    out: list[np.ndarray] = []
    for g, group in enumerate(groups):
        last = g == len(groups) - 1
        target = group[-1]
        head = head_of(group)
        ctx = [*head, *(t for pc in group[:-1] for t in pc.ids), *target.header]
        mode = None
        if seed is not None:
            draw = unit_draw(seed, "repo", repo, str(g))
            if fim_paths is None or target.path in fim_paths:
                mode = draw.mode(fim_rate, spm_rate)
        if mode is None:
            seq = [*ctx, *target.body] + ([tok.eot_id] if last else [])
        else:
            grammar = grammar_of(target.path) if span == "ast" else None
            pre, mid, suf = draw.split(target.text, span, grammar)
            fim = _fit_fim(
                len(ctx), tok.encode(pre), tok.encode(mid), tok.encode(suf), mode, tok, seq_len
            )
            seq = [*ctx[len(ctx) - fim[0] :], *fim[1]]
        out.append(np.asarray(seq[:seq_len], dtype=np.int32))
    return out
