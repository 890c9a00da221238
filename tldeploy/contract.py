"""The contract an exported file carries in its ONNX `metadata_props`.

Every key starts with `tldeploy.`; values are strings, JSON-encoded where they are structured,
and are only ever parsed with `json.loads` (never evaluated). Later stages (build, bench,
predict) read preprocessing and class names from here, so an ONNX file alone is enough.

Tensor names are public and stable:

- input  `images`: float32, N x 3 x H x W, RGB, normalised as the contract says (image models)
- input  `audio`:  float32, N x samples, mono at the contract's sample rate, fitted to its clip
  length (audio models: the log-mel front end is inside the graph)
- output `logits`: float32, N x K
- output `probs`:  float32, N x K, softmax of the logits
- output `cam`:    float32, N x h x w, the predicted class's activation map, each in [0, 1]
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tldeploy.errors import TldeployError, is_user_path_error
from tldeploy.modalities.base import Modality
from tldeploy.modalities.preprocessing import MODALITY_CLASSES, modality_class
from tldeploy.ood import OodGate

CONTRACT_VERSION = "1"
OUTPUT_NAMES = ("logits", "probs", "cam")
PREFIX = "tldeploy."


class ContractError(TldeployError):
    """An ONNX file without (or with a broken) tldeploy contract."""


@dataclass(frozen=True)
class Contract:
    classes: list[str]
    preprocessing: Modality
    backbone: str
    checkpoint_sha256: str
    tldeploy_version: str
    precision: str = "fp32"  # the precision of the graph's arithmetic; I/O is always float32
    attention: str = "standard"  # "standard" ops, or "plugin" (ChannelAttention custom nodes)
    extra: dict[str, str] = field(default_factory=dict)
    ood: OodGate | None = None  # the unknown-input gate fitted at training; None before it

    @property
    def input_name(self) -> str:
        return self.preprocessing.input_name

    def to_props(self) -> dict[str, str]:
        p = self.preprocessing
        own = p.contract_props()
        props = {
            "contract_version": CONTRACT_VERSION,
            "classes": json.dumps(self.classes),
            "modality": p.modality,
            "input_name": p.input_name,
            "output_names": json.dumps(list(OUTPUT_NAMES)),
            **own,
            "backbone": self.backbone,
            "checkpoint_sha256": self.checkpoint_sha256,
            "tldeploy_version": self.tldeploy_version,
            "precision": self.precision,
            "attention": self.attention,
            **({"ood": json.dumps(self.ood.to_dict())} if self.ood else {}),
            **self.extra,
        }
        return {PREFIX + k: str(v) for k, v in props.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> Contract:
        own = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
        if not own:
            raise ContractError(
                f"{source} carries no tldeploy preprocessing contract; export it with 'tldeploy export' "
                "(an ONNX file from elsewhere needs the contract's metadata_props)"
            )
        try:
            if own["contract_version"] != CONTRACT_VERSION:
                raise ContractError(
                    f"{source} has contract version {own['contract_version']}, this tldeploy reads {CONTRACT_VERSION}; "
                    "re-export it or upgrade tldeploy"
                )
            prep = modality_class(own.get("modality", "image")).from_contract_props(own)  # contracts before audio: images
            classes = json.loads(own["classes"])
            if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
                raise ValueError("classes must be a list of strings")
            known = {
                "contract_version", "classes", "input_name", "output_names", "backbone", "checkpoint_sha256",
                "tldeploy_version", "precision", "attention", "modality", "ood",
                *(k for load in MODALITY_CLASSES.values() for k in load().contract_keys),
            }
            return cls(
                classes=classes,
                preprocessing=prep,
                backbone=own["backbone"],
                checkpoint_sha256=own["checkpoint_sha256"],
                tldeploy_version=own["tldeploy_version"],
                precision=own.get("precision", "fp32"),
                attention=own.get("attention", "standard"),
                extra={k: v for k, v in own.items() if k not in known},
                ood=_ood(own.get("ood")),
            )
        except ContractError:
            raise
        except (KeyError, ValueError, TypeError, TldeployError) as e:
            raise ContractError(f"{source} has a broken tldeploy contract ({type(e).__name__}: {e}); re-export it") from None


class OnnxFile:
    """An ONNX file read once: its path, parsed graph, contract, SHA-256, static batch and output
    dims are cached properties, so a command that needs several of them (build, bundle) parses
    and hashes the file once. Nothing is read until a property is asked for."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"OnnxFile({str(self.path)!r})"

    @classmethod
    def of(cls, source: Path | str | OnnxFile) -> OnnxFile:
        """`source` if it is a handle already, else a handle of the path."""
        return source if isinstance(source, OnnxFile) else cls(source)

    @classmethod
    def holding(cls, path: Path | str, proto) -> OnnxFile:
        """The handle of a file just written from `proto` (which it keeps; not read back)."""
        f = cls(path)
        f.__dict__["proto"] = proto  # the cached_property's slot
        return f

    @functools.cached_property
    def proto(self):
        """The ModelProto (with external data). Treat it as read-only: `copy()` for one to edit."""
        return load_onnx(self.path)

    def copy(self):
        """A ModelProto of its own to change (copied in memory, not read again)."""
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(self.proto)
        return model

    @functools.cached_property
    def contract(self) -> Contract:
        return read_contract(self.proto, str(self.path))

    @functools.cached_property
    def sha256(self) -> str:
        from tldeploy._io import sha256_file

        return sha256_file(self.path)

    @functools.cached_property
    def static_batch(self) -> int | None:
        """The input's fixed batch size, or None for a dynamic batch."""
        dim = self.proto.graph.input[0].type.tensor_type.shape.dim[0]
        return dim.dim_value or None

    @functools.cached_property
    def output_dims(self) -> dict[str, list[int]]:
        """Each output's dims as ONNX shape inference gives them (0 where dynamic)."""
        import onnx

        inferred = onnx.shape_inference.infer_shapes(self.proto)
        return {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in inferred.graph.output}

    def check(self) -> None:
        """onnx.checker on the graph (see `check_onnx`)."""
        check_onnx(self)


