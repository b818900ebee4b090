#!/usr/bin/env bash
# Runs `faceproof bench` and the reference backends (onnxruntime + OpenCV 4 in bench/.venv, OpenCV 5
# in bench/.venv-opencv5) on the same inputs, one after the other on the same machine, and prints
# the per-stage ratio table against the fastest reference of each stage (see bench/README.md).
# Usage: bench/compare.sh [--iterations N] [--threads T] [--bench-dir DIR] [--runs R] [--keep DIR]
# --runs R (default 1) repeats the whole measurement R times and prints the median table with each
# ratio's range (the README's three-run table); --keep DIR keeps each run's JSON files there.
# The environments come from bench/setup-venvs.sh; one that is missing is skipped, with a warning.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
iterations=30
threads=2
bench_dir=""
runs=1
keep=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --iterations) iterations="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --bench-dir) bench_dir="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --keep) keep="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "--runs must be a positive integer" >&2; exit 2; }

if [[ -n "$keep" ]]; then
  mkdir -p "$keep"
  out="$(cd "$keep" && pwd)"
else
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi

cd "$repo"
cargo build --release --locked -p faceproof-cli >&2
# ../shared beside the checkout, or beside its parent (a git worktree in a subfolder), as
# reference.py's default.
if [[ -z "$bench_dir" ]]; then
  bench_dir="$repo/../shared/bench"
  [[ -d "$repo/../shared" ]] || bench_dir="$repo/../../shared/bench"
fi
venvs=()
for venv in .venv .venv-opencv5; do
  if [[ -x "bench/$venv/bin/python" ]]; then
    venvs+=("$venv")
  else
    echo "warning: no bench/$venv (run bench/setup-venvs.sh): its backends are left out" >&2
  fi
done
[[ ${#venvs[@]} -gt 0 ]] || { echo "no reference environment: run bench/setup-venvs.sh" >&2; exit 1; }

run_dirs=()
for ((run = 1; run <= runs; run++)); do
  dir="$out/run$run"
  mkdir -p "$dir"
  echo "run $run of $runs: $(uptime)" >&2
  # candle's second (spinning) elementwise pool fights rayon's on 2 cores: see README.md.
  CANDLE_NUM_THREADS="${CANDLE_NUM_THREADS:-1}" ./target/release/faceproof bench --json --iterations "$iterations" \
    --threads "$threads" --bench-dir "$bench_dir" > "$dir/faceproof.json"
  for venv in "${venvs[@]}"; do
    # onnxruntime is in both environments (for service.py); it is timed in .venv only.
    backends=()
    [[ "$venv" == .venv-opencv5 ]] && backends=(--backends opencv5)
    "bench/$venv/bin/python" bench/reference.py --iterations "$iterations" --threads "$threads" \
      --bench-dir "$bench_dir" ${backends[@]+"${backends[@]}"} > "$dir/reference${venv#.venv}.json"
  done
  run_dirs+=("$dir")
done
echo "after the runs: $(uptime)" >&2
if [[ "$runs" -eq 1 ]]; then
  python3 bench/compare.py "$dir/faceproof.json" "$dir"/reference*.json
else
  python3 bench/compare.py --runs "${run_dirs[@]}"
fi
