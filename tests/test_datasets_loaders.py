"""The real-dataset loaders decode the official formats into the right arrays and settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dataset_fixtures import make_cifar10, make_cinic10, make_tinyimagenet

from fedprune.data.catalog import CIFAR10, CINIC10, TINYIMAGENET
from fedprune.data.cifar10 import load_cifar10
from fedprune.data.cinic10 import load_cinic10
from fedprune.data.tinyimagenet import load_tinyimagenet
from fedprune.errors import FedpruneError


def _check(splits, fx, info, num_classes):
    assert splits.name == info.name
    assert splits.num_classes == num_classes
    for split, ds in (("train", splits.train), ("test", splits.test)):
        assert isinstance(ds.images, np.memmap), "training must read the decode-once cache"
        assert ds.images.dtype == np.uint8
        np.testing.assert_array_equal(np.asarray(ds.images), fx.images[split])
        np.testing.assert_array_equal(ds.targets, fx.labels[split])
    assert splits.train.augment_pad == info.augment_pad and splits.train.flip
    assert splits.test.augment_pad == 0 and not splits.test.flip
    # Normalisation uses the dataset's channel statistics.
    x, _ = splits.test.batch(np.array([0]))
    raw = torch.from_numpy(np.array(splits.test.images[:1])).float() / 255
    expected = (raw - torch.tensor(info.mean).view(1, 3, 1, 1)) / torch.tensor(info.std).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(x, expected)


def test_cifar10_reads_the_pickled_batches(tmp_path):
    fx = make_cifar10(tmp_path)
    splits = load_cifar10(tmp_path)
    _check(splits, fx, CIFAR10, 10)
    assert len(splits.train) == 30 and len(splits.test) == 10
    assert splits.input_shape == (3, 32, 32)


def test_cinic10_reads_the_png_folders_and_converts_grey_scale(tmp_path):
    fx = make_cinic10(tmp_path)
    splits = load_cinic10(tmp_path)
    _check(splits, fx, CINIC10, 10)
    bird = 2
    grey = splits.train.images[np.flatnonzero(splits.train.targets == bird)]
    assert any((img[0] == img[1]).all() and (img[1] == img[2]).all() for img in grey)


def test_cinic10_valid_is_left_out_by_default_and_can_join_training(tmp_path):
    fx = make_cinic10(tmp_path)
    assert len(load_cinic10(tmp_path).train) == len(fx.labels["train"])
    merged = load_cinic10(tmp_path, include_valid=True)
    np.testing.assert_array_equal(
        np.asarray(merged.train.images), np.concatenate([fx.images["train"], fx.images["valid"]])
    )
    np.testing.assert_array_equal(
        np.asarray(merged.test.images), fx.images["test"]
    )
    # from -o cinic10.include_valid=...: strings parse strictly, "False" is false
    assert len(load_cinic10(tmp_path, include_valid="False").train) == len(fx.labels["train"])
    assert len(load_cinic10(tmp_path, include_valid="yes").train) == len(merged.train)
    with pytest.raises(FedpruneError, match="cinic10.include_valid"):
        load_cinic10(tmp_path, include_valid="maybe")


def test_tinyimagenet_uses_sorted_wnids_and_val_as_test(tmp_path):
    fx = make_tinyimagenet(tmp_path)
    splits = load_tinyimagenet(tmp_path)
    _check(splits, fx, TINYIMAGENET, 3)
    assert splits.input_shape == (3, 64, 64)
    assert splits.train.augment_pad == 8
    # The first image of the first class was written grey-scale: it decodes to equal channels.
    first = splits.train.images[0]
    assert (first[0] == first[1]).all() and (first[1] == first[2]).all()


def test_root_falls_back_to_the_environment_variable(tmp_path, monkeypatch):
    make_cifar10(tmp_path)
    monkeypatch.setenv("FEDPRUNE_DATA", str(tmp_path))
    assert len(load_cifar10().train) == 30
    assert len(load_cifar10(None).test) == 10


def test_root_may_be_the_dataset_folder_itself(tmp_path):
    fx = make_cifar10(tmp_path)
    assert len(load_cifar10(fx.folder).train) == 30


def test_builtins_factories_reach_the_loaders(tmp_path):
    from fedprune import builtins

    make_cifar10(tmp_path)
    make_cinic10(tmp_path)
    make_tinyimagenet(tmp_path)
    components = {c.name: c for c in builtins.fedprune_datasets()}
    for name, n in (("cifar10", 30), ("cinic10", 20), ("tinyimagenet", 9)):
        assert len(components[name].factory(root=str(tmp_path)).train) == n


def test_training_batches_are_augmented_and_test_batches_are_not(tmp_path):
    make_cifar10(tmp_path)
    splits = load_cifar10(tmp_path)
    index = np.arange(8)
    a, _ = splits.test.batch(index, train=False)
    b, _ = splits.test.batch(index, train=False)
    torch.testing.assert_close(a, b)
    g = torch.Generator().manual_seed(0)
    t1, _ = splits.train.batch(index, train=True, generator=g)
    t2, _ = splits.train.batch(index, train=True, generator=g)
    assert not torch.equal(t1, t2)


def test_decoding_keeps_the_order(tmp_path):
    from fedprune.data.cache import decode_images

    fx = make_cinic10(tmp_path, per_class=3)
    files = fx.files["test"]
    out = np.zeros((len(files), 3, 32, 32), dtype=np.uint8)
    decode_images(files, out, 32)
    np.testing.assert_array_equal(out, fx.images["test"])


def test_the_embedded_digits_are_scikit_learns_with_its_stratified_split():
    """The shipped copy loads without scikit-learn and equals what it loaded from it."""
    import pytest

    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.model_selection import train_test_split

    from fedprune.data.digits import load_digits

    bunch = sklearn_datasets.load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    x_train, x_test, y_train, y_test = train_test_split(
        images, bunch.target, test_size=0.2, stratify=bunch.target, random_state=0)
    data = load_digits()
    assert np.array_equal(data.train.images, x_train)
    assert np.array_equal(data.test.images, x_test)
    assert np.array_equal(data.train.targets, y_train)
    assert np.array_equal(data.test.targets, y_test)
    assert float(data.train._mean) == float(np.float32(x_train.mean()))
