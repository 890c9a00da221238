"""Runners: one interface over PyTorch, ONNX Runtime and TensorRT, and the loader that picks one for a file."""
