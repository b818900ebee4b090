#!/usr/bin/env python3
"""Prints the per-stage ratio table of a `faceproof bench --json` run against one or more
`bench/reference.py` runs (one per Python environment: onnxruntime + OpenCV 4, OpenCV 5):
candle's median / the fastest reference backend's median, naming that backend."""

import json
import sys


def merge(references):
    """{stage: {backend: timing}} over every reference run, and their thread counts."""
    stages, threads = {}, set()
    for reference in references:
        threads.add(reference["threads"])
        for stage, by_backend in reference["stages"].items():
            stages.setdefault(stage, {}).update(by_backend)
    return stages, threads


def fastest(by_backend):
    """(backend, median ms) of the fastest backend of one stage, or None."""
    if not by_backend:
        return None
    name = min(by_backend, key=lambda b: by_backend[b]["median_ms"])
    return name, by_backend[name]["median_ms"]


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: compare.py FACEPROOF_JSON REFERENCE_JSON [REFERENCE_JSON...]")
    ours = json.load(open(sys.argv[1]))
    references = [json.load(open(path)) for path in sys.argv[2:]]
    stages, threads = merge(references)
    backends = sorted({b for by_backend in stages.values() for b in by_backend})
    print(f"threads: faceproof {ours['threads']}, reference {sorted(threads)}; median ms (p90)")
    for reference in references:
        print(f"reference {reference.get('backends')}: {reference.get('versions')}, checks {reference.get('checks')}")
    header = f"{'stage':<28} {'candle':>16} " + " ".join(f"{b:>16}" for b in backends)
    header += f" {'ratio':>7}  {'fastest reference':<17}"
    print(header)
    print("-" * len(header))
    cell = lambda t: f"{t['median_ms']:.2f} ({t['p90_ms']:.2f})" if t else "-"
    for stage, by_backend in ours["stages"].items():
        candle = by_backend["candle"]
        ref = stages.get(stage, {})
        best = fastest(ref)
        ratio = f"{candle['median_ms'] / best[1]:.2f}" if best else "n/a"
        row = f"{stage:<28} {cell(candle):>16} " + " ".join(f"{cell(ref.get(b)):>16}" for b in backends)
        print(f"{row} {ratio:>7}  {best[0] if best else '-':<17}")
    for reference in references:
        for stage, why in reference.get("not_measured", {}).items():
            print(f"reference has no {stage}: {why}")


if __name__ == "__main__":
    main()
