"""Every user-fixable data problem is one `DataError` that says what is wrong and what to do."""

from __future__ import annotations

import os
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


# ---------------------------------------------------------------------------- hostile inputs


@pytest.mark.parametrize("side", [20000, 10000])  # an error in Pillow; only a warning in Pillow
def test_a_decompression_bomb_png_is_named(tmp_path, side):
    import warnings

    from dataset_fixtures import claim_size

    fx = make_cinic10(tmp_path)
    bad = fx.files["train"][3]
    claim_size(bad, side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and nothing escapes as a warning
        with pytest.raises(DataError, match=r"expected a 32x32 image, got a far larger") as info:
            load_cinic10(tmp_path)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_a_decompression_bomb_jpeg_is_named(tmp_path):
    from dataset_fixtures import claim_size

    fx = make_tinyimagenet(tmp_path)
    bad = fx.files["test"][1]
    claim_size(bad, 30000, 20000)
    with pytest.raises(DataError, match=r"expected a 64x64 image, got a far larger one") as info:
        load_tinyimagenet(tmp_path)
    assert str(bad) in str(info.value)


def test_a_large_image_below_the_bomb_limit_is_named_by_its_size(tmp_path):
    from dataset_fixtures import claim_size

    fx = make_tinyimagenet(tmp_path)
    claim_size(fx.files["train"][0], 4000, 3000)
    with pytest.raises(DataError, match=r"expected a 64x64 image, got 4000x3000"):
        load_tinyimagenet(tmp_path)


@pytest.mark.parametrize("name", ["wnids.txt", "val/val_annotations.txt"])
def test_a_text_file_that_is_not_utf8_is_named(tmp_path, name):
    fx = make_tinyimagenet(tmp_path)
    path = fx.folder / name
    path.write_bytes(path.read_bytes()[:5] + b"\xff\xfe" + path.read_bytes()[5:])
    with pytest.raises(DataError, match=r"not UTF-8 text \(byte 5\); restore the official") as info:
        load_tinyimagenet(tmp_path)
    assert str(path) in str(info.value)


def test_info_shows_every_dataset_when_one_is_broken(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from fedprune.cli_data import data

    monkeypatch.setenv("COLUMNS", "400")
    make_cifar10(tmp_path)
    fx = make_tinyimagenet(tmp_path)
    (fx.folder / "wnids.txt").write_bytes(b"\xffn01443537\n")
    result = CliRunner().invoke(data, ["info", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "train 30, test 10" in result.output  # CIFAR-10 is still shown
    assert "fedprune data download cinic10" in result.output
    assert "unusable" in result.output and "wnids.txt: not UTF-8 text" in result.output


@pytest.mark.parametrize("wnid", ["..", "../../etc", "a/b", "n01 2"])
def test_a_wnid_that_is_not_a_plain_name_is_refused(tmp_path, wnid):
    fx = make_tinyimagenet(tmp_path)
    (fx.folder / "wnids.txt").write_text(f"n01443537\n{wnid}\n")
    with pytest.raises(DataError, match=r"wnids.txt: .* is not a class id"):
        load_tinyimagenet(tmp_path)


def _pickle(obj):
    return pickle.dumps(obj, protocol=2)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (lambda: _pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["cat", "dog"]}),
         "'labels' must be a list of integers"),
        (lambda: _pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [[1, 2], [3]]}),
         "'labels' must be a list of integers"),
        (lambda: _pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1.5, 2.0]}),
         "'labels' must be a list of integers"),
        (lambda: _pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}),
         r"labels outside 0\.\.9"),
        (lambda: _pickle({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}),
         "'data' must be a uint8 array"),
        (lambda: _pickle({b"data": np.zeros((2, 3, 32, 32), np.uint8), b"labels": [0, 1]}),
         "'data' must be a uint8 array"),
        (lambda: _pickle({b"data": b"\x00" * 3072, b"labels": [0]}), "'data' must be a uint8"),
        (lambda: _pickle({1: 2, "x": 3}), r"not a CIFAR-10 batch \(keys \['1', 'x'\]\)"),
        (lambda: _pickle([1, 2, 3]), "expected a pickled dict, got list"),
        (lambda: b"", "corrupt or truncated pickle"),
        (lambda: b"not a pickle at all", "corrupt or truncated pickle"),
    ],
)
def test_a_hostile_cifar_batch_is_named(tmp_path, content, expected):
    fx = make_cifar10(tmp_path)
    bad = fx.folder / "data_batch_2"
    bad.write_bytes(content())
    with pytest.raises(DataError, match=expected) as info:
        load_cifar10(tmp_path)
    assert str(bad) in str(info.value)


def test_undecodable_label_names_do_not_break_loading(tmp_path):
    fx = make_cifar10(tmp_path)
    (fx.folder / "batches.meta").write_bytes(_pickle({b"label_names": [b"\xff"] * 10}))
    assert len(load_cifar10(tmp_path).test) == 10


@pytest.mark.parametrize(
    ("make", "load", "path", "expected"),
    [
        (make_cifar10, load_cifar10, "cifar-10-batches-py/test_batch", "cannot read (Is a dir"),
        (make_cinic10, load_cinic10, "CINIC-10/test/cat/x.png", "cannot read (Is a directory)"),
        (make_tinyimagenet, load_tinyimagenet, "tiny-imagenet-200/wnids.txt", "cannot read (Is"),
    ],
)
def test_a_directory_where_a_file_is_expected_is_named(tmp_path, make, load, path, expected):
    make(tmp_path)
    target = tmp_path / path
    if target.exists():
        target.unlink()
    target.mkdir()
    with pytest.raises(DataError) as info:
        load(tmp_path)
    assert str(target) in str(info.value) and expected in str(info.value)


@pytest.mark.parametrize(
    ("make", "load", "path", "expected"),
    [
        (make_cinic10, load_cinic10, "CINIC-10/train/frog", "CINIC-10/train/frog missing"),
        (make_tinyimagenet, load_tinyimagenet, "tiny-imagenet-200/val/images", "cannot list"),
        (make_tinyimagenet, load_tinyimagenet, "tiny-imagenet-200/train/n01443537/images",
         "train/n01443537/images missing"),
    ],
)
def test_a_file_where_a_folder_is_expected_is_named(tmp_path, make, load, path, expected):
    import shutil

    make(tmp_path)
    shutil.rmtree(tmp_path / path)
    (tmp_path / path).write_text("not a folder")
    with pytest.raises(DataError, match=expected):
        load(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_image_is_named(tmp_path):
    fx = make_cinic10(tmp_path)
    bad = fx.files["test"][0]
    bad.chmod(0)
    with pytest.raises(DataError, match=r"cannot read \(Permission denied\)") as info:
        load_cinic10(tmp_path)
    assert str(bad) in str(info.value)
