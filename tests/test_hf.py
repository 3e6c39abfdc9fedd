"""HF Qwen2 checkpoints and tokenizers in and out, against transformers (offline).

Fixtures (built once per session here, never downloaded): random Qwen2 models saved by
`save_pretrained(max_shard_size=...)` into >= 3 shards, biases and norms perturbed (the
default init, ones and zeros, hides transposition bugs), tied and untied; a byte-level
BPE `tokenizer.json` trained with `tokenizers` on stdlib text, carrying Qwen2.5-Coder's
special tokens at their real ids (151643...151664) inside a vocab padded to 151,936.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zen_code_jax.checkpoint import restore_for_inference
from zen_code_jax.data.hf_tokenizer import HFTokenizer, check_repo_format
from zen_code_jax.data.tokenizer import Tokenizer
from zen_code_jax.data.tokenizer_base import TokenizerError
from zen_code_jax.data.tokenizer_load import load_tokenizer
from zen_code_jax.hf.checkpoint import HFFormatError
from zen_code_jax.hf.transfer import export_run, import_hf, load_hf
from zen_code_jax.model.transformer import Transformer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 151_936  # Qwen2's padded embedding
QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
    "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip
FIRST_SPECIAL = 151_643


def _stdlib_texts() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((stdlib / "json").glob("*.py")) + sorted((stdlib / "email").glob("*.py"))
    return [f.read_text(encoding="utf-8") for f in files]


def build_tokenizer_json(out: Path) -> None:
    """Byte-level BPE on stdlib text, filled to Qwen's 151,643 base ids, + its specials."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    base = HFTok(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    base.train_from_iterator(_stdlib_texts(), trainer)
    model = json.loads(base.to_str())["model"]
    vocab = dict(model["vocab"])
    for k in range(len(vocab), FIRST_SPECIAL):  # unreachable filler pieces (no merges)
        vocab[f"<unused{k}>"] = k
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = HFTok(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(QWEN_SPECIALS)
    assert tok.token_to_id("<|fim_prefix|>") == 151_659
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))


def build_hf_model(out: Path, *, tied: bool, dtype=None, vocab: int = VOCAB, layers: int = 2):
    cfg = transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_theta=10_000.0, tie_word_embeddings=tied, use_sliding_window=False,
        bos_token_id=FIRST_SPECIAL, eos_token_id=FIRST_SPECIAL,
    )  # fmt: skip
    torch.manual_seed(1 if tied else 0)
    m = transformers.Qwen2ForCausalLM(cfg).to(dtype or torch.float32).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n or "bias" in n:
                p.add_(torch.randn_like(p) * 0.3)
    m.save_pretrained(out, max_shard_size="40KB")
    return m


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hf")
    build_tokenizer_json(root / "tok")
    out = {}
    for tied in (False, True):
        d = root / ("tied" if tied else "untied")
        m = build_hf_model(d, tied=tied)
        shutil.copy(root / "tok" / "tokenizer.json", d / "tokenizer.json")
        assert len(list(d.glob("model-*.safetensors"))) >= 3
        out[tied] = (d, m)
    out["root"] = root
    return out


def _ours(params, cfg, tokens, positions=None, segments=None) -> np.ndarray:
    logits = Transformer(cfg).apply(
        {"params": params},
        jnp.asarray(tokens),
        None if positions is None else jnp.asarray(positions),
        None if segments is None else jnp.asarray(segments),
    )
    return np.asarray(logits, np.float32)


