#!/usr/bin/env python3
"""Whole-service benchmarks of a stack started by `faceproof up` (see bench/README.md).

  service.py latency  one request in flight, through the REST API: N FAST and N ACCURATE
                      compare-with-liveness requests per case (the 640x480 probe and gallery; the
                      12 MP photo as gallery; the 12 MP photo as probe), alternating in the same
                      loop with each reference backend's whole in-process compare_with_liveness
                      (bench/reference.py) on the same photos: p50/p90, and ratios against the
                      fastest reference of each case, named.
  service.py summary  the median over several `latency --json` reports, with the ratios' range
                      (what `latency --runs 3` prints at its end).
  service.py load     throughput at saturation: `faceproof load` (gRPC) at --concurrency 8, FAST
                      then ACCURATE, then the peak RSS (VmHWM) of matcher, liveness and gateway.

Each run starts its own `faceproof up` (target/release/faceproof) on its own ports (--port-base,
so it never meets a stack already running on the default ports) with a fresh data directory, with
the gateway's per-client limits off (FACEPROOF_RATE_LIMIT_PER_SECOND=0,
FACEPROOF_MAX_IN_FLIGHT_PER_CLIENT=0: `up`'s children inherit its environment), and stops it at
the end. Run `latency` with the Python of the reference environment: bench/.venv-opencv5/bin/python
(OpenCV 5 and onnxruntime, the fastest references measured here); `load` needs only the standard
library.
"""

import argparse
import base64
import http.client
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

PROBE, GALLERY, LARGE = "probe_640x480.jpg", "gallery_640x480.jpg", "photo_3000x4000.jpg"
# (case, probe, gallery)
CASES = [
    ("640x480", PROBE, GALLERY),
    ("12mp-as-gallery", PROBE, LARGE),
    ("12mp-as-probe", LARGE, GALLERY),
]
MODES = ("FAST", "ACCURATE")
SERVICES = ("matcher", "liveness", "gateway")
REST_PATH = "/v2/face-recognition/compare-with-liveness"
# The gateway's per-client limits would refuse a benchmark client (10/s, 4 in flight): 0 = off.
UNLIMITED = {"FACEPROOF_RATE_LIMIT_PER_SECOND": "0", "FACEPROOF_MAX_IN_FLIGHT_PER_CLIENT": "0"}


def percentile(samples, q):
    """Nearest rank, as `faceproof load` reports it."""
    ordered = sorted(samples)
    rank = min(max(math.ceil(q * len(ordered)), 1), len(ordered))
    return ordered[rank - 1]


def summary(samples):
    return {"p50_ms": round(percentile(samples, 0.5), 2), "p90_ms": round(percentile(samples, 0.9), 2), "runs": len(samples)}


def machine():
    load1, load5, load15 = os.getloadavg()
    return {"cores": os.cpu_count(), "loadavg": [round(load1, 2), round(load5, 2), round(load15, 2)]}


