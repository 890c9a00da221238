"""The build stage: an exported ONNX file -> a TensorRT engine or an ONNX Runtime artifact, with
its build record (the runners that run every artifact kind live in `tldeploy.runtime`).

- `capabilities`: which backend builds which precision on which device; `PrecisionTarget`, one validated request of them
- `quantize`: INT8 Q/DQ presets per target (`QuantConfig`, nesting the flavour-independent `Int8Options`), calibration, the float-fallback guard
- `fp16`: FP16 ONNX from an FP32 export
- `tensorrt`: strongly typed engines (TensorRT 10.3+ and 11), imported lazily
- `builder`: `build(BuildConfig)`, the command's library function; `artifacts`: records and cache keys
"""
