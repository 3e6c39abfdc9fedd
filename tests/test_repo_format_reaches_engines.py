"""The run's repository format reaches evaluation and serving (issue 17's bug).

A smoke run trained with `data.repo_format=qwen2.5` on our own tokenizer lays out its
repository windows with `<|repo_name|>` / `<|file_sep|>` sentinels. Evaluation (the
repo_completion task behind `eval.runner.score_checkpoint`, the path of
`python -m zen_code_jax.eval --run_dir=RUN`) and the server (`infer.__main__.build_engine`,
the path of `python -m zen_code_jax.infer --run_dir=RUN`) must build their repository
prompts exactly as training built its windows, token for token, instead of falling back
to the report layout (`# File: path` headers) the model never saw.

The expected tokens come from `data.repo_window.repo_windows`, the function that makes the
training windows, on the same files.
"""

from __future__ import annotations

import pytest
from test_experiments import ok, run_cli, smoke_workdir

from zen_code_jax.data.import_graph import order_files
from zen_code_jax.data.repo_format import RepoFormat
from zen_code_jax.data.repo_window import repo_windows

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BIG = 1 << 20  # one window holds the whole repository: nothing is cut


@pytest.fixture(scope="module")
def qwen_run(tmp_path_factory):
    """A 2-step smoke run in repository mode with data.repo_format=qwen2.5 (our tokenizer)."""
    wd = tmp_path_factory.mktemp("repo_format_wd")
    (wd / "corpus").symlink_to(smoke_workdir(tmp_path_factory) / "corpus")
    ok(
        run_cli(
            wd,
            "experiments/repo_ft_ablation.py:smoke",
            "--arm=base",
            "--mode=train",
            "--config.data.mode=repo",
            "--config.data.repo_format=qwen2.5",
            "--config.train.steps=2",
            devices=1,
        )
    )
    return wd, wd / "repo_ft_ablation" / "base"


class _Captured(Exception):
    """Raised by the recording `complete`: the prompts are all the test needs."""


def _repo_files(corpus, repo: str, target: str) -> tuple[list[tuple[str, str]], str]:
    """(the repository's other files in dependency order, the target's content)."""
    src = corpus.source("heldout")
    (a, b) = next((a, b) for name, a, b in corpus.repos("heldout") if str(name) == repo)
    files = {src[i]["path"]: src[i]["content"] for i in range(a, b)}
    content = files.pop(target)
    return [(p, files[p]) for p in order_files(list(files.items()))], content


@pytest.fixture(scope="module")
def run_corpus(qwen_run):
    """(run dir, its config, its prepared corpus) of the qwen2.5 smoke run."""
    from zen_code_jax.config import config_from_dict
    from zen_code_jax.data.prepare import prepare_corpus
    from zen_code_jax.rundir import RunDir

    wd, run = qwen_run
    config = config_from_dict(RunDir(run).read_config())
    assert config.data.repo_format == "qwen2.5" and config.data.mode == "repo"
    corpus = prepare_corpus(config.data, config.model.vocab_size, str(wd))
    assert getattr(corpus.tokenizer, "family", None) is None  # our own tokenizer, not an HF one
    return run, config, corpus


def test_repo_completion_prompts_are_the_training_layout(run_corpus, monkeypatch):
    """`score_checkpoint` (the eval CLI's path) scores repo_completion on training's layout."""
    from zen_code_jax.eval import repo_completion
    from zen_code_jax.eval.runner import score_checkpoint
    from zen_code_jax.infer import engine as engine_mod

    run, config, corpus = run_corpus
    tok, fmt = corpus.tokenizer, RepoFormat("qwen2.5")

    # Evaluation: record the token prompts repo_completion hands the engine.
    seen: list[list[int]] = []

    def record(self, requests):
        seen.extend(list(r.prompt_ids) for r in requests)
        raise _Captured

    monkeypatch.setattr(engine_mod.InferenceEngine, "complete", record)
    limit = 3
    with pytest.raises(_Captured):
        score_checkpoint(
            run,
            ["repo_completion"],
            overrides={"eval.limit": limit, "eval.context_tokens": BIG},
        )
    monkeypatch.undo()
    exs = repo_completion.sample_examples(corpus, limit, int(config.seed))
    assert len(seen) == len(exs)  # the first setting, cross_file_first, one row each
    for ex, prompt in zip(exs, seen):
        others, content = _repo_files(corpus, ex["repo"], ex["path"])
        (window,) = repo_windows([*others, (ex["path"], content)], tok, None, BIG, fmt=fmt,
                                 repo=ex["repo"])  # fmt: skip
        head = len(fmt.context_ids(others, tok, ex["repo"])) + len(fmt.header_ids(ex["path"], tok))
        assert window[0] == tok.repo_name_id
        expected = [*window[:head].tolist(), *tok.encode(ex["in_file"])]
        assert prompt == expected, (
            f"repo_completion prompt for {ex['path']} is not the training layout:\n"
            f"  got      {tok.decode(prompt[:40])!r}...\n  expected {tok.decode(expected[:40])!r}..."
        )


def test_served_fim_prompt_is_the_training_layout(run_corpus):
    """The engine `python -m zen_code_jax.infer --run_dir=RUN` serves builds a repository
    FIM prompt (the completions API's `context` / `path` / `repo`) as training did."""
    from zen_code_jax.eval import repo_completion
    from zen_code_jax.infer.__main__ import build_engine, parse_args

    run, config, corpus = run_corpus
    tok, fmt = corpus.tokenizer, RepoFormat("qwen2.5")
    engine, _ = build_engine(parse_args([f"--run_dir={run}"]))
    ex = repo_completion.sample_examples(corpus, 1, int(config.seed))[0]
    others, content = _repo_files(corpus, ex["repo"], ex["path"])
    (window,) = repo_windows([*others, (ex["path"], content)], tok, 0, BIG, fim_rate=1.0,
                             spm_rate=0.0, fmt=fmt, repo=ex["repo"])  # fmt: skip
    w = window.tolist()
    p, s, m = (w.index(i) for i in (tok.fim_prefix_id, tok.fim_suffix_id, tok.fim_middle_id))
    assert p < s < m
    prefix, suffix = tok.decode(w[p + 1 : s]), tok.decode(w[s + 1 : m])
    assert suffix.endswith(fmt.trailer())  # training's suffix carries the file's trailer
    prompt = engine.fim_prompt_ids(
        prefix, suffix[: len(suffix) - len(fmt.trailer())], "psm", context=others,
        path=ex["path"], repo=ex["repo"],
    )  # fmt: skip
    assert prompt == w[: m + 1], (
        "the served FIM prompt is not the training layout:\n"
        f"  got      {tok.decode(prompt[:40])!r}...\n  expected {tok.decode(w[:40])!r}..."
    )
