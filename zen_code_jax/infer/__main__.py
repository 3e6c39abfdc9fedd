"""Serve a checkpoint (or a random model) over the OpenAI-compatible completions API.

  python -m zen_code_jax.infer --run_dir=WORKDIR/<experiment>/<arm> --port=8000
  python -m zen_code_jax.infer --hf_dir=DIR --port=8000            # an HF Qwen2 directory
  python -m zen_code_jax.infer --random_preset=tiny --port=8000   # no checkpoint: for testing

Listens on 127.0.0.1 unless --host says otherwise (the server has no authentication).
Flags follow the project's one vocabulary (experiments/run.py, `python -m zen_code_jax.eval`):
--run_dir is one run directory, and multi-word flags are spelled with underscores.
"""

from __future__ import annotations

import argparse
import glob
import sys
import sysconfig
from collections.abc import Sequence

from zen_code_jax.data.tokenizer import Tokenizer
from zen_code_jax.hf.rundir import load_hf
from zen_code_jax.infer.engine import InferenceEngine, random_params
from zen_code_jax.infer.server import CompletionServer
from zen_code_jax.model.config import get_preset


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The server's flags (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m zen_code_jax.infer", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run_dir", help="run directory WORKDIR/<experiment>/<arm> to serve")
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
    p.add_argument("--max_batch_size", type=int, default=8)
    p.add_argument(
        "--min_batch_bucket",
        type=int,
        default=1,
        help="pad every batch to at least this many rows (fewer shapes to compile)",
    )
    p.add_argument("--max_tokens_limit", type=int, default=1024)
    p.add_argument("--batch_window_ms", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0, help="seed of --random_preset weights")
    return p.parse_args(argv)


def build_engine(args: argparse.Namespace) -> tuple[InferenceEngine, str]:
    """The engine to serve and its model id: a run's newest checkpoint, or random weights
    of a preset (for testing the server without training anything)."""
    if args.run_dir:
        engine = InferenceEngine.from_run_dir(
            args.run_dir,
            max_batch_size=args.max_batch_size,
            min_batch_bucket=args.min_batch_bucket,
        )
        name = args.model_name or args.run_dir.rstrip("/").split("/")[-1]
        return engine, name
    if args.hf_dir:
        params, cfg, tok = load_hf(args.hf_dir)
        engine = InferenceEngine(
            params,
            cfg,
            tok,
            max_batch_size=args.max_batch_size,
            min_batch_bucket=args.min_batch_bucket,
        )
        return engine, args.model_name or args.hf_dir.rstrip("/").split("/")[-1]
    cfg = get_preset(args.random_preset)
    if args.tokenizer:
        tok = Tokenizer.load(args.tokenizer)
    else:
        files = sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/json/*.py"))
        tok = Tokenizer.train([open(f).read() for f in files], cfg.vocab_size)
    engine = InferenceEngine(
        random_params(cfg, args.seed),
        cfg,
        tok,
        max_batch_size=args.max_batch_size,
        min_batch_bucket=args.min_batch_bucket,
    )
    return engine, args.model_name or f"random-{args.random_preset}"


def build_server(argv: Sequence[str] | None = None) -> CompletionServer:
    """Parse `argv` and build (not start) the server; tests drive it from here."""
    args = parse_args(argv)
    engine, name = build_engine(args)
    return CompletionServer(
        engine,
        model_name=name,
        host=args.host,
        port=args.port,
        max_tokens_limit=args.max_tokens_limit,
        batch_window_s=args.batch_window_ms / 1000.0,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted."""
    server = build_server(argv)
    print(f"Serving {server.model_name} at {server.url}/v1/completions", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
