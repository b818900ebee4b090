#!/usr/bin/env python3
"""Builds ONNX graphs of the two MiniFASNet anti-spoofing networks from faceproof's converted
weights, for the onnxruntime / OpenCV side of the speed benchmark.

Silent-Face-Anti-Spoofing publishes PyTorch `.pth` files only, so there is no upstream ONNX file to
time. This script reads `models/store/minifasnet_{v2,v1se}.safetensors` (the upstream tensors,
converted byte for byte by `faceproof models fetch`) with numpy and writes the network that
`crates/vision/src/nets/minifasnet.rs` runs as plain ONNX ops (opset 13): Conv (group = channels
for depthwise), PRelu, Add, GlobalAveragePool + Conv + Relu + Conv + Sigmoid + Mul for
squeeze-excitation, Flatten and Gemm. Every BatchNorm is folded into the Conv/Gemm before it (in
float64, as a PyTorch export run through an optimiser would have it); `--keep-batchnorm` keeps
them as BatchNormalization nodes instead, which checks the folding independently.

Input `input`: 1x3x80x80 float32, BGR planes of raw 0..255 values. Output `logits`: 1x3.

Usage:
  python3 bench/minifasnet_onnx.py [--store models/store] [--out DIR]   # writes the .onnx files
  python3 bench/minifasnet_onnx.py --check                               # parity with the goldens
"""

import argparse
import json
import os
import struct
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ../shared beside the checkout, or beside its parent (a git worktree in a subfolder).
SHARED = next(
    (d for d in (os.path.join(REPO, "..", "shared"), os.path.join(REPO, "..", "..", "shared")) if os.path.isdir(d)),
    os.path.join(REPO, "..", "shared"),
)
INPUT_SIZE = 80
NUM_CLASSES = 3
OPSET = 13
# PyTorch's default BatchNorm epsilon, which the upstream model uses.
BATCH_NORM_EPS = 1e-5
# Network name -> (weights file in the model store, golden key prefix in net_io.npz).
VARIANTS = {
    "minifasnet_v2": ("minifasnet_v2.safetensors", "v2"),
    "minifasnet_v1se": ("minifasnet_v1se.safetensors", "v1se"),
}
# The residual stages, each after its strided bottleneck, with their block counts.
STAGES = (("conv_23", "conv_3", 4), ("conv_34", "conv_4", 6), ("conv_45", "conv_5", 2))
SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def load_safetensors(path):
    """Tensors of a safetensors file: an 8-byte little-endian header length, a JSON header of
    {name: {dtype, shape, data_offsets}} (offsets relative to the data after the header), then
    the raw little-endian data."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if 8 + header_len > len(blob):
        raise ValueError(f"{path}: header length {header_len} runs past the end of the file")
    header = json.loads(blob[8 : 8 + header_len])
    data = memoryview(blob)[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if end - start != count * np.dtype(dtype).itemsize or end > len(data):
            raise ValueError(f"{path}: {name} data_offsets {start}..{end} do not fit shape {shape}")
        tensors[name] = np.frombuffer(data[start:end], dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).copy()
    return tensors


class GraphBuilder:
    """Accumulates nodes and initializers; every helper returns its output's name."""

    def __init__(self, tensors, fold_batch_norm):
        self.tensors = tensors
        self.fold = fold_batch_norm
        self.nodes = []
        self.initializers = []
        self.counter = 0

    def fresh(self, hint):
        self.counter += 1
        return f"{hint}_{self.counter}"

    def weight(self, name):
        if name not in self.tensors:
            raise KeyError(f"missing tensor {name}")
        return self.tensors[name]

    def constant(self, name, value):
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def node(self, op, inputs, hint, **attrs):
        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def batch_norm_scale_shift(self, bn):
        """The eval-mode BatchNorm under `bn` as y = x * scale + shift, in float64."""
        gamma = self.weight(f"{bn}.weight").astype(np.float64)
        beta = self.weight(f"{bn}.bias").astype(np.float64)
        mean = self.weight(f"{bn}.running_mean").astype(np.float64)
        var = self.weight(f"{bn}.running_var").astype(np.float64)
        scale = gamma / np.sqrt(var + BATCH_NORM_EPS)
        return scale, beta - mean * scale

    def batch_norm_node(self, x, bn):
        """An unfolded BatchNormalization node (`--keep-batchnorm`)."""
        params = [
            self.constant(f"{bn}.{p}", self.weight(f"{bn}.{p}"))
            for p in ("weight", "bias", "running_mean", "running_var")
        ]
        return self.node("BatchNormalization", [x] + params, f"{bn}.bn", epsilon=BATCH_NORM_EPS)

    def conv_bn(self, x, conv_weight, bn, stride=1, padding=0, depthwise=False, prefix=None):
        """Conv (no bias upstream) followed by the BatchNorm `bn`, folded or not."""
        weight = self.weight(conv_weight)
        out_channels, _, kh, kw = weight.shape
        prefix = prefix or conv_weight.rsplit(".", 1)[0]
        attrs = dict(
            kernel_shape=[kh, kw],
            strides=[stride, stride],
            pads=[padding] * 4,
            group=out_channels if depthwise else 1,
        )
        if depthwise and weight.shape[1] != 1:
            raise ValueError(f"{conv_weight}: depthwise weight must be [C, 1, kh, kw], got {weight.shape}")
        if self.fold:
            scale, shift = self.batch_norm_scale_shift(bn)
            folded = weight.astype(np.float64) * scale[:, None, None, None]
            inputs = [x, self.constant(f"{prefix}.w", folded), self.constant(f"{prefix}.b", shift)]
            return self.node("Conv", inputs, prefix, **attrs)
        y = self.node("Conv", [x, self.constant(f"{prefix}.w", weight)], prefix, **attrs)
        return self.batch_norm_node(y, bn)

    def prelu(self, x, slope_name):
        slope = self.weight(slope_name)
        # [C, 1, 1] broadcasts over NCHW per channel (onnxruntime and OpenCV's ChannelsPReLU).
        return self.node("PRelu", [x, self.constant(slope_name, slope.reshape(-1, 1, 1))], slope_name)

    def conv_block(self, x, prefix, stride=1, padding=0, depthwise=False, prelu=True):
        """Upstream `Conv_block` (conv + BN + PReLU) or `Linear_block` (conv + BN)."""
        y = self.conv_bn(x, f"{prefix}.conv.weight", f"{prefix}.bn", stride, padding, depthwise, prefix)
        return self.prelu(y, f"{prefix}.prelu.weight") if prelu else y

    def squeeze_excitation(self, x, prefix):
        """Upstream `SEModule`: pool, 1x1 conv + BN + ReLU, 1x1 conv + BN, sigmoid, multiply."""
        pooled = self.node("GlobalAveragePool", [x], f"{prefix}.pool")
        reduced = self.conv_bn(pooled, f"{prefix}.fc1.weight", f"{prefix}.bn1", prefix=f"{prefix}.fc1")
        reduced = self.node("Relu", [reduced], f"{prefix}.relu")
        gate = self.conv_bn(reduced, f"{prefix}.fc2.weight", f"{prefix}.bn2", prefix=f"{prefix}.fc2")
        gate = self.node("Sigmoid", [gate], f"{prefix}.sigmoid")
        return self.node("Mul", [x, gate], f"{prefix}.scale")

    def bottleneck(self, x, prefix, stride, residual):
        """Upstream `Depth_Wise` / `Depth_Wise_SE`: 1x1 expand, depthwise 3x3 with the stride,
        1x1 project; squeeze-excitation (if the weights have one) on the projection, before the
        residual add."""
        y = self.conv_block(x, f"{prefix}.conv")
        y = self.conv_block(y, f"{prefix}.conv_dw", stride=stride, padding=1, depthwise=True)
        y = self.conv_block(y, f"{prefix}.project", prelu=False)
        if f"{prefix}.se_module.fc1.weight" in self.tensors:
            if not residual:
                raise ValueError(f"{prefix}: squeeze-excitation on a block without residual")
            y = self.squeeze_excitation(y, f"{prefix}.se_module")
        return self.node("Add", [x, y], f"{prefix}.add") if residual else y

    def linear_bn(self, x, weight_name, bn):
        """Linear (no bias) followed by BatchNorm1d, as one Gemm when folded."""
        weight = self.weight(weight_name)
        if self.fold:
            scale, shift = self.batch_norm_scale_shift(bn)
            folded = weight.astype(np.float64) * scale[:, None]
            inputs = [x, self.constant("linear.w", folded), self.constant("linear.b", shift)]
            return self.node("Gemm", inputs, "linear", transB=1)
        y = self.node("Gemm", [x, self.constant("linear.w", weight)], "linear", transB=1)
        return self.batch_norm_node(y, bn)


