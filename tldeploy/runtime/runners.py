"""One interface for every backend, like Polygraphy's runners.

`BaseRunner` owns the contract: activate/deactivate (also as a context manager), the input spec,
and `infer` on a dict of named arrays with names, ranks, fixed dimensions and dtypes checked. A
backend implements only `_activate`, `_input_spec`, `_infer` and `_deactivate`. Runners never time
themselves: `bench/` owns clocks and warm-up so every backend is measured the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tldeploy.contract import OUTPUT_NAMES, Contract, OnnxFile
from tldeploy.errors import ConfigError, MissingDependencyError, TldeployError
from tldeploy.records import BuildRecord, CheckpointMeta

ENGINE_SUFFIXES = (".engine", ".plan")
CHECKPOINT_SUFFIXES = (".pt", ".pth")
ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


@dataclass
class DeviceStages:
    """What a device runner exposes to be timed stage by stage, all enqueued on `stream` (a
    `torch.cuda.Stream`): `upload` copies the inputs to the device, `compute` runs the network,
    `download` copies the outputs back; `outputs` returns them once the stream has finished."""

    stream: Any
    upload: Callable[[], Any]
    compute: Callable[[], Any]
    download: Callable[[], Any]
    outputs: Callable[[], dict[str, np.ndarray]]


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int | None, ...]  # None marks a dynamic dimension
    dtype: np.dtype


class BaseRunner:
    """Subclasses implement the four `_hooks`; everything else is shared."""

    name = "runner"

    def __init__(self) -> None:
        self.is_active = False
        self._spec: dict[str, TensorSpec] | None = None

    def activate(self) -> BaseRunner:
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> BaseRunner:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def input_spec(self) -> dict[str, TensorSpec]:
        self._require_active()
        if self._spec is None:
            self._spec = self._input_spec()
        return self._spec

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_feed(feed)
        return self._infer(feed)

    def device_stages(self, feed: dict[str, np.ndarray]):
        """For runners on a GPU: the copy-in, compute and copy-out steps of `infer(feed)`, enqueued on
        one CUDA stream, so that `bench` can time each with CUDA events (a `DeviceStages`); None
        for host runners."""
        self._check_feed(feed)
        return self._device_stages(feed)

    def _check_feed(self, feed: dict[str, np.ndarray]) -> None:
        self._require_active()
        spec = self.input_spec()
        if set(feed) != set(spec):
            raise TldeployError(f"{self.name}: expected inputs {sorted(spec)}, got {sorted(feed)}")
        for key, s in spec.items():
            a = feed[key]
            if not isinstance(a, np.ndarray):
                raise TldeployError(f"{self.name}: input {key!r} must be a numpy array, got {type(a).__name__}")
            if a.dtype != s.dtype:
                raise TldeployError(f"{self.name}: input {key!r} must be {s.dtype}, got {a.dtype}")
            if a.ndim != len(s.shape) or any(d is not None and d != n for d, n in zip(s.shape, a.shape, strict=True)):
                want = "x".join("N" if d is None else str(d) for d in s.shape)
                raise TldeployError(f"{self.name}: input {key!r} must have shape {want}, got {'x'.join(map(str, a.shape))}")

    def _require_active(self) -> None:
        if not self.is_active:
            raise TldeployError(f"{self.name} is not active; use it as a context manager or call activate() first")

    # hooks
    def _activate(self) -> None:
        raise NotImplementedError

    def _input_spec(self) -> dict[str, TensorSpec]:
        raise NotImplementedError

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _device_stages(self, feed: dict[str, np.ndarray]):
        return None

    def _deactivate(self) -> None:
        pass


class TorchRunner(BaseRunner):
    """The PyTorch reference: a tldeploy checkpoint, outputs `logits`, `probs`, `cam`."""

    def __init__(self, checkpoint: Path, device: str = "cpu") -> None:
        super().__init__()
        self.checkpoint, self.device = Path(checkpoint), device
        self.name = f"torch[{device}]:{self.checkpoint.name}"

    def _activate(self) -> None:
        import torch

        from tldeploy.models.checkpoints import load_checkpoint

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
        model, meta = load_checkpoint(self.checkpoint)
        self.model = model.to(self.device).eval()
        self.prep = CheckpointMeta.from_json(meta, str(self.checkpoint)).preprocessing

    def _input_spec(self) -> dict[str, TensorSpec]:
        return {self.prep.input_name: TensorSpec((None, *self.prep.input_shape), np.dtype(np.float32))}

    def _infer(self, feed):
        import torch

        with torch.no_grad():
            outs = self.model.forward_with_cam(torch.from_numpy(feed[self.prep.input_name]).to(self.device))
        return {k: v.float().cpu().numpy() for k, v in zip(OUTPUT_NAMES, outs, strict=True)}

    def _device_stages(self, feed):
        if not self.device.startswith("cuda"):
            return None
        import torch

        host = torch.from_numpy(feed[self.prep.input_name]).pin_memory()
        dev = torch.empty_like(host, device=self.device)
        state: dict[str, tuple] = {}

        def compute() -> None:
            with torch.no_grad():
                state["dev"] = self.model.forward_with_cam(dev)

        def download() -> None:
            state["host"] = tuple(t.float().to("cpu", non_blocking=True) for t in state["dev"])

        return DeviceStages(torch.cuda.Stream(self.device), lambda: dev.copy_(host, non_blocking=True), compute, download,
                            lambda: {k: v.numpy() for k, v in zip(OUTPUT_NAMES, state["host"], strict=True)})

    def _deactivate(self) -> None:
        del self.model


class OrtRunner(BaseRunner):
    """ONNX Runtime on one execution provider: cpu, cuda or tensorrt. `source` is an ONNX file, or
    a tldeploy model in memory (a ModelProto or its bytes, as export and quantization hold it)."""

    def __init__(self, source: Path | str | bytes | OnnxFile | Any, provider: str = "cpu", threads: int | None = None) -> None:
        super().__init__()
        if provider not in ORT_PROVIDERS:
            raise ConfigError(f"ONNX Runtime provider must be one of {', '.join(ORT_PROVIDERS)}, got {provider!r}")
        if isinstance(source, (str, Path)):
            source = OnnxFile(source)
        self.source, self.provider, self.threads = source, provider, threads
        self.path = source.path if isinstance(source, OnnxFile) else None
        self.name = f"ort[{provider}]:{'<in memory>' if self.path is None else self.path.name}"

    def _activate(self) -> None:
        from tldeploy.contract import read_contract

        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("onnxruntime", purpose="running ONNX files") from None
        if isinstance(self.source, OnnxFile):
            model = self.source.proto
        elif isinstance(self.source, bytes):
            import onnx

            model = onnx.load_from_string(self.source)
        else:
            model = self.source
        contract = self.source.contract if isinstance(self.source, OnnxFile) else read_contract(model)
        if contract.attention == "plugin":
            raise ConfigError(f"{self.path or 'this model'} uses ChannelAttention plugin nodes, which only TensorRT runs; use the standard export")
        wanted = ORT_PROVIDERS[self.provider]
        available = ort.get_available_providers()
        if wanted not in available:
            raise MissingDependencyError(
                "onnxruntime-gpu" if self.provider != "cpu" else "onnxruntime", extra="gpu",
                purpose=f"the {wanted} (available providers: {', '.join(available)})",
            )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = self.threads
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=[wanted])
        except Exception as e:  # onnxruntime's InvalidGraph, InvalidArgument, Fail, ... for a graph it rejects
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise TldeployError(f"ONNX Runtime cannot load {self.path or 'the model'}: {first[:300]}; "
                                "re-export it with 'tldeploy export' (or rebuild it with 'tldeploy build --force')") from None

    def _input_spec(self) -> dict[str, TensorSpec]:
        types = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
        return {
            i.name: TensorSpec(tuple(d if isinstance(d, int) else None for d in i.shape), np.dtype(types.get(i.type, np.float32)))
            for i in self.session.get_inputs()
        }

    def _infer(self, feed):
        return dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), feed), strict=True))

    def _deactivate(self) -> None:
        del self.session


def sidecar_path(artifact: Path) -> Path:
    return Path(str(artifact) + ".json")


def read_sidecar(artifact: Path) -> BuildRecord | None:
    """The build record beside `artifact`; None when there is none (an export, a file from elsewhere)."""
    p = sidecar_path(artifact)
    return BuildRecord.read(p) if p.is_file() else None


def artifact_kind(path: Path) -> str:
    """"checkpoint", "onnx" or "engine", from the file's suffix: the one place that decides."""
    path = Path(path)
    if path.suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix in ENGINE_SUFFIXES:
        return "engine"
    raise ConfigError(f"cannot tell what {path} is from its suffix; expected .pt, .onnx or .engine")


