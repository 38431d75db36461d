#!/usr/bin/env bash
# One command on a GPU machine with torch and triton installed: install progan_fast, run the GPU parity
# tests, the kernel benchmarks and the training-step table, then print a short summary.
#
#   benchmarks/run_gpu.sh [RESULTS_DIR]
#
# RESULTS_DIR (or $PROGAN_FAST_BENCH_OUT) receives kernels.{md,json}, training_steps.{md,json},
# pytest-benchmark.json, the logs and nvidia-smi.txt; default benchmarks/results.
# PROGAN_FAST_BENCH=quick (default, under 10 minutes) or full (every resolution and dtype, compile everywhere).
# PROGAN_FAST_TEST_SECONDS bounds the parity tests (default 180).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${1:-${PROGAN_FAST_BENCH_OUT:-benchmarks/results}}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PROGAN_FAST_BENCH_OUT="$OUT"
export PROGAN_FAST_BENCH="${PROGAN_FAST_BENCH:-quick}"
PYTHON="${PYTHON:-python}"

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "run_gpu.sh: torch sees no CUDA device; run this on a GPU machine with a CUDA build of torch" >&2
  exit 1
fi

"$PYTHON" -m pip install --quiet --no-deps -e . || { echo "run_gpu.sh: pip install -e . failed" >&2; exit 1; }
# Test and benchmark tools, without touching torch. Offline machines keep going without them.
for module_and_package in pytest:pytest pytest_benchmark:pytest-benchmark pynvml:nvidia-ml-py hypothesis:hypothesis; do
  module="${module_and_package%%:*}"; package="${module_and_package##*:}"
  "$PYTHON" -c "import $module" 2>/dev/null || "$PYTHON" -m pip install --quiet "$package" \
    || echo "run_gpu.sh: could not install $package; the steps that need it will say so"
done
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

status=0
phase() {  # phase NAME LOG COMMAND...: run, log, report the time and result
  local name="$1" log="$2" start rc
  shift 2
  start=$(date +%s)
  "$@" > "$log" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || status=1
  local last; last="$(tail -n 1 "$log")"
  [ "$rc" -eq 124 ] && last="timed out; see $log"
  printf '%-22s exit %-3s %4ss  (%s)\n' "$name" "$rc" "$(( $(date +%s) - start ))" "$last" \
    | tee -a "$OUT/phases.txt"
}
: > "$OUT/phases.txt"
phase "GPU parity tests" "$OUT/tests.log" \
  timeout "${PROGAN_FAST_TEST_SECONDS:-180}" "$PYTHON" -m pytest tests -q -p no:cacheprovider
phase "kernel benchmarks" "$OUT/kernels.log" \
  "$PYTHON" -m pytest benchmarks/test_kernels.py -q -p no:cacheprovider --benchmark-json="$OUT/pytest-benchmark.json" \
  --benchmark-columns=median,iqr,rounds,iterations --benchmark-sort=name
phase "training-step table" "$OUT/training_steps.log" \
  "$PYTHON" -m pytest benchmarks/test_training_steps.py -q -p no:cacheprovider

echo
"$PYTHON" -m benchmarks.harness.reports summary "$OUT"
echo
cat "$OUT/phases.txt"
echo "full results: $OUT"
exit "$status"
