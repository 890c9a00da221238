import logging

import numpy as np
import pytest
from PIL import Image

from tldeploy.data.folders import (
    limit_per_class,
    load_image,
    resolve_train_val,
    scan_class_folders,
    stratified_split,
    write_digits,
)
from tldeploy.errors import DataError


def _folder(root, counts, size=12):
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (size, size), (i * 10 % 255, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_conversions_to_rgb(tmp_path):
    Image.new("L", (4, 4), 200).save(tmp_path / "gray.png")
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.save(tmp_path / "pal.png")
    Image.new("RGBA", (4, 4), (0, 0, 255, 0)).save(tmp_path / "clear.png")
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert load_image(tmp_path / "gray.png").getpixel((0, 0)) == (200, 200, 200)
    assert load_image(tmp_path / "pal.png").getpixel((0, 0)) == (10, 20, 30)
    assert load_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    deep = load_image(tmp_path / "deep.png")
    assert deep.mode == "RGB" and deep.getpixel((0, 0)) == (255, 255, 255)


def test_corrupt_files_are_skipped_with_a_warning_or_fatal_when_strict(tmp_path, caplog):
    root = _folder(tmp_path / "d", {"a": 3, "b": 3})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "b" / "notes.txt").write_text("hello")
    with caplog.at_level(logging.WARNING):
        images = scan_class_folders(root)
    assert len(images) == 6 and len(images.skipped) == 2
    assert "broken.png" in caplog.text and "notes.txt" in caplog.text
    with pytest.raises(DataError, match="--strict"):
        scan_class_folders(root, strict=True)


@pytest.mark.parametrize(
    "layout,message",
    [({}, "no class folders"), ({"a": 0, "b": 0}, "no readable images"), ({"only": 3}, "single class")],
)
def test_unusable_folders_are_clear_errors(tmp_path, layout, message):
    root = _folder(tmp_path / "d", layout)
    root.mkdir(exist_ok=True)
    with pytest.raises(DataError, match=message):
        resolve_train_val(root, None, val_fraction=0.2, seed=0, strict=False)


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_class_folders(tmp_path / "nope")


def test_val_folder_with_foreign_class(tmp_path):
    _folder(tmp_path / "d" / "train", {"a": 2, "b": 2})
    _folder(tmp_path / "d" / "val", {"a": 1, "c": 1})
    with pytest.raises(DataError, match="classes not in the training set: c"):
        resolve_train_val(tmp_path / "d", None, val_fraction=0.2, seed=0, strict=False)


def test_stratified_split_and_limit(tmp_path):
    images = scan_class_folders(_folder(tmp_path / "d", {"a": 10, "b": 30}))
    tr, va = stratified_split(images, 0.25, seed=3)
    assert va.counts() == {"a": 2, "b": 8} or va.counts() == {"a": 3, "b": 7}
    assert not set(tr.paths) & set(va.paths) and len(tr) + len(va) == 40
    assert stratified_split(images, 0.25, seed=3)[1].paths == va.paths
    few = limit_per_class(images, 4, seed=0)
    assert few.counts() == {"a": 4, "b": 4}


def test_write_digits(tmp_path):
    out = tmp_path / "digits"
    n = write_digits(out, size=16, val_fraction=0.2, seed=0)
    assert n["train"] + n["val"] == 1797 and n["val"] == 359
    train = scan_class_folders(out / "train")
    assert train.classes == [str(d) for d in range(10)]
    assert min(train.counts().values()) >= 135
    assert Image.open(next((out / "val" / "3").iterdir())).size == (16, 16)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    with pytest.raises(DataError, match="--force"):
        write_digits(out)


def test_find_files_names_the_flag(tmp_path):
    from tldeploy.data.folders import find_files

    with pytest.raises(DataError, match="--unlabeled .* is not an existing folder"):
        find_files(tmp_path / "missing", flag="--unlabeled")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="--data .* holds no readable images"):
        find_files(tmp_path / "empty")
    _folder(tmp_path / "d", {"a": 2})
    (tmp_path / "d" / "a" / "x.png").write_bytes(b"broken")
    assert len(find_files(tmp_path / "d")) == 2


@pytest.mark.parametrize("name", ["two\nlines", "carriage\rreturn", "tab\there", "bell\x07", "sep\u2028line"])
def test_a_class_folder_name_that_cannot_be_one_label_line_is_refused(tmp_path, name, capsys):
    """labels.txt, DeepStream's and Triton's label files hold one class per line: `train` refuses a
    class folder whose name holds a line break or another control character, naming it, before
    writing anything; so does every command that reads labelled folders (bench, bundle, shift)."""
    from tldeploy.cli import main
    from tldeploy.data.folders import load_inputs
    from tldeploy.modalities.preprocessing import Preprocessing

    data = tmp_path / "data"
    for cls in ("fine", name):
        (data / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), (200, 10, 10)).save(data / cls / "0.png")
    assert main(["train", str(data), "-o", str(tmp_path / "run"), "--backbone", "tiny_cnn", "--epochs", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: class folder {str(data / name)!r} has a control character in its name"), err
    assert err[0].endswith("a class name must fit on one line of a label file: rename the folder")
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError, match="has a control character in its name"):
        load_inputs(data, ["fine", name], Preprocessing(8, 8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
