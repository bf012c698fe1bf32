"""Turn Hugging Face checkpoints into runtime formats (MLX safetensors, ONNX graphs)."""