def build_model(tensors, fold_batch_norm=True, name="minifasnet"):
    """The ONNX model of one MiniFASNet (V2 or V1SE: squeeze-excitation is present exactly when
    the weights carry `se_module` tensors), from its state dict without the `module.` prefix."""
    g = GraphBuilder(tensors, fold_batch_norm)
    x = g.conv_block("input", "conv1", stride=2, padding=1)
    x = g.conv_block(x, "conv2_dw", stride=1, padding=1, depthwise=True)
    for strided, stage, blocks in STAGES:
        x = g.bottleneck(x, strided, stride=2, residual=False)
        for i in range(blocks):
            x = g.bottleneck(x, f"{stage}.model.{i}", stride=1, residual=True)
    x = g.conv_block(x, "conv_6_sep")
    # The 5x5 depthwise "global" conv: 5x5 maps -> 1x1, no activation.
    x = g.conv_block(x, "conv_6_dw", depthwise=True, prelu=False)
    x = g.node("Flatten", [x], "flatten", axis=1)
    x = g.linear_bn(x, "linear.weight", "bn")
    # Dropout (before `prob`) is the identity at inference.
    classifier = g.weight("prob.weight")
    if classifier.shape[0] != NUM_CLASSES:
        raise ValueError(f"prob.weight has shape {classifier.shape}, expected [{NUM_CLASSES}, _]")
    logits = g.node("Gemm", [x, g.constant("prob.w", classifier)], "prob", transB=1)
    g.nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        g.nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, NUM_CLASSES])],
        g.initializers,
    )
    del logits
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="faceproof bench/minifasnet_onnx.py",
    )
    # IR version 8 (opset 13 era) so older runtimes and OpenCV 4.x accept the file.
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def build_all(store, fold_batch_norm=True):
    """{network name: serialized ONNX model} for both variants in `store`."""
    models = {}
    for net, (file_name, _) in VARIANTS.items():
        tensors = load_safetensors(os.path.join(store, file_name))
        models[net] = build_model(tensors, fold_batch_norm, net).SerializeToString()
    return models


