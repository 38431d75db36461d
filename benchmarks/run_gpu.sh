#!/usr/bin/env bash
# The staged benchmark run for a short GPU loan: one command, nothing installed, no network.
#
#   benchmarks/run_gpu.sh [--dry-run] [OUT]
#
# Stages, most valuable first, each under its own time cap and writing its results when it ends (9 minutes in
# all): 1 environment + CUDA extension build, 2 GPU parity tests, 3 training-step table, 4 kernel benchmarks,
# 5 everything else with the time left. OUT (default $PROGAN_FAST_BENCH_OUT, else benchmarks/results) receives
# summary.txt (also printed last), run.json, run.log, kernels.{md,json} and training_steps.{md,json}.
# --dry-run: every stage on the CPU at tiny sizes (Triton in its interpreter, the extension compiled but not
# run, the host clock), to prove the script before a GPU is there. See benchmarks/README.md.
#
# The package and the harness import from this checkout (PYTHONPATH), not from an installation.
# PYTHON: the interpreter to use (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m benchmarks.harness.stages "$@"
