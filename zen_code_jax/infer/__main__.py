"""Serve a checkpoint (or a random model) over the OpenAI-compatible completions API.

  python -m zen_code_jax.infer --run_dir=WORKDIR/<experiment>/<arm> --port=8000
  python -m zen_code_jax.infer --hf_dir=DIR --port=8000            # an HF Qwen2 directory
  python -m zen_code_jax.infer --random_preset=tiny --port=8000   # no checkpoint: for testing
  python -m zen_code_jax.infer --run_dir=RUN --speculative=model --draft=STUDENT_RUN
  python -m zen_code_jax.infer --run_dir=RUN --speculative=ngram   # prompt lookup

Listens on 127.0.0.1 unless --host says otherwise; set --api_key (or ZEN_API_KEY) before
exposing it. Start-up loads the parameters only (no optimizer moments) onto --mesh in
--dtype, compiles the two decode steps (persistent compilation cache in
--compilation_cache_dir) and only then listens: no request ever compiles. See
docs/serving.md. Flags follow the project's one vocabulary (underscores).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import jax

from zen_code_jax.data.tokenizer import Tokenizer
from zen_code_jax.data.tokenizer_load import load_tokenizer
from zen_code_jax.infer.admission import Admission
from zen_code_jax.infer.drafting import SPEC_MODES, SpecConfig
from zen_code_jax.infer.engine import InferenceEngine, random_params
from zen_code_jax.infer.protocol import Limits
from zen_code_jax.infer.server import CompletionServer, ConnectionLimits
from zen_code_jax.model.config import get_preset
from zen_code_jax.parallel.compilation_cache import enable_compilation_cache
from zen_code_jax.parallel.mesh import make_mesh


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The server's flags (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m zen_code_jax.infer", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--run_dir",
        help="run directory WORKDIR/<experiment>/<arm> (or RUN/checkpoints/STEP) to serve",
    )
    src.add_argument("--hf_dir", help="HF Qwen2 directory to serve (weights streamed in)")
    src.add_argument(
        "--random_preset", help="serve random weights of this model preset (e.g. tiny)"
    )
    p.add_argument(
        "--tokenizer",
        help="tokenizer dir for --random_preset (default: train one on stdlib json/*.py)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--model_name", default=None, help="id reported by /v1/models")
    p.add_argument("--max_batch_size", type=int, default=8, help="decode slots (KV rows)")
    p.add_argument("--max_context", type=int, default=2048, help="positions per slot")
    p.add_argument("--prefill_chunk", type=int, default=128, help="prompt tokens per turn")
    p.add_argument(
        "--prefill_interval",
        type=int,
        default=1,
        help="decode steps per prefill chunk while rows decode (1: every step)",
    )
    p.add_argument("--max_tokens_limit", type=int, default=1024)
    p.add_argument("--max_prompt_tokens", type=int, default=None, help="default: context-1")
    p.add_argument("--max_rows_per_request", type=int, default=16, help="len(prompt) x n")
    p.add_argument("--max_queue", type=int, default=64, help="waiting rows before 429")
    # fairness across requests (scheduler.Admission)
    p.add_argument(
        "--max_slot_share",
        type=float,
        default=0.5,
        help="most of the slots one request's rows (n, list prompts) hold at once (1: no cap)",
    )
    p.add_argument(
        "--short_first",
        type=lambda v: v.lower() in ("1", "true", "yes"),
        default=True,
        help="admit waiting rows with short max_tokens first (aged: none starves)",
    )
    p.add_argument(
        "--admission_aging", type=float, default=1.0, help="budget tokens forgiven per turn"
    )
    p.add_argument("--max_body_bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument(
        "--read_timeout_s",
        type=float,
        default=10.0,
        help="whole-request deadline: headers and body must arrive within it (else 408)",
    )
    p.add_argument("--backlog", type=int, default=2048, help="listen backlog (queued connects)")
    p.add_argument(
        "--max_connections",
        type=int,
        default=512,
        help="open connections / in-flight requests before 503 (uvicorn limit_concurrency)",
    )
    p.add_argument("--keep_alive_s", type=float, default=5.0, help="idle keep-alive timeout")
    p.add_argument("--api_key", default=os.environ.get("ZEN_API_KEY"), help="or ZEN_API_KEY")
    p.add_argument(
        "--continuous_batching",
        type=lambda v: v.lower() in ("1", "true", "yes"),
        default=True,
        help="false: admit rows only into an empty machine (static batching; a baseline)",
    )
    p.add_argument("--mesh", default="", help="e.g. 'tensor=2' or 'fsdp=-1' (default: none)")
    p.add_argument("--dtype", default=None, help="compute dtype (bf16 on accelerators, f32 CPU)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
    p.add_argument("--compilation_cache_dir", default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of --random_preset weights")
    p.add_argument(
        "--speculative",
        choices=SPEC_MODES,
        default="off",
        help="speculative decoding: ngram (prompt lookup) or model (--draft); greedy "
        "completions are unchanged, sampled ones keep their distribution",
    )
    p.add_argument("--draft", default=None, help="draft checkpoint spec (run dir, hf:DIR)")
    p.add_argument("--spec_max_draft", type=int, default=4, help="drafts per row and call")
    p.add_argument(
        "--spec_max_batch", type=int, default=4, help="speculate while <= this many rows decode"
    )
    return p.parse_args(argv)


def parse_mesh(spec: str) -> dict[str, int]:
    """'tensor=2,fsdp=-1' (commas or spaces) -> {'tensor': 2, 'fsdp': -1}."""
    out = {}
    for part in spec.replace(",", " ").split():
        name, _, size = part.partition("=")
        if not size.lstrip("-").isdigit():
            raise SystemExit(f"--mesh={spec!r}: write axis=size pairs, e.g. --mesh=tensor=2.")
        out[name] = int(size)
    return out


def _default_dtype() -> str:
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def build_engine(args: argparse.Namespace) -> tuple[InferenceEngine, str]:
    """The engine to serve and its model id: a run's checkpoint (params only, at --step,
    sharded on --mesh), or random weights of a preset (for testing the server)."""
    mesh = make_mesh(parse_mesh(args.mesh)) if args.mesh else None
    dtype = args.dtype or _default_dtype()
    if args.run_dir or args.hf_dir:
        spec = args.run_dir or f"hf:{args.hf_dir}"
        engine = InferenceEngine.from_run(
            spec, mesh=mesh, dtype=dtype, step=args.step, max_batch_size=args.max_batch_size
        )
        if args.tokenizer and args.run_dir:
            other = load_tokenizer(args.tokenizer)
            if other.fingerprint() != engine.tokenizer.fingerprint():
                raise SystemExit(
                    f"--tokenizer={args.tokenizer} is not the tokenizer {args.run_dir} was "
                    "trained with; drop --tokenizer (the run's own is used)."
                )
        assert engine.facts is not None
        return engine, args.model_name or engine.facts.ref.path.name
    cfg = get_preset(args.random_preset).replace(dtype=dtype)
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    else:
        files = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/json/*.py"))
        tok = Tokenizer.train([open(f).read() for f in files], cfg.vocab_size)
    engine = InferenceEngine(
        random_params(cfg, args.seed), cfg, tok, mesh, max_batch_size=args.max_batch_size
    )
    return engine, args.model_name or f"random-{args.random_preset}"


def _enable_compilation_cache(args: argparse.Namespace) -> None:
    """Persist compiled executables so a restart skips XLA (WORKDIR/cache/jax for a run)."""
    path = args.compilation_cache_dir
    if path is None and args.run_dir:
        path = str(Path(args.run_dir).absolute().parent.parent / "cache" / "jax")
    path = path or str(Path.home() / ".cache" / "zen_code_jax" / "jax")
    enable_compilation_cache(path, explicit=args.compilation_cache_dir is not None)


def build_server(argv: Sequence[str] | None = None) -> CompletionServer:
    """Parse `argv` and build (not start) the server, compiled; tests drive it from here.

    The wiring of serving: the engine, its slot decoder (compiled now, `warm_up`), the
    scheduler that drives it, and the HTTP server around them."""
    args = parse_args(argv)
    if args.draft and args.speculative != "model":
        raise SystemExit("--draft is the draft model of --speculative=model; add that flag.")
    _enable_compilation_cache(args)
    engine, name = build_engine(args)
    max_context = min(args.max_context, engine.model_cfg.max_position_embeddings)
    limits = Limits(
        max_prompt_tokens=args.max_prompt_tokens or max_context - 1,
        max_tokens=args.max_tokens_limit,
        max_rows=args.max_rows_per_request,
        max_body_bytes=args.max_body_bytes,
        read_timeout_s=args.read_timeout_s,
    )
    try:
        admission = Admission(args.max_slot_share, args.short_first, args.admission_aging)
    except ValueError as e:
        raise SystemExit(f"--max_slot_share / --admission_aging: {e}") from None
    if args.speculative != "off":
        spec = SpecConfig(
            mode=args.speculative, max_draft=args.spec_max_draft, max_batch=args.spec_max_batch
        )
        engine.set_speculative(spec, args.draft)
    decoder = engine.slot_decoder(max_context, chunk=args.prefill_chunk, samplers=True)
    decoder.warm_up()
    speculator = engine.speculator(decoder)
    if speculator is not None:
        speculator.warm_up()
    scheduler = engine.scheduler(
        decoder,
        speculator=speculator,
        max_queue=args.max_queue,
        continuous=args.continuous_batching,
        prefill_interval=args.prefill_interval,
        admission=admission,
    )
    return CompletionServer(
        engine,
        scheduler,
        model_name=name,
        host=args.host,
        port=args.port,
        limits=limits,
        api_key=args.api_key,
        connections=ConnectionLimits(
            backlog=args.backlog,
            max_connections=args.max_connections,
            keep_alive_s=args.keep_alive_s,
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted."""
    server = build_server(argv)
    print(f"Serving {server.model_name} at {server.url}/v1/completions", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
