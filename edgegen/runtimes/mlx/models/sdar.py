"""MLX model for `sdar`: the shared decoder with the flags set by `edgegen.archs.sdar`."""

from edgegen.runtimes.mlx.models._decoder import DecoderModel as Model

__all__ = ["Model"]
