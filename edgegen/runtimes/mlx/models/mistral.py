"""MLX model for `mistral`: the shared decoder with the flags set by `edgegen.archs.mistral`."""

from edgegen.runtimes.mlx.models._decoder import DecoderModel as Model

__all__ = ["Model"]
