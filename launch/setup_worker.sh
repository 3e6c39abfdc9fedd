#!/usr/bin/env bash
# Install zen-code-jax on a TPU VM worker or GPU node (run once per host).
set -euo pipefail
REPO_DIR=${REPO_DIR:-~/zen-code-jax}
cd "$REPO_DIR"
if python -c "import sys; sys.exit(0)" && [[ -e /dev/accel0 || -e /dev/vfio ]]; then
  pip install -e ".[tpu]"
elif command -v nvidia-smi >/dev/null; then
  pip install -e ".[gpu]"
else
  pip install -e .
fi
python -c "import jax; print(jax.devices())"
