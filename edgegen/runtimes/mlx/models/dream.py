"""MLX model for `dream`: the shared decoder with the flags set by `edgegen.archs.dream`."""

from edgegen.runtimes.mlx.models._decoder import DecoderModel as Model

__all__ = ["Model"]
