"""The core's own registrations: datasets, models, partitioners and the ``fixed`` strategy.

Method parts live in ``plugins/`` (package ``fedprune_plugins``) and load through entry points
like any third-party plugin; what is registered here is infrastructure every method shares,
plus ``fixed``, the strategy of a sparse method that names none (masks never change).
Factories import their modules lazily, so listing plugins stays fast.
"""

from __future__ import annotations

from fedprune import Component, hookimpl


def _digits(root=None):
    from fedprune.data.digits import load_digits

    return load_digits()


def _cifar10(root=None):
    from fedprune.data.cifar10 import load_cifar10

    return load_cifar10(root)


def _cinic10(root=None):
    from fedprune.data.cinic10 import load_cinic10

    return load_cinic10(root)


def _tinyimagenet(root=None):
    from fedprune.data.tinyimagenet import load_tinyimagenet

    return load_tinyimagenet(root)


@hookimpl
def fedprune_datasets():
    return [
        Component("digits", _digits, "UCI 8x8 handwritten digits, shipped with fedprune"),
        Component("cifar10", _cifar10, "CIFAR-10, python pickled batches, 32x32, 10 classes"),
        Component("cinic10", _cinic10, "CINIC-10, PNG folders, 32x32, 10 classes"),
        Component("tinyimagenet", _tinyimagenet, "TinyImageNet-200, JPEG folders, 64x64"),
        Component("synthetic", _synthetic, "random normal images of any shape (memory, speed)"),
    ]


def _synthetic(root=None, shape="3,32,32", classes=10, size=640, test_size=64, seed=0):
    from fedprune.data.synthetic import load_synthetic

    return load_synthetic(shape, classes, size, test_size, seed)


@hookimpl
def fedprune_strategies():
    return [Component("fixed", "fedprune.contracts:Strategy", "masks never change")]


def _cnn(num_classes, input_shape, width=32):
    from fedprune.models.cnn import SmallCNN

    return SmallCNN(num_classes, input_shape, width)


def _resnet18(num_classes, input_shape):
    from fedprune.models.resnet import resnet18

    return resnet18(num_classes, input_shape)


def _mobilenetv2(num_classes, input_shape, stage2_stride=2):
    from fedprune.models.mobilenet import mobilenetv2

    return mobilenetv2(num_classes, input_shape, stage2_stride=stage2_stride)


@hookimpl
def fedprune_models():
    return [
        Component("cnn", _cnn, "small CNN: three 3x3 conv layers (32-64-128) and a classifier"),
        Component("resnet18", _resnet18, "ResNet18, CIFAR variant (3x3 stem, no max-pool)"),
        Component("mobilenetv2", _mobilenetv2, "MobileNetV2, stride-1 stem for small images "
                  "(-o mobilenetv2.stage2_stride=1: also stride-1 second stage)"),
        Component("cifar_resnet", "fedprune.models.cifar_resnet:cifar_resnet",
                  "3-stage CIFAR ResNet (16-32-64, 175k parameters): the FedMef authors' "
                  "library's \"resnet18\""),
    ]


def _iid():
    from fedprune.data.partition import IIDPartitioner

    return IIDPartitioner()


def _dirichlet(alpha=0.5, min_size=10, max_tries=100):
    from fedprune.data.partition import DirichletPartitioner

    return DirichletPartitioner(alpha, min_size, max_tries)


@hookimpl
def fedprune_partitioners():
    return [
        Component("iid", _iid, "uniformly random split into equal-size clients"),
        Component("dirichlet", _dirichlet, "label skew: per class, Dirichlet(alpha) over clients"),
    ]