class Stack:
    """`faceproof up` on ports port_base.. (gRPC, REST, matcher, liveness, 3 metrics), started on
    enter, stopped (SIGTERM, then SIGKILL of it and its children) on exit."""

    def __init__(self, faceproof, port_base, ready_timeout_s, env=None):
        self.faceproof = faceproof
        self.ports = {name: port_base + i for i, name in enumerate(
            ["grpc", "http", "matcher", "liveness", "gateway_metrics", "matcher_metrics", "liveness_metrics"]
        )}
        self.ready_timeout_s = ready_timeout_s
        self.env = {**os.environ, **UNLIMITED, **(env or {})}
        self.data_dir = None
        self.process = None
        self.children = {}

    def __enter__(self):
        if not os.access(self.faceproof, os.X_OK):
            sys.exit(f"no {self.faceproof}: build it with `cargo build --release -p faceproof-cli`")
        self.data_dir = tempfile.mkdtemp(prefix="faceproof-bench-")
        addr = lambda name: f"127.0.0.1:{self.ports[name]}"
        command = [self.faceproof, "up", "--data-dir", self.data_dir,
                   "--model-dir", os.path.join(REPO, "models", "store"),
                   "--grpc-addr", addr("grpc"), "--http-addr", addr("http"),
                   "--matcher-addr", addr("matcher"), "--liveness-addr", addr("liveness"),
                   "--gateway-metrics-addr", addr("gateway_metrics"),
                   "--matcher-metrics-addr", addr("matcher_metrics"),
                   "--liveness-metrics-addr", addr("liveness_metrics")]
        self.log_path = os.path.join(self.data_dir, "up.log")
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=self.log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready()
            self.children = self._find_children()
        except BaseException:
            self._stop()
            print(f"faceproof up's output and the services' logs: {self.data_dir}", file=sys.stderr)
            raise
        print(f"faceproof up: gRPC {addr('grpc')}, REST {addr('http')}, data {self.data_dir}, "
              f"services {self.children}", file=sys.stderr)
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + self.ready_timeout_s
        token_file = os.path.join(self.data_dir, "dev-token")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"faceproof up exited ({self.process.returncode}):\n{self._log_tail()}")
            if os.path.exists(token_file):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['http']}/readyz", timeout=2) as r:
                        if r.status == 200:
                            self.token = open(token_file).read().strip()
                            return
                except OSError:
                    pass
            time.sleep(0.25)
        raise SystemExit(f"faceproof up not ready within {self.ready_timeout_s} s:\n{self._log_tail()}")

    def _log_tail(self):
        self.log.flush()
        return "".join(open(self.log_path, errors="replace").readlines()[-20:])

    def _find_children(self):
        """{service: pid} of `up`'s children (`faceproof serve <service>`)."""
        pid = self.process.pid
        child_pids = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                child_pids += [int(p) for p in f.read().split()]
        found = {}
        for child in child_pids:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if b"serve" in argv:
                found[argv[argv.index(b"serve") + 1].decode()] = child
        missing = set(SERVICES) - set(found)
        if missing:
            raise SystemExit(f"cannot find the {sorted(missing)} process(es) among {child_pids}")
        return found

    def child_env(self, service, name):
        """The value of environment variable `name` in a running service (None when unset)."""
        with open(f"/proc/{self.children[service]}/environ", "rb") as f:
            for entry in f.read().split(b"\0"):
                key, _, value = entry.partition(b"=")
                if key.decode(errors="replace") == name:
                    return value.decode(errors="replace")
        return None

    def peak_rss_mib(self):
        """{service: VmHWM in MiB} of the running services."""
        peaks = {}
        for service, pid in self.children.items():
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peaks[service] = round(int(line.split()[1]) / 1024, 1)
        return peaks

    def __exit__(self, exc_type, exc, traceback):
        self._stop()
        if exc_type is None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        else:
            print(f"faceproof up's output and the services' logs: {self.data_dir}", file=sys.stderr)

    def _stop(self):
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # `up` stops its children; if it could not, end the ones still running (by id, and only
        # while that id is still a `faceproof serve` process).
        for pid in self.children.values():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"serve" in f.read().split(b"\0"):
                        os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass
        self.log.close()
        self.process = None


