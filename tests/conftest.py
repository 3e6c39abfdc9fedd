"""Test setup: 8 simulated CPU devices, float32 matmuls, and shared fixtures.

XLA_FLAGS must be set before jax is first imported, so it lives here.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# ------------------------------------------------------------------------- shared fixtures
# Everything below is imported after the environment above is set (jax is already loaded).
import sysconfig  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from zen_code_jax.data.corpus import (  # noqa: E402
    HELDOUT_SPLIT,
    SPLITS,
    TRAIN_SPLIT,
    Manifest,
    Mixture,
    check_split,
    mixture_weights,
)
from zen_code_jax.data.prepare_finish import summarize_split  # noqa: E402
from zen_code_jax.data.tokenizer import Tokenizer  # noqa: E402

# The stdlib packages behind the shared records: small (~20 files) but real code.
STDLIB_PACKAGES = ("json", "urllib", "wsgiref")
TINY_VOCAB = 512


def record(
    repo: str, path: str, content: str, language: str = "Python", domain: str = "code"
) -> dict[str, str]:
    """One corpus record as `PreparedCorpus.source` yields it (language names normalized)."""
    return {"repo": repo, "path": path, "content": content, "language": language, "domain": domain}


class FakeCorpus:
    """An in-memory `zen_code_jax.data.corpus.Corpus`: every method `PreparedCorpus` has.

    Records are sorted by (repo, path) per split like a prepared corpus's, and the groups,
    group statistics, repository ranges and manifest entries come from the same code that
    writes a prepared corpus (`prepare_finish.summarize_split`), so the pipeline and the mixture
    see exactly what they would see on disk. `tokenizer` may be None for tests that bring
    their own (a character tokenizer, say).
    """

    def __init__(
        self,
        tokenizer: Tokenizer | None = None,
        train: Sequence[dict[str, str]] = (),
        heldout: Sequence[dict[str, str]] = (),
    ):
        key = lambda r: (r["repo"], r["path"])  # noqa: E731
        self._tokenizer = tokenizer
        self._splits = {
            TRAIN_SPLIT: sorted(train, key=key),
            HELDOUT_SPLIT: sorted(heldout, key=key),
        }
        self._summaries = {s: summarize_split(self._splits[s]) for s in SPLITS}
        self.manifest = Manifest(
            source="memory",
            splits={s: self._summaries[s].info for s in SPLITS},
            repos={s: self._summaries[s].repo_ranges for s in SPLITS},
            tokenizer={} if tokenizer is None else {"vocab_size": tokenizer.vocab_size},
        )

    @classmethod
    def synthetic(
        cls,
        n_repos: int = 4,
        n_files: int = 3,
        n_lines: int = 30,
        tokenizer: Tokenizer | None = None,
        split: str = HELDOUT_SPLIT,
    ) -> "FakeCorpus":
        """`n_repos` repositories of `n_files` generated modules, all in one split (held-out
        by default): the corpus the evaluation tests score against."""
        recs = []
        for r in range(n_repos):
            for f in range(n_files):
                lines = [f"# module {f} of repo {r}\n"]
                for k in range(n_lines):
                    lines.append(f"value_{r}_{f}_{k} = compute({k}, {r * 7 + f})\n")
                    if k % 7 == 3:
                        lines.append("\n")
                recs.append(record(f"repo{r}", f"pkg/mod{f}.py", "".join(lines)))
        check_split(split)
        return cls(tokenizer, **{split: recs})

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer  # type: ignore[return-value]

    @property
    def records(self) -> list[dict[str, str]]:
        """All records, train split first (a `synthetic` corpus: its one split)."""
        return [r for s in SPLITS for r in self._splits[s]]

    def source(self, split: str = TRAIN_SPLIT) -> list[dict[str, str]]:
        check_split(split)
        return self._splits[split]

    def repos(self, split: str = TRAIN_SPLIT) -> list[tuple[str, int, int]]:
        check_split(split)
        return [tuple(r) for r in self._summaries[split].repo_ranges]  # type: ignore[misc]

    def groups(self, split: str = TRAIN_SPLIT) -> tuple[list[str], np.ndarray]:
        check_split(split)
        s = self._summaries[split]
        return list(s.info["groups"]), s.group_ids

    def group_stats(self, split: str = TRAIN_SPLIT) -> dict[str, dict[str, int]]:
        check_split(split)
        return self._summaries[split].info["group_stats"]

    def mixture(self, data_cfg: Any, split: str = TRAIN_SPLIT) -> Mixture:
        return mixture_weights(self, data_cfg, split)

    def __repr__(self) -> str:
        n = {s: len(v) for s, v in self._splits.items()}
        return f"FakeCorpus(train={n['train']} records, heldout={n['heldout']} records)"


@pytest.fixture(scope="session")
def stdlib_records() -> list[dict[str, str]]:
    """The .py files of a few stdlib packages, one repository per package."""
    root = Path(sysconfig.get_paths()["stdlib"])
    recs = []
    for pkg in STDLIB_PACKAGES:
        for f in sorted((root / pkg).glob("*.py")):
            recs.append(record(pkg, str(f.relative_to(root)), f.read_text(encoding="utf-8")))
    return recs


@pytest.fixture(scope="session")
def tiny_tokenizer(stdlib_records) -> Tokenizer:
    """A 512-id tokenizer trained once per run on `stdlib_records` (the project's trainer)."""
    return Tokenizer.train([r["content"] for r in stdlib_records], TINY_VOCAB)


@pytest.fixture(scope="session")
def fake_corpus(tiny_tokenizer, stdlib_records) -> FakeCorpus:
    """`stdlib_records` for training and their first four files held out."""
    return FakeCorpus(tiny_tokenizer, stdlib_records, heldout=stdlib_records[:4])
