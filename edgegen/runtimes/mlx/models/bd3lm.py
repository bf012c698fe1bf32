"""MLX model for `bd3lm`: the shared decoder with the flags set by `edgegen.archs.bd3lm`."""

from edgegen.runtimes.mlx.models._decoder import DecoderModel as Model

__all__ = ["Model"]
