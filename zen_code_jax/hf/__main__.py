"""Command line: HF Qwen2 / Qwen2.5-Coder directories in and out.

  python -m zen_code_jax.hf import --hf_dir DIR --run_dir OUT
  python -m zen_code_jax.hf export --run_dir RUN --hf_dir OUT [--dtype bfloat16] [--max_shard_size 5GB]

`import` streams the checkpoint tensor by tensor into a run directory that eval, serving
and `train.init_checkpoint` accept; `export` writes sharded safetensors + index,
config.json, generation_config.json and the tokenizer files. Errors are one line.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from zen_code_jax.checkpoint import CheckpointError
from zen_code_jax.data.tokenizer_base import TokenizerError
from zen_code_jax.hf.checkpoint import HFFormatError
from zen_code_jax.hf.transfer import export_run, import_hf


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m zen_code_jax.hf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="HF directory -> run directory")
    imp.add_argument("--hf_dir", required=True)
    imp.add_argument("--run_dir", required=True)
    exp = sub.add_parser("export", help="run directory -> HF directory")
    exp.add_argument("--run_dir", required=True)
    exp.add_argument("--hf_dir", required=True)
    exp.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 | float16 (default: the params')"
    )
    exp.add_argument("--max_shard_size", default="5GB")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        if a.cmd == "import":
            run = import_hf(a.hf_dir, a.run_dir)
            print(f"imported {a.hf_dir} -> {run.path} in {time.perf_counter() - t0:.1f}s")
        else:
            out = export_run(a.run_dir, a.hf_dir, dtype=a.dtype, max_shard_size=a.max_shard_size)
            print(f"exported {a.run_dir} -> {out} in {time.perf_counter() - t0:.1f}s")
    except (HFFormatError, TokenizerError, CheckpointError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
