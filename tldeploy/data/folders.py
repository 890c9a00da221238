"""Data on disk: class-folder scanning with checks, robust image loading, splits, the built-in digits
(the built-in tones are in `tones.py`).

Images and audio files (`Media`) go through the same scanning, skipping and splitting rules.
Layout: one folder per class. A folder holding `train/` (and optionally `val/`) is read as a
train/validation pair, which is what `tldeploy data digits` writes.
"""

from __future__ import annotations

import logging
import random
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tldeploy._io import atomic_dir
from tldeploy.errors import ConfigError, DataError, MissingDependencyError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class FileList:
    """Labelled file paths (images or clips) with their class names; what every loader and split works on."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        c = Counter(self.labels)
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}

    def subset(self, idx: list[int]) -> FileList:
        return FileList([self.paths[i] for i in idx], [self.labels[i] for i in idx], self.classes)


def load_image(path: Path) -> Image.Image:
    """Open any image as 8-bit RGB: grayscale, palette, alpha and 16-bit inputs are converted."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im, dtype=np.float64)
            top = 65535.0 if arr.max() > 255 else 255.0
            if im.mode == "F":
                lo, hi = float(arr.min()), float(arr.max())
                arr, top = (arr - lo), max(hi - lo, 1e-12)
            im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(bg, rgba).convert("RGB")
        return im.convert("RGB")


