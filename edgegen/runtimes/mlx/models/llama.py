"""MLX model for `llama`: the shared decoder with the flags set by `edgegen.archs.llama`."""

from edgegen.runtimes.mlx.models._decoder import DecoderModel as Model

__all__ = ["Model"]
