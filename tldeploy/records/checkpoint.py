"""A checkpoint's metadata, parsed once, and the contract its export carries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tldeploy.contract import Contract
from tldeploy.errors import TldeployError
from tldeploy.modalities.base import Modality
from tldeploy.ood import OodGate
from tldeploy.records._fields import RecordError, _need, _obj


@dataclass(frozen=True)
class CheckpointMeta:
    """A checkpoint's metadata: what export, qat, shift and the runners read, parsed once; the
    rest (training metrics, config) kept in `fields` as written."""

    backbone: str
    classes: list[str]
    preprocessing: Modality
    head: dict[str, Any]
    ood: OodGate | None
    qat: dict[str, Any] | None  # the QatRecord of a quantization-aware trained checkpoint
    versions: dict[str, str]
    fields: dict[str, Any]  # every key as written, in its order

    def contract(self, checkpoint_sha256: str = "", *, precision: str = "fp32", attention: str = "standard",
                 extra: dict[str, str] | None = None, tldeploy_version: str | None = None) -> Contract:
        """The contract an export of this checkpoint carries (or, with the defaults, what the
        checkpoint itself stands for)."""
        return Contract(classes=list(self.classes), preprocessing=self.preprocessing, backbone=self.backbone,
                        checkpoint_sha256=checkpoint_sha256,
                        tldeploy_version=tldeploy_version if tldeploy_version is not None else str(self.versions.get("tldeploy", "")),
                        precision=precision, attention=attention, extra=dict(extra or {}), ood=self.ood)

    def to_json(self) -> dict[str, Any]:
        return dict(self.fields)

    @classmethod
    def from_json(cls, meta: Any, source: str) -> CheckpointMeta:
        from tldeploy.modalities.preprocessing import preprocessing_from_dict

        h = "pass a model.pt written by 'tldeploy train'"
        _need(isinstance(meta, dict), source, "its metadata is not an object", h)
        backbone = meta.get("backbone")
        _need(isinstance(backbone, dict) and isinstance(backbone.get("name"), str), source, "'backbone' lacks its name", h)
        classes = meta.get("classes")
        _need(isinstance(classes, list) and bool(classes) and all(isinstance(c, str) for c in classes), source,
              "'classes' must be a list of names", h)
        _need(isinstance(meta.get("head"), dict), source, "'head' must be an object", h)
        qat = _obj(meta, "qat", source, h)
        try:
            prep = preprocessing_from_dict(meta["preprocessing"])
            ood = OodGate.from_dict(meta.get("ood"))
        except (KeyError, TypeError, ValueError, TldeployError) as e:
            raise RecordError(f"{source}: its preprocessing or OOD metadata is broken ({type(e).__name__}: {e}); {h}") from None
        versions = meta.get("versions") or {}
        return cls(backbone=backbone["name"], classes=list(classes), preprocessing=prep, head=dict(meta["head"]), ood=ood, qat=qat,
                   versions={str(k): str(v) for k, v in versions.items()}, fields=dict(meta))

    @classmethod
    def read(cls, path: Path) -> CheckpointMeta:
        from tldeploy.models.checkpoints import CHECKPOINT_FORMAT, read_torch_file

        return cls.from_json(read_torch_file(path, CHECKPOINT_FORMAT, "checkpoint").get("metadata"), str(path))
