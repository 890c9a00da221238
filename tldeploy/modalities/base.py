"""What every stage asks of an input kind: the preprocessing contract of images (`Preprocessing`)
and of audio (`AudioPreprocessing`) both implement `Modality`. The stages call these members
instead of asking which kind they hold; a new kind is a module here implementing them, its entry
in `preprocessing.MODALITY_CLASSES` (which reads checkpoints' and contracts' preprocessing) and its
`Media` in `tldeploy.data.folders.MEDIA`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from tldeploy.data.folders import Media
    from tldeploy.modalities.preprocessing import Preprocessing


@dataclass(frozen=True)
class PerturbationDomain:
    """Where a user counts changes to an input (robustness attacks' budgets): the network's input is
    (raw - shift) / scale with raw in [lo, hi], and one budget unit is `unit` raw units."""

    lo: float
    hi: float
    unit: float
    unit_text: str
    shift: np.ndarray
    scale: np.ndarray


@runtime_checkable
class Modality(Protocol):
    modality: str  # "image", "audio": the name in the contract and in --modality
    input_name: str  # the ONNX input's name
    contract_keys: ClassVar[tuple[str, ...]]  # the keys `contract_props` writes (all a contract reader may meet)
    # The ONNX op that ends the graph's front end: FP16 and INT8 builds keep its nodes and every node
    # before them in float32. None: the graph has no front end.
    frontend_end_op: ClassVar[str | None]

    @property
    def in_channels(self) -> int: ...  # channels the backbone's stem takes

    @property
    def raw(self) -> bool: ...  # the graph takes raw pixels (--input-format raw) and normalises them itself

    @property
    def input_shape(self) -> tuple[int, ...]: ...  # one input, without the batch dimension

    @property
    def shape_text(self) -> str: ...  # the input shape as a log line says it

    @property
    def backbone_size(self) -> tuple[int, int]: ...  # (height, width) of the backbone's input: a transformer is built for it

    @property
    def media(self) -> Media: ...  # which files a data folder holds, and how bad ones are found

    def describe(self) -> str: ...  # the preprocessing in words, for contracts and reports

    def load(self, path: Path) -> np.ndarray: ...  # one file as the network's input

    def dataset(self, paths: list[Path], labels: list[int], augment: Any = None) -> Any: ...  # a torch Dataset

    def frontend(self, augment: Any = None) -> Any: ...  # the nn.Module the network runs first (with training's augmentation, if it acts there), or None

    def random_inputs(self, n: int, seed: int = 0) -> np.ndarray: ...  # stand-ins where no data is given

    def to_dict(self) -> dict[str, Any]: ...  # the JSON a checkpoint carries

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Modality: ...  # what `to_dict` wrote

    def contract_props(self) -> dict[str, str]: ...  # the ONNX metadata keys an export writes

    @classmethod
    def from_contract_props(cls, props: dict[str, str]) -> Modality: ...  # the contract `contract_props` wrote (keys unprefixed)

    @property
    def nvinfer_image(self) -> Preprocessing | None: ...  # the image contract DeepStream's nvinfer is configured from; None: nvinfer cannot feed it

    def perturbation_domain(self) -> PerturbationDomain: ...  # where robustness attacks count their budget

    def perturbation_inputs(self, paths: list[Path]) -> np.ndarray: ...  # the files as points of that domain (its raw values)

    def read_source(self, path: Path) -> Any: ...  # a file as predict shows it (an image, a clip); one-line DataError

    def source_input(self, source: Any) -> np.ndarray: ...  # that source as the network's input

    def write_overlay(self, target: Path, source: Any, cam: np.ndarray, title: str) -> None: ...  # the CAM over it, PNG
