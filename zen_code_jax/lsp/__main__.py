"""Run the language server on stdin/stdout (what every editor's LSP client starts).

  python -m zen_code_jax.lsp --run_dir=WORKDIR/<experiment>/<arm>   # the model in-process
  python -m zen_code_jax.lsp --hf_dir=DIR                            # an HF Qwen2 directory
  python -m zen_code_jax.lsp --url=http://127.0.0.1:8000             # our completion server
  python -m zen_code_jax.lsp --url=http://127.0.0.1:8012 --api=llama_infill  # llama.cpp

A remote backend keeps the editor's process light (no jax). See docs/lsp.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from zen_code_jax.lsp.backend import APIS, EngineSource, LocalBackend, RemoteBackend
from zen_code_jax.lsp.server import create_server
from zen_code_jax.lsp.settings import Settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m zen_code_jax.lsp", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run_dir", help="run directory WORKDIR/<experiment>/<arm> (params only)")
    src.add_argument("--hf_dir", help="HF Qwen2 directory")
    src.add_argument("--random_preset", help="random weights of a preset (needs --tokenizer)")
    src.add_argument("--url", help="completion server base URL (no /v1)")
    p.add_argument("--tokenizer", help="tokenizer directory for --random_preset")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
    p.add_argument("--dtype", default=None, help="compute dtype (f32 on CPU, bf16 otherwise)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random_preset weights")
    p.add_argument(
        "--compilation_cache_dir",
        default=None,
        help="persistent XLA cache (default: WORKDIR/cache/jax of --run_dir, else "
        "~/.cache/zen_code_jax/jax; JAX_COMPILATION_CACHE_DIR overrides a default)",
    )
    p.add_argument("--api", default="completions", choices=APIS, help="remote API")
    p.add_argument("--api_key", default=os.environ.get("ZEN_API_KEY"), help="or ZEN_API_KEY")
    p.add_argument("--model", default=None, help="remote model id (default: the server's first)")
    p.add_argument("--max_context", type=int, default=2048, help="remote model's context")
    p.add_argument("--log_file", default=None, help="write the server's log here")
    p.add_argument(
        "--log_level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING"),
        help="INFO: one line per completion request; DEBUG: every LSP message both ways",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.log_file:
        logging.basicConfig(filename=args.log_file, level=getattr(logging, args.log_level))
    if args.url:
        backend = RemoteBackend(args.url, args.api, args.api_key, args.model, args.max_context)
    else:
        if args.random_preset and not args.tokenizer:
            raise SystemExit("--random_preset needs --tokenizer=DIR (a saved tokenizer).")
        backend = LocalBackend(
            EngineSource(
                args.run_dir,
                args.hf_dir,
                args.random_preset,
                args.tokenizer,
                args.step,
                args.dtype,
                args.seed,
                args.compilation_cache_dir,
            )
        )
    create_server(backend, Settings()).start_io()
    return 0


if __name__ == "__main__":
    sys.exit(main())