def artifact_contract(path: Path) -> Contract:
    """The contract of any artifact: ONNX metadata, checkpoint metadata, or an engine's build record."""
    from tldeploy.contract import read_contract

    path = Path(path)
    kind = artifact_kind(path)
    if not path.exists():
        raise TldeployError(f"artifact {path} does not exist")
    if kind == "onnx":
        return read_contract(path)
    if kind == "checkpoint":
        from tldeploy.records import CheckpointMeta

        return CheckpointMeta.read(path).contract()
    record = read_sidecar(path)  # an engine: its contract travels in the build record
    if record is None or record.contract is None:
        raise TldeployError(f"{path} has no build record {sidecar_path(path).name} beside it; rebuild it with 'tldeploy build'")
    return record.contract


def run_batches(runner: BaseRunner, x: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
    """`runner` over `x` in batches (padded to a fixed batch dimension where the artifact has one)."""
    name, spec = next(iter(runner.input_spec().items()))  # every tldeploy artifact has one input
    fixed = spec.shape[0]
    step = fixed or batch
    parts: dict[str, list[np.ndarray]] = {k: [] for k in OUTPUT_NAMES}
    for i in range(0, len(x), step):
        chunk = x[i : i + step]
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)])
        out = runner.infer({name: chunk})
        for k in OUTPUT_NAMES:
            parts[k].append(out[k][:n])
    return {k: np.concatenate(v) for k, v in parts.items()}
