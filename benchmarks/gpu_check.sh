#!/usr/bin/env bash
# The one command to run on a lent GPU: builds the CUDA kernels for the visible GPU, runs the CUDA
# tests, times the kernels and a network step, and writes everything under OUTDIR (default $OUT) in
# 8 files: summary.md (stages, test counts, kernel times against the memory floor, network ratios),
# preflight.log, build.log, tests.log, tests.xml, kernels.log, network.log, tools.log.
#
#     bash benchmarks/gpu_check.sh OUTDIR
#
# Each stage has its own timeout and the whole script a budget (GPU_CHECK_BUDGET_S, default 400 s):
# a stage gets at most what is left, so one slow step cannot eat the rest, and summary.md is rewritten
# after every stage (a later failure or kill keeps the earlier results). Nothing is installed.
# Without a GPU (a rehearsal, as CI runs it) the CUDA stages report "skipped: no GPU"; the tests run
# (every CUDA case skips), and the kernel and network stages run their code on the CPU at tiny sizes.
set -uo pipefail  # no -e: a failed stage is recorded and the next one runs
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-}}
if [ -z "$OUTDIR" ]; then
  echo "usage: bash benchmarks/gpu_check.sh OUTDIR   (or set OUT)" >&2
  exit 2
fi
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
PYTHON=${PYTHON:-python3}
DRIVER=benchmarks/gpu_check.py
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_BUDGET_S:-400} ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
for toolkit in ${CUDA_HOME:-} /usr/local/cuda; do  # nvcc, ncu, compute-sanitizer where PATH lacks them
  [ -x "$toolkit/bin/nvcc" ] && PATH="$PATH:$toolkit/bin"
done

summarize() { "$PYTHON" "$DRIVER" summary "$WORK" "$OUTDIR" || echo "gpu_check: writing summary.md failed" >&2; }

# stage NAME CAP_SECONDS LOG COMMAND...: runs COMMAND (stdout and stderr appended to LOG) under a timeout
# of min(CAP, time left), records its status and wall time, rewrites summary.md.
stage() {
  local name=$1 cap=$2 log=$3; shift 3
  local left=$(( DEADLINE - $(date +%s) )) limit status start
  limit=$(( cap < left ? cap : left ))
  if (( limit < 5 )); then
    printf '%s\tskipped: out of time\t0\t%s\n' "$name" "$log" >> "$WORK/stages.tsv"
    summarize
    return 1
  fi
  echo "== $name (timeout ${limit} s): $*" | tee -a "$OUTDIR/$log"
  start=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" >> "$OUTDIR/$log" 2>&1
  local rc=$? tenths=$(( ($(date +%s%N) - start) / 100000000 ))
  local seconds=$(( tenths / 10 )).$(( tenths % 10 ))
  case $rc in
    0) status=ok ;;
    124|137) status="timed out after ${limit} s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$seconds" "$log" >> "$WORK/stages.tsv"
  echo "== $name: $status, ${seconds} s"
  summarize
  return $rc
}

skip() {  # skip NAME REASON LOG
  printf '%s\tskipped: %s\t0\t%s\n' "$1" "$2" "$3" >> "$WORK/stages.tsv"
  echo "== $1: skipped: $2"
  summarize
}

stage preflight 30 preflight.log bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 || true; \"$PYTHON\" $DRIVER preflight"

if "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  GPU=1
  ARCH=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
  # the visible GPU's architecture only, set here because images often preset a long TORCH_CUDA_ARCH_LIST
  stage build 200 build.log env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" \
    "$PYTHON" setup.py build_ext --inplace --force
else
  GPU=0
  skip build "no GPU" build.log
fi

# the CUDA tests: the networks' shapes and modes (test_ops_cuda.py) and the CUDA cases of test_ops.py
stage tests 120 tests.log "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_ops_cuda.py tests/test_ops.py \
  -k cuda -rfEs --durations=15 --junitxml="$OUTDIR/tests.xml"

if (( GPU )); then
  stage kernels 90 kernels.log "$PYTHON" $DRIVER kernels "$WORK/results.jsonl"
  stage network 90 network.log "$PYTHON" $DRIVER network "$WORK/results.jsonl"
else
  stage "kernels (CPU rehearsal)" 60 kernels.log "$PYTHON" $DRIVER kernels "$WORK/results.jsonl" --rehearsal
  stage "network (CPU rehearsal)" 60 network.log "$PYTHON" $DRIVER network "$WORK/results.jsonl" --rehearsal
fi

# the profilers, where the machine has them (last: the figures above matter more)
for tool in ncu compute-sanitizer; do
  if ! command -v $tool >/dev/null; then
    skip "$tool" "not installed" tools.log
  elif (( ! GPU )); then
    skip "$tool" "no GPU" tools.log
  elif [ $tool = ncu ]; then
    stage ncu 45 tools.log ncu --clock-control none --target-processes all \
      --kernel-name "regex:(forward|backward|scatter)(_slice)?_kernel" --launch-count 8 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
      "$PYTHON" $DRIVER profile-target
  else
    stage "compute-sanitizer memcheck" 60 tools.log compute-sanitizer --tool memcheck --error-exitcode 1 \
      "$PYTHON" $DRIVER sanitize-target
    stage "compute-sanitizer racecheck" 60 tools.log compute-sanitizer --tool racecheck --error-exitcode 1 \
      "$PYTHON" $DRIVER sanitize-target
  fi
done

summarize
echo "gpu_check: $(grep -c . "$WORK/stages.tsv") stages, results in $OUTDIR/summary.md"
# the script succeeds when every stage that ran succeeded (skips are not failures)
awk -F'\t' '$2 ~ /^(failed|timed out)/ {bad = 1} END {exit bad}' "$WORK/stages.tsv"
