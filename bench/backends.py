"""The reference backends, set up one way for every script in bench/: onnxruntime with `threads`
intra-op threads, sequential and without spinning, and OpenCV's own DNN backend on the CPU (its
thread count is `cv2.setNumThreads`, set once by the caller).

OpenCV 4 and OpenCV 5 cannot share one Python environment, so each environment runs the backends
it has: `bench/.venv` (requirements.txt) onnxruntime and OpenCV 4, `bench/.venv-opencv5`
(requirements-opencv5.txt) OpenCV 5 (see bench/README.md)."""

import cv2

try:
    import onnxruntime as ort
except ImportError:  # the OpenCV 5 environment has no onnxruntime
    ort = None

# The OpenCV backend of this environment, named by its major version.
OPENCV = f"opencv{cv2.__version__.split('.')[0]}"


def available():
    """The backends this Python environment can run."""
    return (["onnxruntime"] if ort is not None else []) + [OPENCV]


def ort_session(path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning pool threads steal the CPU from everything else on a 2-core machine (DESIGN.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def ort_net(path, threads):
    """`run(blob) -> output` for a one-input, one-output ONNX file under onnxruntime."""
    session = ort_session(path, threads)
    name = session.get_inputs()[0].name

    def run(blob):
        return session.run(None, {name: blob})[0]

    return run


def opencv_net(path):
    """`run(blob) -> output` for an ONNX file under OpenCV's DNN module."""
    net = cv2.dnn.readNetFromONNX(path)
    if OPENCV == "opencv4":
        # OpenCV 5's graph engine runs on the CPU only and warns about any target set.
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

    def run(blob):
        net.setInput(blob)
        return net.forward()

    return run
