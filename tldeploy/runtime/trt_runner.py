"""Run a TensorRT engine through the common runner interface: `execute_async_v3` on device
buffers that are PyTorch CUDA tensors (PyTorch is a dependency already; no pycuda needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tldeploy.errors import ConfigError, TldeployError
from tldeploy.runtime.runners import BaseRunner, DeviceStages, TensorSpec, read_sidecar


class TrtRunner(BaseRunner):
    def __init__(self, path: Path, plugins: tuple[Path, ...] | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.plugins = plugins
        self.name = f"tensorrt:{self.path.name}"

    def _activate(self) -> None:
        import torch

        from tldeploy.runtime.trt import create_logger, load_plugins, require_tensorrt

        require_tensorrt()
        import tensorrt as trt

        if not torch.cuda.is_available():
            raise ConfigError(f"{self.path} is a TensorRT engine and needs a CUDA GPU; none is visible here")
        plugins = self.plugins
        if plugins is None:  # the libraries the engine was built with, from its build record
            record = read_sidecar(self.path)
            plugins = record.plugins if record else ()
        load_plugins(plugins)
        self._logger = create_logger()
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise TldeployError(
                f"TensorRT could not load {self.path}: engines are tied to the GPU and the TensorRT version they were "
                "built with; rebuild it here with 'tldeploy build --force'"
            )
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}

    def _input_spec(self) -> dict[str, TensorSpec]:
        from tldeploy.runtime.trt import dims_tuple

        return {
            n: TensorSpec(tuple(None if d < 0 else d for d in dims_tuple(self.engine.get_tensor_shape(n))), self._dtypes[n])
            for n in self.inputs
        }

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        st = self._device_stages(feed)
        with torch.cuda.stream(self.stream):
            st.upload()
            st.compute()
            st.download()
        self.stream.synchronize()
        return {k: v.copy() for k, v in st.outputs().items()}

    def _device_stages(self, feed: dict[str, np.ndarray]):
        """Pinned host buffers and device buffers for `feed`, bound to the context; copies and
        `execute_async_v3` are enqueued on the runner's stream by the returned steps."""
        import torch

        from tldeploy.runtime.trt import dims_tuple

        host_in = {n: torch.from_numpy(np.ascontiguousarray(feed[n])).pin_memory() for n in self.inputs}
        dev_in = {n: torch.empty_like(t, device="cuda") for n, t in host_in.items()}
        for name, t in dev_in.items():
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise TldeployError(f"{self.name}: batch {t.shape[0]} is outside the engine's profile; rebuild with a wider --batch")
            self.context.set_tensor_address(name, t.data_ptr())
        dev_out, host_out = {}, {}
        for name in self.outputs:
            shape = dims_tuple(self.context.get_tensor_shape(name))
            dtype = getattr(torch, self._dtypes[name].name)
            dev_out[name] = torch.empty(shape, dtype=dtype, device="cuda")
            host_out[name] = torch.empty(shape, dtype=dtype, pin_memory=True)
            self.context.set_tensor_address(name, dev_out[name].data_ptr())

        def upload() -> None:
            for n, t in dev_in.items():
                t.copy_(host_in[n], non_blocking=True)

        def compute() -> None:
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise TldeployError(f"{self.name}: TensorRT execution failed")

        def download() -> None:
            for n, t in host_out.items():
                t.copy_(dev_out[n], non_blocking=True)

        return DeviceStages(self.stream, upload, compute, download, lambda: {n: t.numpy() for n, t in host_out.items()})

    def _deactivate(self) -> None:
        del self.context, self.engine, self._runtime