def write_all(store, out_dir, fold_batch_norm=True):
    """Writes `<out_dir>/<network>.onnx` for both variants; returns {network name: path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for net, data in build_all(store, fold_batch_norm).items():
        path = os.path.join(out_dir, f"{net}.onnx")
        with open(path, "wb") as f:
            f.write(data)
        paths[net] = path
    return paths


def golden_pairs(npz_paths):
    """(fixture/prefix, input, logits) for every MiniFASNet golden in the given npz files, each
    fixture once (the first file wins)."""
    seen = {}
    for path in npz_paths:
        if not os.path.exists(path):
            continue
        data = np.load(path)
        for key in data.files:
            for net, (_, prefix) in VARIANTS.items():
                if key.endswith(f"/{prefix}_in"):
                    fixture = key[: -len(f"/{prefix}_in")]
                    out_key = f"{fixture}/{prefix}_out"
                    if out_key in data.files and (net, fixture) not in seen:
                        seen[(net, fixture)] = (data[key], data[out_key])
    return seen


def check(store, npz_paths, threads, tolerance):
    """Runs both networks under onnxruntime and OpenCV on every golden input; prints the error
    per network and backend and returns whether all stay within `tolerance`.

    The error of one fixture is max|ours - golden| / max|golden| over its 3 logits (relative to
    the logit vector's scale: a logit near 0 would make an element-wise ratio meaningless);
    the element-wise maximum of |ours - golden| / |golden| is printed beside it."""
    import cv2

    from backends import OPENCV, available, opencv_net, ort_net

    cv2.setNumThreads(threads)
    pairs = golden_pairs(npz_paths)
    if not pairs:
        print("no MiniFASNet goldens found in " + ", ".join(npz_paths), file=sys.stderr)
        return False
    ok = True
    for fold in (True, False):
        label = "folded BN" if fold else "BatchNormalization nodes"
        with tempfile.TemporaryDirectory() as tmp:
            paths = write_all(store, tmp, fold)
            for net, path in paths.items():
                backends = {OPENCV: opencv_net(path)}
                if "onnxruntime" in available():
                    backends["onnxruntime"] = ort_net(path, threads)
                fixtures = sorted(f for n, f in pairs if n == net)
                for backend, run in backends.items():
                    worst, worst_elementwise, worst_fixture = 0.0, 0.0, None
                    for fixture in fixtures:
                        x, golden = pairs[(net, fixture)]
                        got = np.asarray(run(np.ascontiguousarray(x, np.float32)), np.float64).reshape(golden.shape)
                        golden = golden.astype(np.float64)
                        diff = np.abs(got - golden)
                        error = float(diff.max() / max(np.abs(golden).max(), 1e-12))
                        elementwise = float((diff / np.maximum(np.abs(golden), 1e-12)).max())
                        if error > worst:
                            worst, worst_fixture = error, fixture
                        worst_elementwise = max(worst_elementwise, elementwise)
                    passed = worst <= tolerance
                    ok &= passed
                    print(
                        f"{net:<16} {backend:<12} {label:<25} fixtures {len(fixtures)}  "
                        f"max rel err {worst:.2e} (element-wise {worst_elementwise:.2e}, worst {worst_fixture})  "
                        f"{'ok' if passed else 'FAIL'}"
                    )
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=os.path.join(REPO, "models", "store"), help="converted weights")
    parser.add_argument(
        "--out",
        default=None,
        help="directory for minifasnet_v2.onnx and minifasnet_v1se.onnx (default: a new temp dir)",
    )
    parser.add_argument("--keep-batchnorm", action="store_true", help="BatchNormalization nodes, not folded")
    parser.add_argument("--check", action="store_true", help="compare with the golden logits instead")
    parser.add_argument(
        "--golden",
        nargs="+",
        default=[
            os.path.join(REPO, "crates", "vision", "tests", "golden", "net_io.npz"),
            os.path.join(SHARED, "golden", "net_inputs.npz"),
        ],
        help="npz files with <fixture>/v2_in, v2_out, v1se_in, v1se_out (missing files are skipped)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    args = parser.parse_args()
    if args.check:
        sys.exit(0 if check(args.store, args.golden, args.threads, args.tolerance) else 1)
    out = args.out or tempfile.mkdtemp(prefix="minifasnet_onnx_")
    for net, path in write_all(args.store, out, not args.keep_batchnorm).items():
        print(f"{net}: {path}")


if __name__ == "__main__":
    main()
