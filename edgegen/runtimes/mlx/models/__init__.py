"""MLX modules, one file per Hugging Face `model_type`, found by name (lazy import)."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgegen.archs import arch_module, module_name


def model_module(model_type: str) -> ModuleType:
    """The MLX model of `model_type`; an unknown architecture gets `arch_module`'s error."""
    arch_module(model_type)
    return importlib.import_module(f"{__name__}.{module_name(model_type)}")
