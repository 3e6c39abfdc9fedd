"""Unified diffs in model output: find them, parse them, apply them to given file contents.

Used by the SWE-bench task to say, before the official Docker harness runs, whether a
prediction is a well-formed patch and whether it applies to the files the prompt showed.
Applying is strict: every hunk's old lines (context and removals) must appear verbatim and
in order in the file (searched nearest to the hunk's stated start, after the previous hunk,
as `git apply` does without fuzz); the hunk header's line counts are checked and reported
but, as GNU `patch` (the harness's last resort) tolerates miscounted hunks, not required.
"""

from __future__ import annotations

import dataclasses
import re

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_TAGGED = re.compile(r"<(patch|diff)>\n?(.*?)(?:</\1>|\Z)", re.DOTALL)
_FENCED = re.compile(r"```([\w+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_START = re.compile(r"^(diff --git |--- .*\n\+\+\+ )", re.MULTILINE)


@dataclasses.dataclass
class Hunk:
    """One hunk: its header (old start, stated old and new line counts) and its lines as
    (op, text), op in ' ', '-', '+'."""

    old_start: int
    stated: tuple[int, int]
    lines: list[tuple[str, str]]

    @property
    def counts_ok(self) -> bool:
        """Whether the header's line counts agree with the body (git apply needs that)."""
        return self.stated == (len(self.old), len(self.new))

    @property
    def old(self) -> list[str]:
        return [t for op, t in self.lines if op != "+"]

    @property
    def new(self) -> list[str]:
        return [t for op, t in self.lines if op != "-"]


@dataclasses.dataclass
class FilePatch:
    """The hunks of one file; `source` / `target` are repository paths or None (/dev/null)."""

    source: str | None
    target: str | None
    hunks: list[Hunk] = dataclasses.field(default_factory=list)

    @property
    def path(self) -> str:
        return self.source or self.target or ""


def extract_diff(output: str) -> str:
    """The diff in a model output: a <patch>/<diff> block (its closing tag optional, as a
    stop sequence may have cut it), else a ```diff / ```patch fence, else any fenced block
    that holds a diff, else the raw text; from its first `diff --git` line, or `---` line
    followed by a `+++` line, on ("" if there is none)."""
    candidates = [m.group(2) for m in _TAGGED.finditer(output)]
    fenced = list(_FENCED.finditer(output))
    candidates += [m.group(2) for m in fenced if m.group(1) in ("diff", "patch")]
    candidates += [m.group(2) for m in fenced if m.group(1) not in ("diff", "patch")]
    candidates.append(output)
    for text in candidates:
        m = _START.search(text)
        if m:
            diff = text[m.start() :]
            return diff if diff.endswith("\n") else diff + "\n"
    return ""


def _path(header: str) -> str | None:
    name = header.split("\t")[0].strip()
    if name == "/dev/null":
        return None
    return name[2:] if name[:2] in ("a/", "b/") else name


def parse_patch(diff: str) -> list[FilePatch]:
    """The file patches of a unified diff (ValueError naming the first problem when it is not
    one: no file header, a hunk outside a file, a file without hunks, a hunk that changes
    nothing)."""
    files: list[FilePatch] = []
    hunk: Hunk | None = None
    lines = diff.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            files.append(FilePatch(_path(line[4:]), _path(lines[i + 1][4:])))
            hunk = None
            i += 2
            continue
        m = _HUNK.match(line)
        if m:
            if not files:
                raise ValueError(f"hunk before any ---/+++ file header: {line!r}")
            stated = (int(m.group(2) or 1), int(m.group(4) or 1))
            hunk = Hunk(int(m.group(1)), stated, [])
            files[-1].hunks.append(hunk)
        elif hunk is not None and line[:1] in (" ", "-", "+"):
            hunk.lines.append((line[0], line[1:]))
        elif hunk is not None and line == "":
            hunk.lines.append(("=", ""))  # an empty context line whose space was dropped?
        elif hunk is not None and line.startswith("\\"):
            pass  # "\ No newline at end of file"
        else:
            hunk = None  # diff --git / index / mode lines, or chatter between files
        i += 1
    if not files:
        raise ValueError("no ---/+++ file header")
    for f in files:
        if not f.hunks:
            raise ValueError(f"{f.path}: a file header without hunks")
        for h in f.hunks:
            while h.lines and h.lines[-1][0] == "=":
                h.lines.pop()  # no: blank lines after a hunk separate, they are not context
            h.lines = [(" " if op == "=" else op, t) for op, t in h.lines]
            if not any(op != " " for op, _ in h.lines):
                raise ValueError(f"{f.path}: a hunk at line {h.old_start} changes nothing")
    return files


def apply_file(content: str, patch: FilePatch) -> str:
    """`content` with `patch`'s hunks applied (ValueError naming the hunk that does not
    match exactly)."""
    lines = content.split("\n")
    out: list[str] = []
    pos = 0  # next unconsumed line of `lines`
    for h in patch.hunks:
        old = h.old
        want = max(h.old_start - 1, 0)
        starts = [
            s for s in range(pos, len(lines) - len(old) + 1) if lines[s : s + len(old)] == old
        ]
        if not old:  # pure insertion: at the stated line
            starts = [min(max(want, pos), len(lines))]
        if not starts:
            first = old[0][:60] if old else ""
            raise ValueError(
                f"{patch.path}: hunk @@ -{h.old_start} does not match the file "
                f"(its old lines, from {first!r}, are not in it)"
            )
        s = min(starts, key=lambda x: abs(x - want))
        out += lines[pos:s] + h.new
        pos = s + len(old)
    return "\n".join(out + lines[pos:])


def check_patch(
    files: list[FilePatch], given: dict[str, str | None]
) -> tuple[bool | None, list[str], str]:
    """Whether the patch applies to the given files: (applies, checked paths, error).
    `given` maps a path to its full content, or to None when only part of it was shown.
    applies is None when no file the patch touches was given in full."""
    checked = []
    for f in files:
        content = given.get(f.path)
        if f.source is None:  # a new file: it must not exist
            if f.path in given:
                return False, checked + [f.path], f"{f.path}: created, but it exists"
            continue
        if content is None:
            continue
        checked.append(f.path)
        try:
            result = apply_file(content, f)
        except ValueError as e:
            return False, checked, str(e)
        if f.target is None and result.strip():
            return False, checked, f"{f.path}: deleted, but lines would remain"
    return (True if checked else None), checked, ""