def load_onnx(path: Path, *, load_external_data: bool = True):
    """onnx.load with clear errors for missing, truncated or non-ONNX files."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise TldeployError(f"ONNX file {path} does not exist; export one with 'tldeploy export'")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except (DecodeError, ValueError, OSError, RuntimeError) as e:
        if is_user_path_error(e):  # permission denied, not a directory...: the CLI's one line, not "corrupt"
            raise
        raise TldeployError(f"cannot read {path}: it is truncated or not an ONNX file ({type(e).__name__}); re-export it") from None
    if not model.graph.node:
        raise TldeployError(f"{path} holds no ONNX graph (truncated or not an ONNX file); re-export it")
    return model


def _ood(text: str | None) -> OodGate | None:
    """The OOD gate, checked (a broken entry is a ContractError, not a later crash)."""
    return OodGate.from_dict(json.loads(text)) if text else None


def check_onnx(source: Path | OnnxFile) -> None:
    """onnx.checker on a file, so a broken graph is named here rather than deep in a runtime."""
    import onnx

    path = source.path if isinstance(source, OnnxFile) else Path(source)
    try:
        if isinstance(source, OnnxFile) and source.proto.ByteSize() < onnx.checker.MAXIMUM_PROTOBUF:
            onnx.checker.check_model(source.proto)  # the graph already parsed
        else:
            onnx.checker.check_model(str(path))
    except Exception as e:  # ValidationError, and the C++ checker's other errors
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TldeployError(f"{path} fails onnx.checker ({first[:200]}); re-export it with 'tldeploy export'") from None


def read_contract(source: Any, name: str | None = None) -> Contract:
    """The contract of an ONNX file path, an `OnnxFile` or a loaded ModelProto (`name` says which
    file it came from in errors)."""
    if isinstance(source, OnnxFile):
        return source.contract
    if isinstance(source, (str, Path)):
        model, name = load_onnx(Path(source), load_external_data=False), str(source)
    else:
        model, name = source, name or "the ONNX model"
    return Contract.from_props({p.key: p.value for p in model.metadata_props}, name)


def write_contract(model, contract: Contract) -> None:
    """Set the contract's metadata_props on a ModelProto, replacing older tldeploy keys."""
    keep = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for k, v in [*keep, *contract.to_props().items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
