"""The export stage (ONNX with the CAM head and the preprocessing contract): not built yet, see issue 3."""
