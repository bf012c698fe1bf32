"""MLX model for `qwen3`: the shared decoder with the flags set by `edgegen.archs.qwen3`."""

from edgegen.runtimes.mlx.models._decoder import DecoderModel as Model

__all__ = ["Model"]
