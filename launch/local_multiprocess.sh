#!/usr/bin/env bash
# N local processes (CPU, Gloo collectives) sharing one jax runtime: a dry run of
# multi-host code on one machine, or the recipe for hosts without a scheduler
# (set ZEN_COORDINATOR_ADDRESS to host0:port and ZEN_PROCESS_ID per host).
#
#   launch/local_multiprocess.sh 2 python tests/multihost_selftest.py
set -euo pipefail
N=$1; shift
PORT=${PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < N; i++)); do
  ZEN_COORDINATOR_ADDRESS=localhost:$PORT ZEN_NUM_PROCESSES=$N ZEN_PROCESS_ID=$i \
    JAX_PLATFORMS=cpu "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
