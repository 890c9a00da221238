"""The export stage: ONNX with the CAM head and the preprocessing contract in its metadata."""
