"""The two reference backends, set up one way for every script in bench/: onnxruntime with
`threads` intra-op threads, sequential and without spinning, and OpenCV's own DNN backend on
the CPU (its thread count is `cv2.setNumThreads`, set once by the caller)."""

import cv2
import onnxruntime as ort


def ort_session(path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning pool threads steal the CPU from everything else on a 2-core machine (DESIGN.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def opencv_net(path):
    """`run(blob) -> output` for an ONNX file under OpenCV's DNN module."""
    net = cv2.dnn.readNetFromONNX(path)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

    def run(blob):
        net.setInput(blob)
        return net.forward()

    return run
