"""The preprocessing contract: how an image becomes the network's input tensor.

Every stage (training, calibration, export metadata, bench, predict) builds its transforms from a
`Preprocessing`, which travels inside checkpoints and ONNX files. Nobody retypes mean/std. Audio
has its own contract with the same interface (`base.Modality`); `MODALITY_CLASSES` names the kinds, and
`preprocessing_from_dict` and `modality_class(name).from_contract_props` read either.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tldeploy.errors import ConfigError, DataError, is_user_path_error
from tldeploy.modalities.base import Modality, PerturbationDomain

if TYPE_CHECKING:
    import numpy as np

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
# What the graph's image input holds. normalized: the contract's resize, crop and normalisation
# done on the host (the default). raw: RGB values in [0, 255] of the whole image scaled to
# resize_size x resize_size, as a serving stack's scaler gives them (DeepStream's nvinfer cannot
# crop, and has one scale for all channels); the graph crops and normalises (`raw_input.py`).
INPUT_FORMATS = ("normalized", "raw")


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to `resize_size`, centre-crop `input_size`, scale to [0, 1], normalise."""

    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    crop: str = "center"  # the only crop rule so far: shorter side -> resize_size, centre crop
    color: str = "RGB"
    layout: str = "NCHW"
    input_format: str = "normalized"  # see INPUT_FORMATS

    def __post_init__(self) -> None:  # importing this module stays light (the CLI's choices come from it)
        if self.input_format not in INPUT_FORMATS:
            raise ConfigError(f"--input-format must be one of {', '.join(INPUT_FORMATS)}, got {self.input_format!r}")
        if self.input_size < 8:
            raise ConfigError(f"input size must be at least 8 px, got {self.input_size}")
        if self.resize_size < self.input_size:
            raise ConfigError(
                f"resize size {self.resize_size} is smaller than the crop {self.input_size}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean and std need three values with std > 0, got {self.mean}, {self.std}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    modality = "image"
    input_name = "images"  # N x 3 x H x W, float32, normalised
    in_channels = 3
    contract_keys: ClassVar[tuple[str, ...]] = (
        "input_size", "resize_size", "mean", "std", "interpolation", "crop", "resize_rule", "color", "layout", "input_format",
    )
    frontend_end_op: ClassVar[str | None] = None  # images need no front end inside the network

    @property
    def raw(self) -> bool:
        return self.input_format == "raw"

    @property
    def input_shape(self) -> tuple[int, ...]:
        side = self.resize_size if self.raw else self.input_size
        return (3, side, side)

    @property
    def backbone_size(self) -> tuple[int, int]:
        """(height, width) of what the backbone sees (after the raw graph's crop)."""
        return self.input_size, self.input_size

    def as_raw(self) -> Preprocessing:
        """The contract of a raw-input graph made from this one (`raw_input.raw_input_model`)."""
        return dataclasses.replace(self, input_format="raw")

    def as_normalized(self) -> Preprocessing:
        """The contract of the normalised graph a raw-input one was made from."""
        return dataclasses.replace(self, input_format="normalized")

    @property
    def shape_text(self) -> str:
        return "x".join(map(str, self.input_shape))

    def random_inputs(self, n: int, seed: int = 0) -> np.ndarray:
        """`n` stand-in network inputs when no real ones are given: standard normal, as normalised
        images are (uniform in [0, 255] for a raw input)."""
        import numpy as np

        rng = np.random.default_rng(seed)
        if self.raw:
            return rng.uniform(0.0, 255.0, (n, *self.input_shape)).astype(np.float32)
        return rng.standard_normal((n, *self.input_shape)).astype(np.float32)

    def frontend(self, augment: AugmentConfig | None = None) -> None:
        """Images need no front end inside the network (their augmentation is the dataset's)."""
        return None

    def contract_props(self) -> dict[str, str]:
        """The ONNX metadata this contract writes: flat keys, as image pipelines (DeepStream, Triton) read them."""
        return {
            "input_size": str(self.input_size),
            "resize_size": str(self.resize_size),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "interpolation": self.interpolation,
            "crop": self.crop,
            "resize_rule": self.describe(),
            "color": self.color,
            "layout": self.layout,
            "input_format": self.input_format,
        }

    @classmethod
    def from_contract_props(cls, props: dict[str, str]) -> Preprocessing:
        """The contract `contract_props` wrote (KeyError, ValueError or ConfigError where it is broken)."""
        return cls(
            input_size=int(props["input_size"]),
            resize_size=int(props["resize_size"]),
            mean=tuple(json.loads(props["mean"])),
            std=tuple(json.loads(props["std"])),
            interpolation=props["interpolation"],
            crop=props["crop"],
            color=props["color"],
            layout=props["layout"],
            input_format=props.get("input_format", "normalized"),  # contracts before raw inputs: normalised
        )

    @property
    def nvinfer_image(self) -> Preprocessing:
        """DeepStream's nvinfer feeds images: this contract (or the raw one, `deploy.serving`) configures it."""
        return self

    def perturbation_domain(self) -> PerturbationDomain:
        """Pixel levels of 255 of the image as the network sees it (resized and cropped), normalised by the contract."""
        import numpy as np

        shape = (1, 3, 1, 1)
        return PerturbationDomain(0.0, 255.0, 1.0, "pixel levels of 255", np.reshape(self.mean, shape).astype(np.float32) * 255,
                                  np.reshape(self.std, shape).astype(np.float32) * 255)

    def perturbation_inputs(self, paths: list[Path]) -> np.ndarray:
        """The images as the network sees them (N, 3, S, S), RGB values 0-255."""
        import numpy as np

        from tldeploy.data.folders import load_image

        geometry = self.geometry()
        return np.stack([np.asarray(geometry(load_image(p)), np.float32).transpose(2, 0, 1) for p in paths])

    def read_source(self, path: Path):
        """The file as predict draws on it: a PIL image."""
        from tldeploy.data.folders import load_image

        try:
            return load_image(path)
        except Exception as e:
            if is_user_path_error(e):  # permission denied, not a directory...: the CLI's one line, not "corrupt"
                raise
            raise DataError(f"cannot decode image {path} ({type(e).__name__}); pass a PNG, JPEG or other Pillow-readable file") from None

    def source_input(self, source) -> np.ndarray:
        return self.eval_transform()(source).numpy()

    def write_overlay(self, target: Path, source, cam: np.ndarray, title: str) -> None:
        """The CAM (jet) blended over the image as the network saw it (resized and cropped), as PNG."""
        import matplotlib
        import numpy as np

        matplotlib.use("Agg")
        from matplotlib import colormaps
        from PIL import Image

        seen = self.geometry()(source)
        heat_map = Image.fromarray((np.clip(cam, 0, 1) * 255).astype(np.uint8)).resize(seen.size, Image.Resampling.BILINEAR)
        heat = (colormaps["jet"](np.asarray(heat_map) / 255.0)[..., :3] * 255).astype(np.uint8)
        Image.blend(seen.convert("RGB"), Image.fromarray(heat), alpha=0.45).save(target, format="PNG")

    @property
    def media(self):
        from tldeploy.data.folders import IMAGES

        return IMAGES

    def describe(self) -> str:
        if self.raw:
            return (f"scale the whole image to {self.resize_size}x{self.resize_size} px ({self.interpolation}), RGB values "
                    f"0-255; in the graph: centre-crop {self.input_size}x{self.input_size}, scale to [0, 1], (x - mean) / std")
        return (f"resize the shorter side to {self.resize_size} px ({self.interpolation}), then centre-crop "
                f"{self.input_size}x{self.input_size}; scale to [0, 1]; (x - mean) / std")

    def load(self, path: Path) -> np.ndarray:
        """The network's input for one file (the eval transform)."""
        from tldeploy.data.folders import load_image

        return self.eval_transform()(load_image(path)).numpy()

    def dataset(self, paths: list[Path], labels: list[int], augment: AugmentConfig | None = None):
        from tldeploy.data.folders import ImageDataset

        return ImageDataset(paths, labels, self.train_transform(augment) if augment is not None else self.eval_transform())

    @property
    def crop_pct(self) -> float:
        return self.input_size / self.resize_size

    def with_input_size(self, px: int) -> Preprocessing:
        """The same contract at another input size, keeping the crop ratio."""
        return dataclasses.replace(self, input_size=px, resize_size=max(px, round(px / self.crop_pct)))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {"input_size", "resize_size", "mean", "std"} - set(d)
        if missing:
            raise ConfigError(f"preprocessing metadata lacks {', '.join(sorted(missing))}")
        return cls(**{k: (tuple(v) if k in ("mean", "std") else v) for k, v in d.items() if k in known})

    def geometry(self):  # -> torchvision transform on PIL images
        """Resize and centre crop only: the image as the network sees it, before normalising."""
        from torchvision import transforms as T

        side = (self.resize_size, self.resize_size) if self.raw else self.resize_size
        return T.Compose([T.Resize(side, interpolation=_interp(self.interpolation)), T.CenterCrop(self.input_size)])

    def eval_transform(self):  # -> torchvision transform
        import torch
        from torchvision import transforms as T
        from torchvision.transforms import v2

        if self.raw:  # the host's part only: the whole image scaled, RGB 0-255 (the graph does the rest)
            side = (self.resize_size, self.resize_size)
            return T.Compose([T.Resize(side, interpolation=_interp(self.interpolation)), T.PILToTensor(), v2.ToDtype(torch.float32)])
        return T.Compose([self.geometry(), T.ToTensor(), T.Normalize(self.mean, self.std)])

    def train_transform(self, augment: AugmentConfig):
        from torchvision import transforms as T

        if not augment.enabled:
            return self.eval_transform()
        steps: list[Any] = [
            T.RandomResizedCrop(
                self.input_size, scale=(augment.crop_scale, 1.0), interpolation=_interp(self.interpolation)
            )
        ]
        if augment.hflip:
            steps.append(T.RandomHorizontalFlip())
        if augment.color_jitter > 0:
            j = augment.color_jitter
            steps.append(T.ColorJitter(brightness=j, contrast=j, saturation=j))
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation. Off means the eval transform, which lets features be cached."""

    modality: ClassVar[str] = "image"  # the input kind it augments
    enabled: bool = True
    crop_scale: float = 0.6  # lower bound of RandomResizedCrop's area fraction
    hflip: bool = True
    color_jitter: float = 0.2

    def __post_init__(self) -> None:
        if not 0.05 <= self.crop_scale <= 1.0:
            raise ConfigError(f"--crop-scale must be in [0.05, 1], got {self.crop_scale}")
        if not 0.0 <= self.color_jitter <= 1.0:
            raise ConfigError(f"--color-jitter must be in [0, 1], got {self.color_jitter}")

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(enabled=False)


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


def _audio() -> type[Modality]:
    from tldeploy.modalities.audio import AudioPreprocessing

    return AudioPreprocessing


# Each input kind's contract class by its name (the contract's "modality"), imported when asked for:
# importing this module stays light.
MODALITY_CLASSES: dict[str, Callable[[], type[Modality]]] = {"image": lambda: Preprocessing, "audio": _audio}


def modality_class(name: str) -> type[Modality]:
    """The contract class of the modality `name` ("image", "audio")."""
    if name not in MODALITY_CLASSES:
        raise ConfigError(f"unknown modality {name!r}; this tldeploy knows {', '.join(MODALITY_CLASSES)} (a newer tldeploy's file?)")
    return MODALITY_CLASSES[name]()


def preprocessing_from_dict(d: dict[str, Any]):
    """The contract stored in a checkpoint or build record (no "modality": an image contract, which
    writes none)."""
    return modality_class(d.get("modality", "image")).from_dict(d)
