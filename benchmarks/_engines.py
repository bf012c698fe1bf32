"""The engines the benchmark knows, by name: how to check, prepare and open each one."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import _edgegen
import _llamacpp
import _peers
from _common import EngineUnavailable, RunStats

Runner = Callable[[list[int], int], RunStats]


@dataclass(frozen=True)
class Engine:
    name: str
    what: str  # one line for the report: format and loop
    requires: tuple[str, ...]  # importable modules
    pip: str  # what to install when they are missing
    prepare: Callable[[Path], Path]  # checkpoint -> converted artefact (cached)
    open: Callable[[Path, int], Runner]  # (artefact, threads) -> run(prompt, new_tokens)

    def check(self) -> None:
        """Raise EngineUnavailable (reported as 'skipped') when a required package is missing."""
        if self.name.startswith("edgegen-"):
            _edgegen.import_edgegen()
            return
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                raise EngineUnavailable(f"skipped (pip install {self.pip})")


def _edgegen_engine(name: str, runtime: str, quant: str, what: str) -> Engine:
    return Engine(
        name, what, ("edgegen",), "-e .",
        partial(_edgegen.prepare, name=name, runtime=runtime, quant=quant),
        _edgegen.open_engine,
    )


ENGINES: dict[str, Engine] = {e.name: e for e in [
    _edgegen_engine("edgegen-onnx-q4", "onnx", "q4", "edgegen ONNX, int4 weights (group 32)"),
    Engine("ort-genai-int4", "ORT GenAI builder -p int4 -e cpu, og.Generator loop",
           ("onnxruntime_genai", "onnx_ir"), "onnxruntime-genai onnx-ir",
           partial(_peers.prepare_ortgenai, precision="int4"), _peers.open_ortgenai),
    Engine("llamacpp-q4_0", "llama.cpp convert_hf_to_gguf f16 -> Q4_0, Llama.eval + greedy sampler",
           ("llama_cpp", "torch", "numpy"), "llama-cpp-python",
           _llamacpp.prepare, _llamacpp.open_engine),
    _edgegen_engine("edgegen-onnx-fp32", "onnx", "none", "edgegen ONNX, fp32"),
    Engine("ort-genai-fp32", "ORT GenAI builder -p fp32 -e cpu, og.Generator loop",
           ("onnxruntime_genai", "onnx_ir"), "onnxruntime-genai onnx-ir",
           partial(_peers.prepare_ortgenai, precision="fp32"), _peers.open_ortgenai),
    _edgegen_engine("edgegen-mlx-fp32", "mlx", "none", "edgegen MLX (CPU), fp32"),
    Engine("mlx-lm-fp32", "mlx_lm.convert fp32, mlx_lm generate_step (CPU)",
           ("mlx_lm",), "mlx-lm", _peers.prepare_mlxlm, _peers.open_mlxlm),
]}

DEFAULT_ENGINES = list(ENGINES)
BASELINE = "edgegen-onnx-q4"
