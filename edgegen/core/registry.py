"""Find implementations by name, with lazy imports and no central if/elif.

An architecture `t` is `edgegen.archs.t`; its runtime model is `edgegen.runtimes.<rt>.models.t`.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from edgegen.core.errors import UnsupportedArchitecture


def supported_architectures() -> list[str]:
    archs = importlib.import_module("edgegen.archs")
    return sorted(m.name for m in pkgutil.iter_modules(archs.__path__) if not m.name.startswith("_"))


def module_name(model_type: str) -> str:
    """`model_type` as a module name: "Fast_dLLM_Qwen" -> "fast_dllm_qwen", "Dream" -> "dream"."""
    return str(model_type).lower()


def arch_module(model_type: str) -> ModuleType:
    """The backend-free description of `model_type` (config class + weight names)."""
    if module_name(model_type) not in supported_architectures():
        raise UnsupportedArchitecture(
            f"model_type {model_type!r} is not supported; supported architectures: "
            f"{', '.join(supported_architectures())}"
        )
    return importlib.import_module(f"edgegen.archs.{module_name(model_type)}")


def runtime_model_module(runtime: str, model_type: str) -> ModuleType:
    arch_module(model_type)  # same error for an unknown architecture
    return importlib.import_module(f"edgegen.runtimes.{runtime}.models.{module_name(model_type)}")
