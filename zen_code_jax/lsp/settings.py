"""The language server's settings: `initializationOptions` and `didChangeConfiguration`.

Clients send either the settings object itself or one nested under `"zenCode"` (VS Code's
and lsp-mode's convention of a section per server); both are accepted. Keys are
camelCase as in every LSP client's configuration; an unknown key or a bad value is an
error message naming it, never silently ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

MULTILINE = ("auto", "always", "never")
COMPLETION_ITEMS = ("auto", "always", "never")


@dataclasses.dataclass(frozen=True)
class Settings:
    """debounceMs: wait this long after a request before decoding (a newer request for the
    same document in the meantime wins); maxTokensSingleLine / maxTokensMultiLine:
    completion budgets; contextTokens: tokens of repository context at most;
    recentDocuments: recently edited open documents that may join the imported files;
    maxPrefixChars / maxSuffixChars: text around the cursor sent at most;
    multiline: "auto" (the cursor's position decides), "always", "never";
    completionItems: answer `textDocument/completion` "auto" (only for clients without
    inline completion, so a client with both does not decode twice), "always", "never"."""

    debounceMs: int = 25
    maxTokensSingleLine: int = 32
    maxTokensMultiLine: int = 128
    contextTokens: int = 1024
    recentDocuments: int = 3
    maxPrefixChars: int = 6000
    maxSuffixChars: int = 2000
    temperature: float = 0.0
    multiline: str = "auto"
    completionItems: str = "auto"

    def updated(self, raw: Any) -> Settings:
        """These settings with the keys of `raw` replaced (validated)."""
        if raw is None:
            return self
        if not isinstance(raw, dict):
            raise ValueError(f"settings must be a JSON object, got {type(raw).__name__}.")
        if isinstance(raw.get("zenCode"), dict):
            raw = raw["zenCode"]
        fields = {f.name: f for f in dataclasses.fields(self)}
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in fields:
                raise ValueError(f"Unknown setting {key!r}; known settings: {sorted(fields)}.")
            want = type(getattr(self, key))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or isinstance(value, bool):
                raise ValueError(f"Setting {key!r} must be a {want.__name__}, got {value!r}.")
            if want is int and value < 0:
                raise ValueError(f"Setting {key!r} must be >= 0, got {value}.")
            out[key] = value
        for key, allowed in (("multiline", MULTILINE), ("completionItems", COMPLETION_ITEMS)):
            if out.get(key, getattr(self, key)) not in allowed:
                raise ValueError(f"Setting {key!r} must be one of {allowed}.")
        return dataclasses.replace(self, **out)
