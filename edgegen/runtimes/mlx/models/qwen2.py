"""MLX model for `qwen2`: the shared decoder with the flags set by `edgegen.archs.qwen2`."""

from edgegen.runtimes.mlx.models._decoder import DecoderModel as Model

__all__ = ["Model"]
