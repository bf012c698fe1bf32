"""edgegen: run generative models on the device in front of you (MLX, ONNX Runtime).

    import edgegen
    edgegen.convert("Qwen/Qwen2.5-0.5B-Instruct", "qwen-onnx", runtime="onnx", quant="q4")
    model = edgegen.load("qwen-onnx")
    print(model.generate("The capital of France is", max_tokens=16).text)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load", "convert", "__version__"]

if TYPE_CHECKING:
    from edgegen.api import Model


def load(path: Any, provider: str | None = None, **kwargs: Any) -> "Model":
    """Load a converted model folder; see `edgegen.api.load`."""
    from edgegen.api import load as _load

    return _load(path, provider, **kwargs)


def convert(src: str, out: Any, **options: Any):
    """Convert a Hugging Face folder or repo id; options: runtime, dtype, quant, group_size,
    revision, force. See `edgegen.converters.convert.convert`."""
    from edgegen.converters.convert import convert as _convert

    return _convert(src, out, **options)
