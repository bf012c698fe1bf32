"""ONNX Runtime (CPU, CoreML, QNN, DirectML, CUDA execution providers)."""
