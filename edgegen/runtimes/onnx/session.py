"""Execution-provider selection and session creation.

Our CPU graphs use ONNX Runtime's fused contrib ops (GroupQueryAttention, MatMulNBits, ...), which
the CPU and CUDA providers implement; on CoreML, QNN or DirectML the nodes those providers cannot
take run on the CPU provider in the same session. NPU bundles (`--target npu`) are loaded with the
CPU fallback disabled instead: all of a graph on the NPU, or one line saying why not.

QNN ships as a plugin execution provider (the `onnxruntime-qnn` package, registered here with
`register_execution_provider_library`); builds that list `QNNExecutionProvider` themselves work too.
A provider that is in neither falls back to the CPU with one clear message.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Iterator

from edgegen.core.errors import BackendUnavailable, ConfigError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "dml": "DmlExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
AUTO_ORDER = ("cuda", "dml", "coreml", "qnn")  # tried by "auto" before the CPU
PROVIDER_OPTIONS = {
    "coreml": {"ModelFormat": "MLProgram", "MLComputeUnits": "ALL"},
    "qnn": {"backend_path": "QnnHtp.dll" if sys.platform == "win32" else "libQnnHtp.so"},
    "openvino": {"device_type": "NPU"},
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
    if requested in ("qnn", "auto") and qnn_devices(ort):  # the plugin is loaded only when asked for
        available.add(PROVIDERS["qnn"])
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
    if provider == "qnn" and qnn_devices(ort):
        options.add_provider_for_devices(qnn_devices(ort), qnn_options())
        providers = None
    elif provider != "cpu":
        providers.insert(0, (PROVIDERS[provider], PROVIDER_OPTIONS.get(provider, {})))
    try:
        with _native_prints_to_stderr() if provider == "qnn" else contextlib.nullcontext():
            return ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise BackendUnavailable(f"ONNX Runtime could not load {model_path} ({ort_message(exc)}); "
                                 "convert the model again with this edgegen version") from None


_HTP_HINT = ("; the HTP computes in fp16 or integers: convert with --quant fp16 (or give the SoC with "
             "EDGEGEN_QNN_OPTIONS='{\"soc_model\": \"60\"}'), or run with --provider cpu")


@contextlib.contextmanager
def _native_prints_to_stderr() -> Iterator[None]:
    """QNN's libraries print notices on the process's standard output, which would corrupt
    `--json` output: they go to standard error while QNN loads and compiles."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no usable descriptor 1: nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def qnn_devices(ort) -> list:
    """The QNN plugin's devices, registering onnxruntime-qnn once if it is installed ([] if not)."""
    try:
        import onnxruntime_qnn
    except ImportError:
        return []
    name = onnxruntime_qnn.get_ep_name()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == name]
    if not devices:
        try:
            with _native_prints_to_stderr():
                ort.register_execution_provider_library(name, onnxruntime_qnn.get_library_path())
        except Exception:  # a broken install: treated as absent, the caller says so
            return []
        devices = [d for d in ort.get_ep_devices() if d.ep_name == name]
    return devices


def qnn_options() -> dict[str, str]:
    """The HTP backend (the Hexagon NPU; simulated by the x86-64 Linux wheel), plus any options in
    EDGEGEN_QNN_OPTIONS (JSON), e.g. {"soc_model": "60", "htp_performance_mode": "burst"}."""
    import json

    extra = os.environ.get("EDGEGEN_QNN_OPTIONS", "")
    try:
        chosen = json.loads(extra) if extra else {}
    except ValueError:
        raise ConfigError(f"EDGEGEN_QNN_OPTIONS is not JSON: {extra[:80]!r}") from None
    if not isinstance(chosen, dict):
        raise ConfigError(f"EDGEGEN_QNN_OPTIONS must be a JSON object of QNN options, e.g. "
                          f"'{{\"soc_model\": \"60\"}}'; got {extra[:80]!r}")
    return {"backend_type": "htp", **{str(k): str(v) for k, v in chosen.items()}}


