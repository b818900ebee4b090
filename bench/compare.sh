#!/usr/bin/env bash
# Runs `faceproof bench` and the onnxruntime/OpenCV reference on the same inputs, one after the
# other on the same machine, and prints the per-stage ratio table (see bench/README.md).
# Usage: bench/compare.sh [--iterations N] [--threads T] [--bench-dir DIR]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
iterations=30
threads=2
bench_dir="$repo/../shared/bench"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --iterations) iterations="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --bench-dir) bench_dir="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

cd "$repo"
cargo build --release --locked -p faceproof-cli >&2
# candle's second (spinning) elementwise pool fights rayon's on 2 cores: see README.md.
CANDLE_NUM_THREADS="${CANDLE_NUM_THREADS:-1}" ./target/release/faceproof bench --json --iterations "$iterations" --threads "$threads" \
  --bench-dir "$bench_dir" > "$out/faceproof.json"
python3 bench/reference.py --iterations "$iterations" --threads "$threads" \
  --bench-dir "$bench_dir" > "$out/reference.json"
python3 bench/compare.py "$out/faceproof.json" "$out/reference.json"
