"""MLX model for `fast_dllm_qwen`: the shared decoder with the flags set by `edgegen.archs.fast_dllm_qwen`."""

from edgegen.runtimes.mlx.models._decoder import DecoderModel as Model

__all__ = ["Model"]
