#!/usr/bin/env bash
# Runs `faceproof bench` and the reference backends (onnxruntime + OpenCV 4 in bench/.venv, OpenCV 5
# in bench/.venv-opencv5) on the same inputs, one after the other on the same machine, and prints
# the per-stage ratio table against the fastest reference of each stage (see bench/README.md).
# Usage: bench/compare.sh [--iterations N] [--threads T] [--bench-dir DIR]
# The environments come from bench/setup-venvs.sh; one that is missing is skipped, with a warning.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
iterations=30
threads=2
bench_dir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --iterations) iterations="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --bench-dir) bench_dir="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
bench_dir_args=()
[[ -n "$bench_dir" ]] && bench_dir_args=(--bench-dir "$bench_dir")

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

cd "$repo"
cargo build --release --locked -p faceproof-cli >&2
# ../shared beside the checkout, or beside its parent (a git worktree in a subfolder), as
# reference.py's default.
if [[ -z "$bench_dir" ]]; then
  bench_dir="$repo/../shared/bench"
  [[ -d "$repo/../shared" ]] || bench_dir="$repo/../../shared/bench"
fi
# candle's second (spinning) elementwise pool fights rayon's on 2 cores: see README.md.
CANDLE_NUM_THREADS="${CANDLE_NUM_THREADS:-1}" ./target/release/faceproof bench --json --iterations "$iterations" --threads "$threads" \
  --bench-dir "$bench_dir" > "$out/faceproof.json"
references=()
for venv in .venv .venv-opencv5; do
  python="bench/$venv/bin/python"
  if [[ ! -x "$python" ]]; then
    echo "warning: no bench/$venv (run bench/setup-venvs.sh): its backends are left out" >&2
    continue
  fi
  "$python" bench/reference.py --iterations "$iterations" --threads "$threads" \
    --bench-dir "$bench_dir" > "$out/reference-$venv.json"
  references+=("$out/reference-$venv.json")
done
[[ ${#references[@]} -gt 0 ]] || { echo "no reference environment: run bench/setup-venvs.sh" >&2; exit 1; }
python3 bench/compare.py "$out/faceproof.json" "${references[@]}"
