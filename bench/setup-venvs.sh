#!/usr/bin/env bash
# Makes the two Python environments of the reference benchmarks (git-ignored, development only):
#   bench/.venv          onnxruntime + OpenCV 4   (requirements.txt)
#   bench/.venv-opencv5  OpenCV 5 + onnxruntime   (requirements-opencv5.txt; onnxruntime for
#                        service.py, which compares the whole service with every backend in one loop)
# OpenCV 4 and 5 install the same `cv2` module, so they cannot share one environment.
# Re-running it brings existing environments to the pinned versions.
set -euo pipefail
bench="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
for pair in ".venv:requirements.txt" ".venv-opencv5:requirements-opencv5.txt"; do
  venv="$bench/${pair%%:*}"
  requirements="$bench/${pair#*:}"
  [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  echo "$venv: $("$venv/bin/python" -c 'import cv2; print("OpenCV", cv2.__version__)')" >&2
done
