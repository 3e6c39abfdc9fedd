"""FIM span choice (`fim.span`): where the middle starts and ends.

- `char` (Bavarian et al. 2022, the default): two sorted uniform cut positions over the
  text's characters (`fim.FimDraw.points`).
- `line`: the same two character positions, each moved to the nearest line boundary (the
  start of the text, just after a newline, or the end), so the middle is whole lines.
- `ast` (AST-FIM, 2025): the middle is one syntax node of the file's tree-sitter tree (a
  block, statement, expression, ...: any named node below the root), the node that best
  covers the character span [a, b): the largest intersection over union, then the least
  |start - a| + |end - b|, then the first in preorder. (Least distance alone picks nodes
  at one end of a long span: on the stdlib its middles had half the character median;
  intersection over union keeps them nearer the character spans' sizes.) A file whose language has no grammar here, or whose tree has a
  syntax error, or has no such node, falls back to the character span; `span_stats()`
  counts each outcome.

Why snap the character span instead of drawing anew: the `line` and `ast` spans are a
function of the same four uniforms of the unit's `FimDraw` and of the text only, so
(1) arms that differ only in `fim.rate` stay nested for every span mode, exactly as for
`char`; (2) arms that differ only in `fim.span` make the same FIM decisions and order
(PSM/SPM) on the same units, with middles located where the character middle was and
sized like it; (3) nothing depends on worker count, read order or a restore.
"""

from __future__ import annotations

import bisect
import collections
import re

import numpy as np

from zen_code_jax.data.symbols import STATUSES, parser_for

SPANS: tuple[str, ...] = ("char", "line", "ast")
_NEWLINE = re.compile("\n")

# How `ast` spans went in this process: parsed, or why they fell back to `char`.
_STATS: collections.Counter[str] = collections.Counter()


def span_stats() -> dict[str, int]:
    """`ast` span outcomes in this process (parsed / syntax_error / unsupported / no_node)."""
    return dict(_STATS)


def check_span(span: str) -> str:
    """`span` if it is a known `fim.span`, else a one-line error naming the choices."""
    if span not in SPANS:
        raise ValueError(f"Unknown fim.span {span!r}; set fim.span to one of {SPANS}.")
    return span


def line_boundaries(text: str) -> list[int]:
    """Every position at a line boundary: 0, just after each newline, and len(text)."""
    out = [0, *(m.end() for m in _NEWLINE.finditer(text))]
    if out[-1] != len(text):
        out.append(len(text))
    return out


def _nearest(sorted_positions: list[int], x: int) -> int:
    """The position nearest x (the lower one on a tie)."""
    i = bisect.bisect_left(sorted_positions, x)
    if i == len(sorted_positions):
        return sorted_positions[-1]
    if i == 0 or sorted_positions[i] == x:
        return sorted_positions[i]
    lo, hi = sorted_positions[i - 1], sorted_positions[i]
    return lo if x - lo <= hi - x else hi


def line_points(text: str, a: int, b: int) -> tuple[int, int]:
    """The character cuts a <= b moved to their nearest line boundaries (still sorted)."""
    bounds = line_boundaries(text)
    return _nearest(bounds, a), _nearest(bounds, b)


def node_spans(text: str, grammar: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(starts, ends) in characters of every named node below the root, in preorder;
    None when the tree has a syntax error."""
    src = text.encode("utf-8")
    root = parser_for(grammar).parse(src).root_node
    if root.has_error:
        return None
    starts, ends = [], []
    stack = list(reversed(root.named_children))
    while stack:
        node = stack.pop()
        starts.append(node.start_byte)
        ends.append(node.end_byte)
        stack.extend(reversed(node.named_children))
    # Byte offsets -> character offsets: count the bytes that start a character.
    lead = (np.frombuffer(src, dtype=np.uint8) & 0xC0) != 0x80
    chars = np.concatenate([[0], np.cumsum(lead)])
    return chars[np.asarray(starts, dtype=np.int64)], chars[np.asarray(ends, dtype=np.int64)]


def ast_points(text: str, a: int, b: int, grammar: str | None) -> tuple[int, int] | None:
    """The extent of the syntax node that best covers the character span [a, b) (see the
    module docstring), or None (then the caller keeps [a, b)); counted in `span_stats()`."""
    if grammar is None:
        _STATS[STATUSES[2]] += 1  # unsupported
        return None
    spans = node_spans(text, grammar)
    if spans is None:
        _STATS[STATUSES[1]] += 1  # syntax_error
        return None
    starts, ends = spans
    if len(starts) == 0:
        _STATS["no_node"] += 1
        return None
    inter = np.maximum(0, np.minimum(ends, b) - np.maximum(starts, a))
    iou = inter / np.maximum(1, np.maximum(ends, b) - np.minimum(starts, a))
    dist = np.abs(starts - a) + np.abs(ends - b)
    k = int(np.lexsort((np.arange(len(starts)), dist, -iou))[0])  # iou, then dist, then order
    _STATS[STATUSES[0]] += 1  # parsed
    return int(starts[k]), int(ends[k])


def span_points(text: str, a: int, b: int, span: str, grammar: str | None) -> tuple[int, int]:
    """The middle's (start, end) for `span`, from the character cuts a <= b."""
    if span == "char":
        return a, b
    if span == "line":
        return line_points(text, a, b)
    check_span(span)
    return ast_points(text, a, b, grammar) or (a, b)