def _check_image(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            im.verify()
        return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"{type(e).__name__}: {e}"


@dataclass(frozen=True)
class Media:
    """What a data folder holds: the files taken and how each is checked (None: usable)."""

    noun: str
    extensions: tuple[str, ...]
    check: Callable[[Path], str | None]


IMAGES = Media("images", IMAGE_EXTENSIONS, _check_image)
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")


def soundfile_module():
    try:
        import soundfile
    except ImportError:
        raise MissingDependencyError("soundfile", purpose="reading audio files") from None
    return soundfile


def check_audio(path: Path) -> str | None:
    """Why `path` cannot be used as a clip, or None: unreadable, not audio, or zero-length."""
    sf = soundfile_module()
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        return f"not readable audio ({type(e).__name__})"
    if info.frames == 0:
        return "zero-length clip"
    return None


AUDIO = Media("audio files", AUDIO_EXTENSIONS, check_audio)
MEDIA = {"image": IMAGES, "audio": AUDIO}  # by modality name


def scan_class_folders(root: Path, *, strict: bool = False, classes: list[str] | None = None, media: Media = IMAGES) -> FileList:
    """List class folders under `root`; unreadable files are skipped (or fatal with strict)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; pass a folder with one sub-folder per class")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass a folder with one sub-folder per class")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in found:
        check_class_name(root / name)
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(f"{root} has classes not in the training set: {', '.join(extra)}; use the same class folders")
    if not classes:
        raise DataError(f"{root} has no class folders; put {media.noun} into one sub-folder per class")
    paths: list[Path] = []
    labels: list[int] = []
    skipped: list[tuple[Path, str]] = []
    for label, name in enumerate(classes):
        if (root / name).is_dir():
            found_paths, bad = _readable_files(root / name, media)
            paths += found_paths
            labels += [label] * len(found_paths)
            skipped += bad
    _report_skipped(skipped, root, strict)
    if not paths:
        raise DataError(f"{root} holds no readable {media.noun}; supported extensions: {' '.join(media.extensions)}")
    present = set(labels)
    empty = [name for label, name in enumerate(classes) if (root / name).is_dir() and label not in present]
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(str(root / n) for n in empty)} hold no readable {media.noun}; "
            "add some or remove the folder"
        )
    return FileList(paths, labels, list(classes), skipped)


def check_class_name(folder: Path) -> None:
    """A class is one line of labels.txt and of DeepStream's and Triton's label files: a folder name
    holding a line break or another control character is refused, naming the folder."""
    bad = [c for c in folder.name if unicodedata.category(c) in ("Cc", "Zl", "Zp")]
    if bad:
        shown = ", ".join(sorted({repr(c) for c in bad}))
        raise DataError(f"class folder {str(folder)!r} has a control character in its name ({shown}); a class name must fit on "
                        "one line of a label file: rename the folder")


def stratified_split(images: FileList, val_fraction: float, seed: int) -> tuple[FileList, FileList]:
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    counts = images.counts()
    small = [c for c, n in counts.items() if n < 2]
    if small:
        raise DataError(
            f"classes {', '.join(small)} have fewer than 2 images, too few for a stratified validation split; "
            "add images or pass --val DIR"
        )
    idx = list(range(len(images)))
    n_val = max(round(len(idx) * val_fraction), len(images.classes))
    if len(idx) - n_val < len(images.classes):
        raise DataError(f"{len(idx)} images are too few to split {len(images.classes)} classes; add images or pass --val DIR")
    tr, va = train_test_split(idx, test_size=n_val, stratify=images.labels, random_state=seed)
    return images.subset(sorted(tr)), images.subset(sorted(va))


def limit_per_class(images: FileList, n: int, seed: int) -> FileList:
    """At most `n` images per class, chosen with `seed` (few-shot runs)."""
    if n < 1:
        raise ConfigError(f"--limit-per-class must be at least 1, got {n}")
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(images.labels):
        by_class.setdefault(y, []).append(i)
    keep: list[int] = []
    for idx in by_class.values():
        rng.shuffle(idx)
        keep += idx[:n]
    return images.subset(sorted(keep))


def resolve_train_val(
    data: Path,
    val: Path | None,
    *,
    val_fraction: float,
    seed: int,
    strict: bool,
    media: Media = IMAGES,
) -> tuple[FileList, FileList]:
    """Training and validation lists: `data/train` + `data/val`, an explicit `val`, or a split."""
    data = Path(data)
    if val is None and (data / "train").is_dir():
        if (data / "val").is_dir():
            val = data / "val"
        data = data / "train"
    train = scan_class_folders(data, strict=strict, media=media)
    if len(train.classes) < 2:
        raise DataError(f"{data} has a single class ({train.classes[0]}); a classifier needs at least two class folders")
    if val is None:
        return stratified_split(train, val_fraction, seed)
    valset = scan_class_folders(val, strict=strict, classes=train.classes, media=media)
    return train, valset


def _readable_files(folder: Path, media: Media) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files of `media` under `folder` at any depth that pass its check, and the files skipped with why."""
    paths: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for p in sorted(folder.rglob("*")):
        if p.is_dir() or p.name.startswith("."):
            continue
        err = f"not one of the {media.noun} extensions" if p.suffix.lower() not in media.extensions else media.check(p)
        if err:
            skipped.append((p, err))
        else:
            paths.append(p)
    return paths, skipped


def _report_skipped(skipped: list[tuple[Path, str]], root: Path, strict: bool) -> None:
    if not skipped:
        return
    listing = "; ".join(f"{p} ({why})" for p, why in skipped[:20])
    more = f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""
    if strict:
        raise DataError(f"{len(skipped)} unreadable file(s) under {root} with --strict: {listing}{more}")
    log.warning("skipped %d unreadable file(s) under %s: %s%s", len(skipped), root, listing, more)


def find_files(root: Path, *, strict: bool = False, flag: str = "--data", media: Media = IMAGES) -> list[Path]:
    """All readable files of `media` under `root`, any depth (unlabelled sets, calibration, parity)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{flag} {root} is not an existing folder; pass a folder of {media.noun}")
    paths, skipped = _readable_files(root, media)
    _report_skipped(skipped, root, strict)
    if not paths:
        raise DataError(f"{flag} {root} holds no readable {media.noun}; supported extensions: {' '.join(media.extensions)}")
    return paths


class ImageDataset:
    """torch Dataset over (path, label) pairs with a transform."""

    def __init__(self, paths: list[Path], labels: list[int], transform) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(load_image(self.paths[i])), self.labels[i]


def write_digits(out_dir: Path, size: int = 64, val_fraction: float = 0.2, seed: int = 0, force: bool = False) -> dict[str, int]:
    """Write scikit-learn's handwritten digits (1,797 real 8x8 scans) as train/ and val/ folders.

    Returns the number of images written per split.
    """
    from sklearn.datasets import load_digits

    if size < 8:
        raise ConfigError(f"--size must be at least 8 px, got {size}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise DataError(f"{out_dir} exists and is not empty; choose another folder or pass --force")
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    labels = [int(y) for y in digits.target]
    all_ = FileList([Path(str(i)) for i in range(len(labels))], labels, [str(d) for d in range(10)])
    train, val = stratified_split(all_, val_fraction, seed)
    written = {}
    with atomic_dir(out_dir, force=True) as tmp:
        for split, part in (("train", train), ("val", val)):
            for idx_path, y in zip(part.paths, part.labels, strict=True):
                i = int(str(idx_path))
                folder = tmp / split / str(y)
                folder.mkdir(parents=True, exist_ok=True)
                im = Image.fromarray(images[i], "L").resize((size, size), Image.Resampling.BICUBIC)
                im.save(folder / f"{i:04d}.png")
            written[split] = len(part)
    return written


def even_spread(n: int, k: int) -> np.ndarray:
    """At most `k` of the indices 0..n-1, evenly spread (lists are in class order, so every class keeps its share)."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


def load_inputs(data: Path, classes: list[str], prep, limit: int | None = None, flag: str = "--data") -> tuple[np.ndarray, np.ndarray | None, list[Path]]:
    """Preprocessed inputs (images or clips, by the contract `prep`) from DATA and their labels:
    class folders named like `classes` are labelled, a flat folder (or folders that are not classes)
    is not. At most `limit` inputs, evenly spread so every class keeps its share."""

    data = Path(data)
    media = prep.media
    if not data.is_dir():
        raise DataError(f"{flag} {data} is not an existing folder; pass a folder of {media.noun} (class sub-folders give accuracy)")
    subdirs = [p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")]
    labels: np.ndarray | None = None
    if subdirs and set(subdirs) <= set(classes):
        listing = scan_class_folders(data, classes=classes, media=media)
        paths, labels = listing.paths, np.asarray(listing.labels)
    elif subdirs and not set(subdirs) & set(classes):
        paths = find_files(data, flag=flag, media=media)  # folders that are not classes: unlabelled inputs
    elif subdirs:
        extra = sorted(set(subdirs) - set(classes))
        raise DataError(f"{flag} {data} has folders that are not the model's classes: {', '.join(extra)}; "
                        "use class folders named like the training set, or a folder without class folders")
    else:
        paths = find_files(data, flag=flag, media=media)
    if limit is not None and len(paths) > limit:
        keep = even_spread(len(paths), limit)
        paths = [paths[i] for i in keep]
        labels = labels[keep] if labels is not None else None
    x = np.stack([prep.load(p) for p in paths]).astype(np.float32)
    return x, labels, list(paths)
