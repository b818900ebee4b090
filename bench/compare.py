#!/usr/bin/env python3
"""Prints the per-stage ratio table of a `faceproof bench --json` run against a
`bench/reference.py` run: candle's median / the faster reference backend's median."""

import json
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: compare.py FACEPROOF_JSON REFERENCE_JSON")
    ours = json.load(open(sys.argv[1]))
    reference = json.load(open(sys.argv[2]))
    print(f"threads: faceproof {ours['threads']}, reference {reference['threads']}; median ms (p90)")
    header = f"{'stage':<28} {'candle':>16} {'onnxruntime':>16} {'opencv':>16} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    cell = lambda t: f"{t['median_ms']:.2f} ({t['p90_ms']:.2f})" if t else "-"
    for stage, backends in ours["stages"].items():
        candle = backends["candle"]
        ref = reference["stages"].get(stage, {})
        ort, cv = ref.get("onnxruntime"), ref.get("opencv")
        best = min((t["median_ms"] for t in (ort, cv) if t), default=None)
        ratio = f"{candle['median_ms'] / best:.2f}" if best else "n/a"
        print(f"{stage:<28} {cell(candle):>16} {cell(ort):>16} {cell(cv):>16} {ratio:>7}")
    for stage, why in reference.get("not_measured", {}).items():
        print(f"reference has no {stage}: {why}")


if __name__ == "__main__":
    main()