def create_npu_session(model_path: Path, provider: str, threads: int | None = None):
    """A session for a graph of an NPU bundle: on the CPU provider as any other; on QNN with the CPU
    fallback disabled, so a node the NPU cannot take fails the load (one line) instead of running on
    the CPU unseen. QNN's compiled graph is kept beside the bundle as an EPContext model and loaded
    from there next time; a damaged one is compiled again."""
    if provider == "cpu":
        return create_session(model_path, "cpu", threads)
    if provider != "qnn":
        return _strict_session(model_path, provider, threads)
    import hashlib
    import json

    ort = import_ort()
    tag = hashlib.sha256(json.dumps(qnn_options(), sort_keys=True).encode()).hexdigest()[:8]  # options change it
    cached = model_path.with_name(f"{model_path.stem}.qnn-{tag}.ctx.onnx")
    if cached.is_file():
        try:
            return _qnn_session(ort, cached, threads, None)
        except BackendUnavailable:
            print(f"edgegen: {cached.name} cannot be loaded; compiling {model_path.name} again", file=sys.stderr)
            for stale in model_path.parent.glob(f"{cached.stem}*"):
                stale.unlink(missing_ok=True)
    writable = os.access(model_path.parent, os.W_OK)
    return _qnn_session(ort, model_path, threads, cached if writable else None)


def _strict_session(model_path: Path, provider: str, threads: int | None):
    """An NPU bundle's graph on a provider this onnxruntime build lists (CoreML, OpenVINO, ...),
    with the CPU fallback disabled."""
    ort = import_ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads or int(os.environ.get("EDGEGEN_THREADS", "0"))
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        return ort.InferenceSession(str(model_path), sess_options=options,
                                    providers=[(PROVIDERS[provider], PROVIDER_OPTIONS.get(provider, {}))])
    except Exception as exc:  # onnxruntime raises its own types
        raise BackendUnavailable(f"{provider} cannot run all of {model_path.name}, and NPU bundles do not fall "
                                 f"back to the CPU ({ort_message(exc)}); run it with --provider cpu") from None


def _qnn_session(ort, path: Path, threads: int | None, save_to: Path | None):
    devices = qnn_devices(ort)
    if not devices:
        raise BackendUnavailable("the qnn provider needs onnxruntime-qnn: pip install 'edgegen[npu]' "
                                 "(Linux x86-64 or Windows, Python 3.11+)")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads or int(os.environ.get("EDGEGEN_THREADS", "0"))
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if save_to is not None:
        options.add_session_config_entry("ep.context_enable", "1")
        options.add_session_config_entry("ep.context_file_path", str(save_to))
        options.add_session_config_entry("ep.context_embed_mode", "0")
    options.add_provider_for_devices(devices, qnn_options())
    try:
        with _native_prints_to_stderr():
            return ort.InferenceSession(str(path), sess_options=options)
    except Exception as exc:  # onnxruntime raises its own types
        raise BackendUnavailable(f"QNN (HTP) cannot run all of {path.name}, and NPU bundles do not fall back "
                                 f"to the CPU ({ort_message(exc)}){_HTP_HINT}") from None


def placement(model_path: Path, provider: str) -> tuple[int, int]:
    """(nodes the provider takes, nodes in the graph). First as the runtime loads a bundle, CPU
    fallback disabled: if that compiles, the provider took every node (QNN then also takes the
    quantize/dequantize pairs at a QDQ graph's edges, which it otherwise leaves to the CPU).
    Otherwise with the fallback allowed, counting the nodes left outside QNN's EPContext partitions."""
    import onnx

    ort = import_ort()
    total = len(onnx.load(str(model_path), load_external_data=False).graph.node)
    if provider == "cpu":
        return total, total
    if provider != "qnn" or not qnn_devices(ort):
        raise BackendUnavailable(f"node placement is measured for the qnn provider (with onnxruntime-qnn "
                                 f"installed); {provider} is not available here")
    left = _left_on_cpu(ort, model_path, fallback=False)
    if left is None:
        left = _left_on_cpu(ort, model_path, fallback=True)
    return total - left, total


def _left_on_cpu(ort, model_path: Path, fallback: bool) -> int | None:
    """Nodes outside QNN's partitions after compiling `model_path` (None: it did not compile)."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "placed.onnx"
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if not fallback:
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        options.add_session_config_entry("ep.context_enable", "1")
        options.add_session_config_entry("ep.context_file_path", str(dump))
        options.add_session_config_entry("ep.context_embed_mode", "0")
        options.add_provider_for_devices(qnn_devices(ort), qnn_options())
        try:
            with _native_prints_to_stderr():
                ort.InferenceSession(str(model_path), sess_options=options)
        except Exception as exc:
            if not fallback:
                return None
            raise BackendUnavailable(f"QNN could not compile {model_path.name} ({ort_message(exc)}){_HTP_HINT}") from None
        if not dump.is_file():  # nothing was placed on QNN
            return len(onnx.load(str(model_path), load_external_data=False).graph.node)
        return sum(n.op_type != "EPContext" for n in onnx.load(str(dump), load_external_data=False).graph.node)
