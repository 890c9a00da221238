"""The build stage (TensorRT and ONNX Runtime artifacts, runners): not built yet, see issue 4."""