class RestClient:
    """One keep-alive HTTP/1.1 connection to the gateway's REST API."""

    def __init__(self, port, token):
        self.port, self.token = port, token
        self.connection = None

    def _connect(self):
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        self.connection.connect()
        # Headers and body go in one send (bytes body), and no Nagle delay on the answer's ack.
        self.connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def compare(self, body):
        """Sends one request; returns (elapsed ms, parsed JSON answer). Fails on a non-200."""
        if self.connection is None:
            self._connect()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        start = time.perf_counter()
        self.connection.request("POST", REST_PATH, body=body, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        elapsed = (time.perf_counter() - start) * 1e3
        if response.status != 200:
            raise SystemExit(f"REST answer {response.status}: {data[:500]!r}")
        return elapsed, json.loads(data)


def rest_body(probe, gallery, mode):
    encode = lambda data: base64.b64encode(data).decode()
    # No compare_min_score: liveness runs on every request, as in the reference.
    return json.dumps({"os": "DESKTOP", "search_mode": mode, "probe": encode(probe),
                       "gallery": [encode(gallery)]}).encode()


def answer_scores(answer):
    data = answer["data"]
    return data["comparison"]["result"]["score"], data["liveness"]["result"]["liveness_score"]


def latency(args):
    import numpy as np

    import reference

    photos = {name: open(os.path.join(args.bench_dir, name), "rb").read() for name in (PROBE, GALLERY, LARGE)}
    arrays = {name: np.frombuffer(data, np.uint8) for name, data in photos.items()}
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        backends = reference.load_backends(args.backends.split(","), args.wheel, args.store, tmp, args.threads)
        with Stack(args.faceproof, args.port_base, args.ready_timeout_s) as stack:
            client = RestClient(stack.ports["http"], stack.token)
            for run in range(args.runs):
                print(f"run {run + 1} of {args.runs}", file=sys.stderr)
                report = latency_run(args, backends, client, photos, arrays)
                report["reference"]["versions"] = reference.versions()
                reports.append(report)
    if args.runs == 1:
        emit(reports[0], args.json, latency_table)
    elif args.json:
        print(json.dumps({"runs": reports}, indent=2))
    else:
        for report in reports:
            print(latency_table(report) + "\n")
        print(summary_of_runs(reports))


def latency_run(args, backends, client, photos, arrays):
    """One pass over the cases: warm-up, then `--requests` alternating iterations each. The ratios
    are against the fastest reference backend of the case (by p50), named in the row."""
    before = machine()
    rows = []
    for case, probe, gallery in CASES:
        if args.cases and case not in args.cases:
            continue
        bodies = {mode: rest_body(photos[probe], photos[gallery], mode) for mode in MODES}
        steps = [(mode, lambda mode=mode: client.compare(bodies[mode])) for mode in MODES]
        for name, backend in backends.items():
            run = lambda backend=backend: backend.compare(arrays[probe], arrays[gallery], True)
            steps.append((name, lambda run=run: timed_reference(run)))
        samples = {name: [] for name, _ in steps}
        results = {}
        for i in range(args.warmup + args.requests):
            # Alternate service FAST, service ACCURATE and each reference backend, rotating which
            # goes first so no side always follows the same one.
            turn = i % len(steps)
            for name, step in steps[turn:] + steps[:turn]:
                elapsed, result = step()
                if i >= args.warmup:
                    samples[name].append(elapsed)
                results[name] = result
        row = {"case": case, "probe": probe, "gallery": gallery, "references": {}}
        for mode in MODES:
            row[mode] = summary(samples[mode])
            row[mode]["score"], row[mode]["liveness_score"] = (round(v, 4) for v in answer_scores(results[mode]))
        for name in backends:
            similarity, liveness = results[name]
            row["references"][name] = {**summary(samples[name]), "similarity": round(similarity, 4),
                                       "liveness_score": round(liveness, 4)}
        fastest = min(backends, key=lambda name: row["references"][name]["p50_ms"])
        row["reference"] = {"backend": fastest, **row["references"][fastest]}
        for mode in MODES:
            row[mode]["ratio_p50"] = round(row[mode]["p50_ms"] / row["reference"]["p50_ms"], 2)
        rows.append(row)
        print_latency_row(row, file=sys.stderr)
    return {"tool": "service.py latency", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "reference": {"backends": list(backends), "threads": args.threads},
            "requests": args.requests, "warmup": args.warmup,
            "machine_before": before, "machine_after": machine(), "cases": rows}


def timed_reference(run):
    start = time.perf_counter()
    result = run()
    return (time.perf_counter() - start) * 1e3, result


def print_latency_row(row, file):
    timings = {**{mode: row[mode] for mode in MODES}, **row["references"]}
    print(f"  {row['case']}: " + ", ".join(
        f"{name} p50 {t['p50_ms']:.1f} p90 {t['p90_ms']:.1f}" for name, t in timings.items()), file=file)


def latency_table(report):
    ref = report["reference"]
    lines = [f"whole service through REST (faceproof up), one request in flight, against the fastest reference "
             f"of {ref['backends']} ({ref['versions']}, {ref['threads']} threads) in the same loop; "
             f"{report['requests']} requests each after {report['warmup']} warm-up; ms",
             f"load average before {report['machine_before']['loadavg']}, after {report['machine_after']['loadavg']}",
             "| case | FAST p50 / p90 | ACCURATE p50 / p90 | reference p50 / p90 | FAST / ref | ACCURATE / ref |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in report["cases"]:
        cell = lambda t: f"{t['p50_ms']:.1f} / {t['p90_ms']:.1f}"
        lines.append(f"| {row['case']} | {cell(row['FAST'])} | {cell(row['ACCURATE'])} | "
                     f"{cell(row['reference'])} ({row['reference']['backend']}) "
                     f"| {row['FAST']['ratio_p50']:.2f} | {row['ACCURATE']['ratio_p50']:.2f} |")
    lines.append("what each side computed (service FAST / ACCURATE: calibrated comparison score and liveness "
                 "score; reference: cosine and mean real-class probability, another scale): " + "; ".join(
        f"{row['case']}: comparison {row['FAST']['score']} / {row['ACCURATE']['score']} / {row['reference']['similarity']}, "
        f"liveness {row['FAST']['liveness_score']} / {row['ACCURATE']['liveness_score']} / {row['reference']['liveness_score']}"
        for row in report["cases"]))
    return "\n".join(lines)


def load(args):
    before = machine()
    runs = []
    with Stack(args.faceproof, args.port_base, args.ready_timeout_s) as stack:
        limits = {name: stack.child_env("gateway", name) for name in UNLIMITED}
        for mode in MODES:
            command = [args.faceproof, "load", "--addr", f"http://127.0.0.1:{stack.ports['grpc']}",
                       "--token", stack.token, "--probe", os.path.join(args.bench_dir, PROBE),
                       "--gallery", os.path.join(args.bench_dir, GALLERY), "--search-mode", mode.lower(),
                       "--concurrency", str(args.concurrency), "--requests", str(args.requests),
                       "--warmup", str(args.warmup), "--json"]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            if not done.stdout.strip():
                raise SystemExit(f"faceproof load failed ({done.returncode}): {done.stderr}")
            result = json.loads(done.stdout)
            result["mode"] = mode
            runs.append(result)
            print(f"  {mode}: {result['requests_per_second']:.2f} requests/s, {result['by_code']}", file=sys.stderr)
        peaks = stack.peak_rss_mib()
    report = {"tool": "service.py load", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "gateway_limits_seen_by_the_gateway": limits, "concurrency": args.concurrency,
              "requests": args.requests, "warmup": args.warmup, "machine_before": before,
              "machine_after": machine(), "runs": runs, "peak_rss_mib": peaks}
    emit(report, args.json, load_table)
    if any(set(run["by_code"]) != {"OK"} for run in runs):
        raise SystemExit("some requests were refused or failed (see by_code)")


def load_table(report):
    lines = [f"faceproof load through faceproof up, {report['concurrency']} in flight, {report['requests']} "
             f"requests per row after {report['warmup']} warm-up; 640x480 probe and gallery (same person: "
             f"liveness on every request)",
             f"load average before {report['machine_before']['loadavg']}, after {report['machine_after']['loadavg']}",
             "| search mode | requests/s | latency p50 / p90 / p99 (ms) | answers |",
             "| --- | --- | --- | --- |"]
    for run in report["runs"]:
        ms = run["latency_ms"]
        lines.append(f"| {run['mode']} | {run['requests_per_second']:.1f} | {ms['p50']:.1f} / {ms['p90']:.1f} / "
                     f"{ms['p99']:.1f} | {run['by_code']} |")
    lines.append(f"gateway environment: {report['gateway_limits_seen_by_the_gateway']}")
    peaks = report["peak_rss_mib"]
    lines.append("peak RSS (VmHWM) after both rows: " + ", ".join(f"{s} {peaks[s]} MiB" for s in SERVICES))
    return "\n".join(lines)


def read_reports(paths):
    """The latency reports in `latency --json` files (one report, or {"runs": [...]})."""
    reports = []
    for path in paths:
        data = json.load(open(path))
        reports += data["runs"] if "runs" in data else [data]
    return reports


def summary_of_runs(reports):
    """The median over several latency reports of each p50, and the range of the per-run ratios
    (the README's three-run table)."""
    median = statistics.median
    lines = [f"{len(reports)} runs of service.py latency (references {reports[0]['reference']['backends']}); "
             "p50 ms, median over the runs; ratio = service p50 / the fastest reference's p50 in that run, "
             "median (min-max)",
             "load average before each run: " + ", ".join(str(r["machine_before"]["loadavg"]) for r in reports),
             "| case | FAST | ACCURATE | fastest reference | FAST / ref | ACCURATE / ref | fastest reference (runs) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for index, row in enumerate(reports[0]["cases"]):
        rows = [r["cases"][index] for r in reports]
        p50 = {name: median([r[name]["p50_ms"] for r in rows]) for name in (*MODES, "reference")}
        ratios = {mode: [r[mode]["ratio_p50"] for r in rows] for mode in MODES}
        cells = [f"{median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for v in ratios.values()]
        won = Counter(r["reference"]["backend"] for r in rows)
        lines.append(f"| {row['case']} | {p50['FAST']:.1f} | {p50['ACCURATE']:.1f} | {p50['reference']:.1f} | "
                     + " | ".join(cells) + " | " + ", ".join(f"{b} {n}" for b, n in won.most_common()) + " |")
    return "\n".join(lines)


def emit(report, as_json, table):
    print(json.dumps(report, indent=2) if as_json else table(report))


def default_bench_dir():
    """`../shared/bench` beside the checkout, or beside its parent (as reference.shared_dir)."""
    candidates = [os.path.join(REPO, "..", "shared"), os.path.join(REPO, "..", "..", "shared")]
    shared = next((c for c in candidates if os.path.isdir(c)), candidates[0])
    return os.path.normpath(os.path.join(shared, "bench"))


def main():
    defaults_shared = None
    try:
        import reference  # for its default paths; needs numpy and cv2 (latency needs them anyway)

        defaults_shared = reference.default_paths()
    except ImportError:
        pass
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--faceproof", default=os.path.join(REPO, "target", "release", "faceproof"))
    common.add_argument("--port-base", type=int, default=18051,
                        help="gRPC port; REST, matcher, liveness and the 3 metrics ports follow it")
    common.add_argument("--ready-timeout-s", type=int, default=180)
    common.add_argument("--warmup", type=int, default=4)
    common.add_argument("--json", action="store_true", help="print the report as JSON")
    latency_parser = sub.add_parser("latency", parents=[common], help="one request in flight, REST, against the reference")
    latency_parser.add_argument("--requests", type=int, default=20, help="timed requests per case and mode")
    latency_parser.add_argument("--runs", type=int, default=1,
                                help="repeat the whole measurement (same stack); more than 1 prints each "
                                "run and the median with the ratios' range")
    latency_parser.add_argument("--backends", default=None,
                                help="comma-separated reference backends of this Python environment "
                                "[default: all it has]; the ratios are against the fastest")
    latency_parser.add_argument("--cases", nargs="*", choices=[c[0] for c in CASES], help="default: all")
    if defaults_shared:
        reference.add_model_arguments(latency_parser, with_backends=False)
    load_parser = sub.add_parser("load", parents=[common], help="throughput at saturation and peak RSS")
    load_parser.add_argument("--concurrency", type=int, default=8)
    load_parser.add_argument("--requests", type=int, default=200, help="timed requests per search mode")
    load_parser.add_argument("--bench-dir", default=default_bench_dir())
    summary_parser = sub.add_parser("summary", help="median and ratio range over several `latency --json` reports")
    summary_parser.add_argument("reports", nargs="+")
    args = parser.parse_args()
    if args.command == "summary":
        print(summary_of_runs(read_reports(args.reports)))
        return
    if args.requests < 1 or args.warmup < 0 or getattr(args, "runs", 1) < 1:
        parser.error("--requests and --runs must be at least 1, --warmup at least 0")
    if args.command == "latency":
        if not defaults_shared:
            parser.error("latency needs the reference's environment (numpy, OpenCV): run it with "
                         "bench/.venv-opencv5/bin/python")
        args.backends = args.backends or ",".join(reference.backends.available())
        latency(args)
    else:
        load(args)


if __name__ == "__main__":
    main()
