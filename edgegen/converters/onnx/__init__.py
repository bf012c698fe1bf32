"""ONNX export: a graph built block by block with onnx-ir, quantized with onnxruntime's tools."""
