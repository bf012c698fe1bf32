"""MLX model for `llada`: the shared decoder with the flags set by `edgegen.archs.llada`."""

from edgegen.runtimes.mlx.models._decoder import DecoderModel as Model

__all__ = ["Model"]