def _hf(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


@pytest.fixture(scope="session")
def imported(fixtures, tmp_path_factory) -> dict:
    out = {}
    for tied in (False, True):
        run = tmp_path_factory.mktemp("run") / ("tied" if tied else "untied")
        import_hf(fixtures[tied][0], run)
        out[tied] = run
    return out


@pytest.mark.parametrize("tied", [False, True])
def test_import_logits_match_hf_unpacked_and_packed(fixtures, imported, tied):
    _, model = fixtures[tied]
    params, cfg, tok, _ = restore_for_inference(imported[tied])
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == VOCAB == cfg.vocab_size
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, (2, 24))
    np.testing.assert_allclose(_ours(params, cfg, tokens), _hf(model, tokens), atol=1e-4, rtol=0)
    # Packed: two documents in one row; each must equal HF run on that document alone.
    a, b = tokens[0, :10], tokens[1, :14]
    packed = np.concatenate([a, b])[None]
    pos = np.concatenate([np.arange(10), np.arange(14)])[None]
    seg = np.concatenate([np.ones(10), 2 * np.ones(14)]).astype(np.int32)[None]
    got = _ours(params, cfg, packed, pos, seg)[0]
    np.testing.assert_allclose(got[:10], _hf(model, a[None])[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[10:], _hf(model, b[None])[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("tied", [False, True])
def test_export_from_pretrained_strict_and_reimport_bitwise(fixtures, imported, tied, tmp_path):
    out = export_run(imported[tied], tmp_path / "export", max_shard_size="40KB")
    assert len(list(out.glob("model-*.safetensors"))) >= 3
    assert (out / "model.safetensors.index.json").is_file() and (out / "tokenizer.json").is_file()
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, output_loading_info=True, dtype=torch.float32
    )
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    tokens = np.random.default_rng(1).integers(0, VOCAB, (2, 16))
    np.testing.assert_allclose(_hf(model, tokens), _hf(fixtures[tied][1], tokens), atol=1e-5)
    params, cfg, _, _ = restore_for_inference(imported[tied])
    np.testing.assert_allclose(_ours(params, cfg, tokens), _hf(model, tokens), atol=1e-4, rtol=0)
    again, _, _ = load_hf(out)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(again), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        assert np.array_equal(np.asarray(x), np.asarray(y))
    # The HF tokenizer round-trips through the export too.
    assert (
        HFTokenizer.from_dir(out).fingerprint()
        == load_tokenizer(imported[tied] / "tokenizer").fingerprint()
    )


def test_greedy_generation_matches_transformers(fixtures, imported):
    """Our KV-cache decoder (prefill + one token per step) vs transformers generate."""
    from zen_code_jax.infer.engine import CompletionRequest, InferenceEngine

    _, model = fixtures[False]
    engine = InferenceEngine.from_run(str(imported[False]))
    tok = engine.tokenizer
    prompts = [tok.encode("def add(a, b):\n    return"), tok.encode("import json\n")]
    done = engine.complete([CompletionRequest(p, 16) for p in prompts])
    for prompt, c in zip(prompts, done):
        with torch.no_grad():
            ref = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=16,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )[0, len(prompt) :].tolist()
        ours = list(c.token_ids)
        assert ours == ref[: len(ours)]
        assert len(ours) == 16 or ref[len(ours)] == tok.eot_id  # stopped at <|endoftext|>


def test_bf16_checkpoint_stays_bf16(tmp_path, fixtures):
    d = tmp_path / "bf16"
    build_hf_model(d, tied=False, dtype=torch.bfloat16)
    shutil.copy(fixtures["root"] / "tok" / "tokenizer.json", d / "tokenizer.json")
    params, cfg, _ = load_hf(d)
    assert cfg.param_dtype == "bfloat16"
    assert {str(np.asarray(x).dtype) for x in jax.tree.leaves(params)} == {"bfloat16"}


def test_load_on_a_sharded_mesh_matches(fixtures, tmp_path):
    """8 simulated devices, fsdp x tensor sharding: the same values as on one device."""
    code = f"""
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, numpy as np
from zen_code_jax.hf.transfer import load_hf
from zen_code_jax.parallel import make_mesh
from zen_code_jax.hf import load
load.CHUNK_BYTES = 1 << 18  # force the chunked path for the big leaves too
mesh = make_mesh({{"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1}})
p, cfg, _ = load_hf({str(fixtures[False][0])!r}, mesh=mesh)
q, _, _ = load_hf({str(fixtures[False][0])!r})
n = 0
for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
    assert np.array_equal(np.asarray(x), np.asarray(y))
    n += len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
assert n > 5, n
print("OK", n)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


# ----------------------------------------------------------------------------- bad input
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(d: Path, **kv) -> None:
    c = json.loads((d / "config.json").read_text())
    c.update(kv)
    (d / "config.json").write_text(json.dumps(c))


def _cases(src: Path, tmp: Path):
    d = _copy(src, tmp / "missing_shard")
    sorted(d.glob("model-*.safetensors"))[1].unlink()
    yield d, r"model-00002-of-\d+\.safetensors.*shard is missing"
    d = _copy(src, tmp / "index_missing_file")
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    idx["weight_map"]["model.norm.weight"] = "nowhere.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    yield d, "names nowhere.safetensors"
    d = _copy(src, tmp / "wrong_shape")
    _edit_config(d, intermediate_size=48)
    yield d, r"mlp\.gate_proj\.weight has shape \(64, 32\).*\(48, 32\)"
    d = _copy(src, tmp / "sliding")
    _edit_config(d, use_sliding_window=True, sliding_window=64)
    yield d, "config.json: use_sliding_window"
    d = _copy(src, tmp / "rope")
    _edit_config(
        d,
        rope_scaling={"rope_type": "yarn", "factor": 4.0},
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4},
    )
    yield d, "config.json: RoPE scaling 'yarn'"
    d = _copy(src, tmp / "moe")
    _edit_config(d, num_experts=8)
    yield d, "mixture-of-experts"
    d = _copy(src, tmp / "arch")
    _edit_config(d, model_type="llama")
    yield d, "model_type='llama'"


def test_bad_inputs_are_one_line_errors_and_write_nothing(fixtures, tmp_path):
    src = fixtures[False][0]
    for d, pattern in _cases(src, tmp_path):
        run = tmp_path / f"run_{d.name}"
        with pytest.raises(HFFormatError, match=pattern) as e:
            import_hf(d, run)
        assert "\n" not in str(e.value)
        assert not run.exists() and not list(tmp_path.glob(".tmp-*"))
    # wrong dtype: an integer tensor
    from safetensors.numpy import load_file, save_file

    d = _copy(src, tmp_path / "int")
    f = sorted(d.glob("model-*.safetensors"))[0]
    t = load_file(f)
    save_file({k: v.astype(np.int32) for k, v in t.items()}, str(f), metadata={"format": "pt"})
    with pytest.raises(HFFormatError, match="dtype I32"):
        import_hf(d, tmp_path / "run_int")
    # a tokenizer whose vocab exceeds the embedding
    small = tmp_path / "small"
    build_hf_model(small, tied=True, vocab=4096)
    shutil.copy(fixtures["root"] / "tok" / "tokenizer.json", small / "tokenizer.json")
    with pytest.raises(HFFormatError, match=r"tokenizer\.json.*151665 tokens.*4096"):
        import_hf(small, tmp_path / "run_small")
    assert not (tmp_path / "run_small").exists()
    # The CLI prints the same one line and exits 2.
    r = subprocess.run(
        [sys.executable, "-m", "zen_code_jax.hf", "import", "--hf_dir", str(tmp_path / "moe"),
         "--run_dir", str(tmp_path / "cli_run")], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "mixture-of-experts" in r.stderr


# ----------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="session")
def hf_tok(fixtures) -> HFTokenizer:
    return load_tokenizer(fixtures["root"] / "tok", vocab_size=VOCAB)


def test_hf_tokenizer_sentinels_by_name_and_atomic(hf_tok):
    assert hf_tok.family == "qwen2.5"
    assert (hf_tok.eot_id, hf_tok.fim_prefix_id, hf_tok.fim_middle_id) == (151643, 151659, 151660)
    assert (hf_tok.fim_suffix_id, hf_tok.fim_pad_id) == (151661, 151662)
    assert hf_tok.sentinels["repo_name"] == 151663 and hf_tok.sentinels["file_sep"] == 151664
    for name in QWEN_SPECIALS:
        ids = hf_tok.encode(f"x = '{name}'")
        assert not set(ids) & set(hf_tok._id_to_special), name  # raw text never makes them
        assert hf_tok.decode(ids) == f"x = '{name}'"
    seq = [hf_tok.fim_prefix_id, *hf_tok.encode("a\n"), hf_tok.fim_suffix_id, hf_tok.eot_id]
    assert hf_tok.decode(seq) == "<|fim_prefix|>a\n<|fim_suffix|><|endoftext|>"
    assert hf_tok.decode(seq, skip_special=True) == "a\n"
    assert hf_tok.decode([151700, 151935]) == ""  # padding rows decode to nothing
    assert check_repo_format(hf_tok, "") == "qwen2.5"
    with pytest.raises(TokenizerError, match="data.repo_format='qwen2.5'"):
        check_repo_format(hf_tok, "report")


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.one_of(
            st.characters(codec="utf-8"),
            st.sampled_from(list(" \t\n\r\x00\ufeff\u2581<|>_") + ["😀"]),
        ),
        max_size=200,
    )
)
def test_hf_roundtrip_hypothesis(hf_tok, text):
    """The same corpus strategy as test_tokenizer.py's SentencePiece round trip."""
    ids = hf_tok.encode(text)
    assert hf_tok.decode(ids) == text
    assert all(0 <= i < hf_tok.sp_vocab_size for i in ids)
    assert not set(ids) & set(hf_tok.special_ids)
    assert b"".join(hf_tok.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_tokenizer_load_picks_backend_and_reads_old_run_dirs(hf_tok, tmp_path):
    hf_tok.save(tmp_path / "hf")
    assert load_tokenizer(tmp_path / "hf").fingerprint() == hf_tok.fingerprint()
    sp = Tokenizer.train(_stdlib_texts()[:4], 400)
    sp.save(tmp_path / "sp")
    assert not (tmp_path / "sp" / "tokenizer.json").exists()  # the HF name is not ours any more
    # A run dir from before the rename: metadata in tokenizer.json.
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(tmp_path / "sp" / "tokenizer.model", old / "tokenizer.model")
    shutil.copy(tmp_path / "sp" / "zen_tokenizer_meta.json", old / "tokenizer.json")
    loaded = load_tokenizer(old)
    assert loaded.backend == "sentencepiece" and loaded.fingerprint() == sp.fingerprint()
    with pytest.raises(TokenizerError, match="neither tokenizer.model"):
        load_tokenizer(tmp_path / "nothing")


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_repo_ft_from_hf_smoke_then_eval_and_serve_with_openai(fixtures, tmp_path):
    """A repo-FT arm from the HF fixture (init=hf:PATH, its tokenizer, periodic HF export),
    scored by `python -m zen_code_jax.eval`, served and queried with the real openai client;
    the HF directory itself is also scored (--hf_dir) and served (--hf_dir)."""
    openai = pytest.importorskip("openai")
    from zen_code_jax.eval.__main__ import main as eval_main
    from zen_code_jax.infer.__main__ import build_server

    hf_dir, model = fixtures[False]
    wd = tmp_path / "wd"
    arg = f"smoke,hf={hf_dir},checkpoint.hf_export_every=2"
    r = subprocess.run(
        [
            sys.executable,
            "experiments/run.py",
            f"--config=experiments/repo_ft_from_hf.py:{arg}",
            f"--workdir={wd}",
            "--arm=repo8k",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
    )  # fmt: skip  (one device: the smoke batch of 4 rows)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "initialized params from HF checkpoint" in r.stdout
    run = wd / "repo_ft_from_hf" / "repo8k"
    _, _, tok, config = restore_for_inference(run)
    assert isinstance(tok, HFTokenizer) and config.train.init_checkpoint == f"hf:{hf_dir}"
    # The periodic export loads strictly in transformers.
    exported, info = transformers.AutoModelForCausalLM.from_pretrained(
        run / "hf" / "2", output_loading_info=True
    )
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert eval_main([f"--run_dir={run}", "--tasks=repo_completion", "--limit=2"]) == 0
    assert json.loads((run / "eval" / "summary.json").read_text())["repo_completion"]["step"] == 2
    hf_run = tmp_path / "hf_scored"
    assert eval_main([f"--hf_dir={hf_dir}", f"--run_dir={hf_run}", "--tasks=humaneval",
                      "--limit=1", "--max_new_tokens=4"]) == 0  # fmt: skip
    assert "humaneval" in json.loads((hf_run / "eval" / "summary.json").read_text())
    for flags in ([f"--run_dir={run}"], [f"--hf_dir={hf_dir}"]):
        srv = build_server([*flags, "--port=0", "--max_batch_size=2", "--model_name=m"])
        srv.start()
        try:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
            out = client.completions.create(
                model="m", prompt="def add(a, b):", max_tokens=6, temperature=0
            )
            expect = srv.engine.generate(["def add(a, b):"], max_new_tokens=6)[0]
            assert out.choices[0].text == expect and out.usage.completion_tokens >= 1
        finally:
            srv.shutdown()
    # The last server served the HF directory: its greedy text is transformers' greedy text.
    prompt = tok.encode("def add(a, b):")
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()  # fmt: skip
    assert expect == tok.decode(ref)[: len(expect)]


@pytest.mark.slow
def test_streaming_import_peak_host_memory_200m():
    """~200M-parameter random bf16 model in 3 shards: peak anonymous memory above the
    process baseline <= resident parameters + 1.2 x the largest tensor (the bound of the
    issue), and the parameters stay bf16 (resident bytes == checkpoint bytes)."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "hf_import.py"), "--size=200M",
         "--phases=ours_import", "--json"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["shards"] >= 3 and res["params"] > 190e6
    ours = res["ours_import"]
    assert ours["resident_param_bytes"] == res["bytes"]  # bf16 stayed bf16
    bound = ours["resident_param_bytes"] + 1.2 * res["largest_tensor_bytes"]
    assert ours["peak_anon_above_base"] <= bound, (ours, bound)
