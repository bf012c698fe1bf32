"""Execution-provider selection and session creation.

Our graphs use ONNX Runtime's fused contrib ops (GroupQueryAttention, MatMulNBits, ...), which the
CPU and CUDA providers implement; on CoreML, QNN or DirectML the nodes those providers cannot take
run on the CPU provider in the same session. A provider that is not in this onnxruntime build
falls back to the CPU with one clear message.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from edgegen.core.errors import BackendUnavailable, ConfigError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "dml": "DmlExecutionProvider",
    "cuda": "CUDAExecutionProvider",
}
AUTO_ORDER = ("cuda", "dml", "coreml", "qnn")  # tried by "auto" before the CPU
PROVIDER_OPTIONS = {
    "coreml": {"ModelFormat": "MLProgram", "MLComputeUnits": "ALL"},
    "qnn": {"backend_path": "QnnHtp.dll" if sys.platform == "win32" else "libQnnHtp.so"},
}


def import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed; `pip install onnxruntime`") from None
    ort.set_default_logger_severity(4)  # its failures reach the user as our one-line errors instead
    return ort


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def ort_message(exc: BaseException) -> str:
    """onnxruntime's exception text on one line, without colour codes or its status prefix."""
    text = _ANSI.sub("", str(exc)).replace("[ONNXRuntimeError] :", "").strip()
    return " ".join(text.split())[:300]


def choose_provider(requested: str | None) -> str:
    """Our short provider name to use: the requested one when this build has it, else 'cpu'."""
    ort = import_ort()
    requested = (requested or "cpu").lower()
    if requested not in PROVIDERS and requested != "auto":
        raise ConfigError(f"unknown provider {requested!r}; choose one of auto, {', '.join(PROVIDERS)}")
    available = set(ort.get_available_providers())
    if requested == "auto":
        return next((p for p in AUTO_ORDER if PROVIDERS[p] in available), "cpu")
    if PROVIDERS[requested] not in available:
        print(f"edgegen: the {requested} execution provider is not in this onnxruntime build "
              f"(available: {', '.join(sorted(available))}); running on the CPU", file=sys.stderr)
        return "cpu"
    return requested


def create_session(model_path: Path, provider: str, threads: int | None = None, spinning: bool = True):
    """`spinning=False` makes the session's threads sleep right after a run instead of spinning for
    more work: what a draft model needs, whose runs alternate with the target's on the same cores."""
    ort = import_ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or int(os.environ.get("EDGEGEN_THREADS", "0"))
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list = ["CPUExecutionProvider"]
    if provider != "cpu":
        providers.insert(0, (PROVIDERS[provider], PROVIDER_OPTIONS.get(provider, {})))
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise BackendUnavailable(f"ONNX Runtime could not load {model_path} ({ort_message(exc)}); "
                                 "convert the model again with this edgegen version") from None


def create_npu_session(model_path: Path, provider: str, threads: int | None = None):
    """A session for a graph of an NPU bundle: on the CPU provider as any other; on an NPU provider
    with the CPU fallback disabled, so a node the NPU cannot take fails the load (one line naming
    it) instead of running on the CPU unseen."""
    if provider == "cpu":
        return create_session(model_path, "cpu", threads)
    raise BackendUnavailable(f"the {provider} provider cannot load NPU bundles yet")
