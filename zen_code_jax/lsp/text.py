"""Documents as the language server sees them: LSP lines, position encodings, edits, modes.

LSP positions are (line, character) where lines end at `\\n`, `\\r\\n` or `\\r` only (not at
the other characters Python's `str.splitlines` breaks on, such as form feed or U+2028,
which do occur in source files), and `character` counts UTF-16 code units unless the
client and server agreed on `utf-8` or `utf-32` at initialize (`positionEncoding`). So
this module keeps its own line arithmetic instead of `str.splitlines`.

The model reads `\\n` line ends (training text is what repositories hold, overwhelmingly
`\\n`), so a CRLF document is shown to the model with `\\n` and the completion is written
back with the document's own line end (`Document.eol`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

ENCODINGS = ("utf-16", "utf-8", "utf-32")
_EOL = re.compile(r"\r\n|\r|\n")


def line_starts(text: str) -> list[int]:
    """Code-point offsets where each LSP line starts (line 0 at 0)."""
    return [0, *(m.end() for m in _EOL.finditer(text))]


def _units(ch: str, encoding: str) -> int:
    if encoding == "utf-8":
        return len(ch.encode("utf-8"))
    if encoding == "utf-16":
        return 2 if ord(ch) > 0xFFFF else 1
    return 1


def line_end(text: str, start: int) -> int:
    """Offset of the end of the line starting at `start`, before its line terminator."""
    m = _EOL.search(text, start)
    return m.start() if m else len(text)


def offset_at(text: str, line: int, character: int, encoding: str = "utf-16") -> int:
    """Code-point offset of an LSP position in `text`.

    A line past the end maps to the end of the text and a character past the line's end to
    the line's end (the LSP rule); a position inside a surrogate pair or a UTF-8 sequence
    maps to the start of that character.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"Position encoding {encoding!r} is unknown; use one of {ENCODINGS}.")
    starts = line_starts(text)
    if line >= len(starts):
        return len(text)
    start = starts[line]
    end = line_end(text, start)
    if encoding == "utf-32":
        return min(start + character, end)
    used, i = 0, start
    while i < end:
        n = _units(text[i], encoding)
        if used + n > character:
            break
        used += n
        i += 1
    return i


def position_at(text: str, offset: int, encoding: str = "utf-16") -> tuple[int, int]:
    """The LSP (line, character) of a code-point offset (inverse of `offset_at`)."""
    starts = line_starts(text)
    line = max(i for i, s in enumerate(starts) if s <= offset)
    start = starts[line]
    return line, sum(_units(c, encoding) for c in text[start:offset])


@dataclasses.dataclass
class Document:
    """One open document: its text exactly as the client has it, and its version."""

    uri: str
    text: str
    version: int = 0
    language_id: str = ""

    @property
    def eol(self) -> str:
        """The document's line end: the first one it uses (`\\n` when it has none)."""
        m = _EOL.search(self.text)
        return m.group(0) if m else "\n"

    def apply(self, start: tuple[int, int] | None, end: tuple[int, int] | None, new: str, enc: str):
        """Apply one `didChange` content change: a range edit, or the whole text (no range)."""
        if start is None or end is None:
            self.text = new
            return
        a = offset_at(self.text, *start, enc)
        b = offset_at(self.text, *end, enc)
        self.text = self.text[:a] + new + self.text[max(a, b) :]


@dataclasses.dataclass(frozen=True)
class Cursor:
    """The model's view of a document at a position: `\\n` line ends, prefix and suffix."""

    prefix: str
    suffix: str
    eol: str  # the document's line end, for writing the completion back
    line_rest: str  # what follows the cursor on its line (without the line end)


def normalize_eol(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def cursor(doc: Document, line: int, character: int, encoding: str) -> Cursor:
    """Split `doc` at an LSP position into the (LF-normalized) prefix and suffix."""
    off = offset_at(doc.text, line, character, encoding)
    rest = doc.text[off : line_end(doc.text, off)]
    return Cursor(normalize_eol(doc.text[:off]), normalize_eol(doc.text[off:]), doc.eol, rest)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def is_multiline(cur: Cursor) -> bool:
    """Whether the completion at `cur` may span lines (the issue's rule).

    Text after the cursor on its line -> a single line (finish this line). A cursor at the
    end of a line that holds nothing else (only indentation), in a block that has no body
    yet (the next non-blank line is indented less, or there is none) -> several lines.
    Anything else (the middle of a written block, the end of a non-empty line) -> one line.
    """
    if cur.line_rest.strip():
        return False
    line_before = cur.prefix.rsplit("\n", 1)[-1]
    if line_before.strip():
        return False
    following = [ln for ln in cur.suffix.split("\n")[1:] if ln.strip()]
    return not following or _indent(following[0]) < len(line_before)


def shape_completion(text: str, cur: Cursor, multiline: bool) -> str:
    """The completion as inserted: one line, or the lines of the cursor's block.

    A multi-line completion ends before the first non-blank line indented less than the
    cursor's line (it would leave the block, as llama.cpp's `n_indent`); trailing blank
    lines are dropped. The document's line end replaces `\\n`.
    """
    if not multiline:
        text = text.split("\n", 1)[0]
    else:
        indent = len(cur.prefix.rsplit("\n", 1)[-1])
        lines = text.split("\n")
        kept = lines[:1]
        for ln in lines[1:]:
            if ln.strip() and _indent(ln) < indent:
                break
            kept.append(ln)
        while len(kept) > 1 and not kept[-1].strip():
            kept.pop()
        text = "\n".join(kept)
    if cur.line_rest and text.endswith(cur.line_rest):
        text = text[: len(text) - len(cur.line_rest)]  # the model rewrote what follows
    return text.replace("\n", cur.eol) if cur.eol != "\n" else text


def stops_for(multiline: bool) -> Sequence[str]:
    """Stop strings sent to the backend: a newline ends a single-line completion early."""
    return ("\n\n\n",) if multiline else ("\n",)
