#!/usr/bin/env python3
"""Prints the per-stage ratio table of a `faceproof bench --json` run against one or more
`bench/reference.py` runs (one per Python environment: onnxruntime + OpenCV 4, OpenCV 5):
candle's median / the fastest reference backend's median, naming that backend.

  compare.py FACEPROOF_JSON REFERENCE_JSON [REFERENCE_JSON...]   one run
  compare.py --runs RUN_DIR [RUN_DIR...]                          several runs (compare.sh --runs)
A run directory holds faceproof.json and reference*.json. Several runs print the median of each
column over the runs, the median and range of the per-run ratio, and how often each backend was
the fastest reference."""

import glob
import json
import os
import statistics
import sys
from collections import Counter


# The README's order (faceproof's JSON lists stages alphabetically); other stages follow.
STAGE_ORDER = [
    "decode_640x480", "decode_3000x4000", "decode_3000x4000_half", "detect_320", "detect_640",
    "embed_sface", "liveness_minifasnet_v2", "liveness_minifasnet_v1se",
    "compare_without_liveness", "compare_with_liveness",
]


def ordered(stages):
    known = [stage for stage in STAGE_ORDER if stage in stages]
    return known + [stage for stage in stages if stage not in STAGE_ORDER]


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


def load_run(faceproof_path, reference_paths):
    ours = json.load(open(faceproof_path))
    references = [json.load(open(path)) for path in reference_paths]
    stages, threads = merge(references)
    return ours, references, stages, threads


def one_run(faceproof_path, reference_paths):
    ours, references, stages, threads = load_run(faceproof_path, reference_paths)
    backends = sorted({b for by_backend in stages.values() for b in by_backend})
    print(f"threads: faceproof {ours['threads']}, reference {sorted(threads)}; median ms (p90)")
    for reference in references:
        print(f"reference {reference.get('backends')}: {reference.get('versions')}, checks {reference.get('checks')}")
    header = f"{'stage':<28} {'candle':>16} " + " ".join(f"{b:>16}" for b in backends)
    header += f" {'ratio':>7}  {'fastest reference':<17}"
    print(header)
    print("-" * len(header))
    cell = lambda t: f"{t['median_ms']:.2f} ({t['p90_ms']:.2f})" if t else "-"
    for stage in ordered(ours["stages"]):
        candle = ours["stages"][stage]["candle"]
        ref = stages.get(stage, {})
        best = fastest(ref)
        ratio = f"{candle['median_ms'] / best[1]:.2f}" if best else "n/a"
        row = f"{stage:<28} {cell(candle):>16} " + " ".join(f"{cell(ref.get(b)):>16}" for b in backends)
        print(f"{row} {ratio:>7}  {best[0] if best else '-':<17}")
    for reference in references:
        for stage, why in reference.get("not_measured", {}).items():
            print(f"reference has no {stage}: {why}")


def several_runs(run_dirs):
    runs = [
        load_run(os.path.join(d, "faceproof.json"), sorted(glob.glob(os.path.join(d, "reference*.json"))))
        for d in run_dirs
    ]
    backends = sorted({b for _, _, stages, _ in runs for by_backend in stages.values() for b in by_backend})
    print(f"{len(runs)} runs; median ms over the runs; ratio = candle / fastest reference of that stage and run")
    for _, references, _, _ in runs[:1]:
        for reference in references:
            print(f"reference {reference.get('backends')}: {reference.get('versions')}, checks {reference.get('checks')}")
    print("| stage | candle | " + " | ".join(backends) + " | ratio (median) | ratio (min-max) | fastest reference (runs) |")
    print("| --- " * (len(backends) + 5) + "|")
    median = lambda values: f"{statistics.median(values):.2f}" if values else "-"
    for stage in ordered(runs[0][0]["stages"]):
        candle = [ours["stages"][stage]["candle"]["median_ms"] for ours, _, _, _ in runs]
        columns = [
            median([stages[stage][b]["median_ms"] for _, _, stages, _ in runs if b in stages.get(stage, {})])
            for b in backends
        ]
        ratios, winners = [], Counter()
        for ours, _, stages, _ in runs:
            best = fastest(stages.get(stage, {}))
            if best:
                ratios.append(ours["stages"][stage]["candle"]["median_ms"] / best[1])
                winners[best[0]] += 1
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "n/a"
        won = ", ".join(f"{b} {n}" for b, n in winners.most_common()) or "-"
        print(f"| {stage} | {median(candle)} | " + " | ".join(columns) + f" | {median(ratios)} | {spread} | {won} |")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "--runs":
        several_runs(sys.argv[2:])
    elif len(sys.argv) >= 3 and not sys.argv[1].startswith("-"):
        one_run(sys.argv[1], sys.argv[2:])
    else:
        sys.exit("usage: compare.py FACEPROOF_JSON REFERENCE_JSON [REFERENCE_JSON...]\n"
                 "       compare.py --runs RUN_DIR [RUN_DIR...]")


if __name__ == "__main__":
    main()
