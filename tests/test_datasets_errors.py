"""Every user-fixable data problem is one `DataError` that says what is wrong and what to do."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from dataset_fixtures import make_cifar10, make_cinic10, make_tinyimagenet, write_cifar_batch

from fedprune.data.cifar10 import load_cifar10
from fedprune.data.cinic10 import load_cinic10
from fedprune.data.tinyimagenet import load_tinyimagenet
from fedprune.errors import DataError

LOADERS = {
    "cifar10": (load_cifar10, "cifar-10-batches-py"),
    "cinic10": (load_cinic10, "CINIC-10"),
    "tinyimagenet": (load_tinyimagenet, "tiny-imagenet-200"),
}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_missing_root_says_where_what_and_how_to_download(tmp_path, name):
    load, folder = LOADERS[name]
    with pytest.raises(DataError) as info:
        load(tmp_path / "nowhere")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere" / folder) in message  # where it looked
    assert "expected layout" in message and folder in message  # the layout
    assert f"fedprune data download {name} --root {tmp_path / 'nowhere'}" in message


def test_missing_root_from_the_default_says_how_to_change_it(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDPRUNE_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match=r"the default; set --root or \$FEDPRUNE_DATA"):
        load_cifar10()
    monkeypatch.setenv("FEDPRUNE_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError, match=r"from \$FEDPRUNE_DATA"):
        load_cifar10()


@pytest.mark.parametrize(
    ("make", "load", "remove", "expected"),
    [
        (make_cifar10, load_cifar10, "cifar-10-batches-py/test_batch",
         "cifar-10-batches-py/test_batch missing"),
        (make_cifar10, load_cifar10, "cifar-10-batches-py/batches.meta",
         "cifar-10-batches-py/batches.meta missing"),
        (make_cinic10, load_cinic10, "CINIC-10/valid", "CINIC-10/valid missing"),
        (make_cinic10, load_cinic10, "CINIC-10/test/cat", "CINIC-10/test/cat missing"),
        (make_tinyimagenet, load_tinyimagenet, "tiny-imagenet-200/val/val_annotations.txt",
         "tiny-imagenet-200/val/val_annotations.txt missing"),
        (make_tinyimagenet, load_tinyimagenet, "tiny-imagenet-200/wnids.txt",
         "tiny-imagenet-200/wnids.txt missing"),
        (make_tinyimagenet, load_tinyimagenet, "tiny-imagenet-200/train/n01444537/images",
         "tiny-imagenet-200/train/n01444537/images missing"),
        (make_tinyimagenet, load_tinyimagenet, "tiny-imagenet-200/val/images/val_3.JPEG",
         "tiny-imagenet-200/val/images/val_3.JPEG missing"),
    ],
)
def test_a_missing_part_of_the_layout_is_named(tmp_path, make, load, remove, expected):
    import shutil

    make(tmp_path)
    target = tmp_path / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DataError) as info:
        load(tmp_path)
    assert expected in str(info.value)


def test_a_corrupt_png_is_named(tmp_path):
    fx = make_cinic10(tmp_path)
    bad = fx.files["test"][5]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match="corrupt or truncated image") as info:
        load_cinic10(tmp_path)
    assert str(bad) in str(info.value)


def test_a_truncated_jpeg_is_named(tmp_path):
    fx = make_tinyimagenet(tmp_path)
    bad = fx.files["train"][4]
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError) as info:
        load_tinyimagenet(tmp_path)
    assert str(bad) in str(info.value)


def test_an_image_of_the_wrong_size_is_named(tmp_path):
    from PIL import Image

    fx = make_cinic10(tmp_path)
    bad = fx.files["train"][0]
    Image.new("RGB", (31, 32)).save(bad)
    with pytest.raises(DataError, match=r"expected a 32x32 image, got 31x32") as info:
        load_cinic10(tmp_path)
    assert str(bad) in str(info.value)


def test_a_truncated_pickle_is_named(tmp_path):
    fx = make_cifar10(tmp_path)
    bad = fx.folder / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(DataError, match="corrupt or truncated pickle") as info:
        load_cifar10(tmp_path)
    assert str(bad) in str(info.value)


def test_a_batch_of_the_wrong_shape_is_named(tmp_path):
    fx = make_cifar10(tmp_path)
    write_cifar_batch(fx.folder / "test_batch", np.zeros((4, 3000), np.uint8), [0] * 4, "x")
    with pytest.raises(DataError, match=r"test_batch: 'data' has shape \(4, 3000\)"):
        load_cifar10(tmp_path)


def test_a_pickle_with_foreign_objects_is_refused(tmp_path):
    fx = make_cifar10(tmp_path)

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(fx.folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Payload()}, f, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_1: refused to unpickle: it refers to .*print"):
        load_cifar10(tmp_path)


def test_an_unknown_wnid_in_the_annotations_is_named(tmp_path):
    fx = make_tinyimagenet(tmp_path)
    annotations = fx.folder / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_0.JPEG\tn09999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"val_annotations.txt, line 7: n09999999 is not in wnids"):
        load_tinyimagenet(tmp_path)


def test_an_empty_class_folder_is_named(tmp_path):
    fx = make_cinic10(tmp_path)
    for png in (fx.folder / "train" / "dog").iterdir():
        png.unlink()
    with pytest.raises(DataError, match=r"train/dog: no .png images"):
        load_cinic10(tmp_path)


def test_the_cli_prints_data_errors_on_one_line(tmp_path):
    from click.testing import CliRunner

    from fedprune.cli_data import data

    result = CliRunner().invoke(data, ["prepare", "cifar10", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "CIFAR-10 not found" in lines[0]


def test_info_shows_what_is_wrong_with_an_unusable_dataset(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from fedprune.cli_data import data

    monkeypatch.setenv("COLUMNS", "400")
    fx = make_tinyimagenet(tmp_path)
    (fx.folder / "val" / "val_annotations.txt").unlink()
    result = CliRunner().invoke(data, ["info", "tinyimagenet", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "unusable" in result.output
    assert "tiny-imagenet-200/val/val_annotations.txt missing" in result.output
