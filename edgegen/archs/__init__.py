"""Backend-free architecture descriptions, one module per Hugging Face `model_type`.

An architecture `t` is `edgegen.archs.t`, found by name (lazy import, no central if/elif); each
runtime finds its own model for `t` the same way (`edgegen.runtimes.mlx.models.model_module`).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from edgegen.core.errors import UnsupportedArchitecture


def supported_architectures() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


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
    return importlib.import_module(f"{__name__}.{module_name(model_type)}")
