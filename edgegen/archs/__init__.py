"""Backend-free architecture descriptions, one module per Hugging Face `model_type`."""
