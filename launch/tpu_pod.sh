#!/usr/bin/env bash
# Run one command on every worker of a Cloud TPU pod slice (all hosts at once).
#
#   launch/tpu_pod.sh TPU_NAME ZONE [PROJECT] -- python experiments/run.py --config=experiments/pretrain.py:paper
#
# Every worker runs the same command; zen_code_jax.parallel.multihost.initialize() calls
# jax.distributed.initialize() with no arguments, which finds the coordinator and the
# process ids from the TPU metadata server. Assumes the repo is checked out at the same
# path on every worker (REPO_DIR, default ~/zen-code-jax) with `pip install -e .[tpu]` done
# (launch/tpu_pod.sh ... -- bash launch/setup_worker.sh does that).
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE [PROJECT] -- COMMAND..." >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; shift 2
PROJECT_ARGS=()
if [[ $1 != "--" ]]; then PROJECT_ARGS=(--project "$1"); shift; fi
[[ $1 == "--" ]] && shift
REPO_DIR=${REPO_DIR:-~/zen-code-jax}
CMD="cd $REPO_DIR && export ZEN_AUTO_DISTRIBUTED=1 && $*"
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${PROJECT_ARGS[@]}" \
  --worker=all --command "$CMD"
