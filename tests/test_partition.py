"""Partitions: every sample in exactly one client; bounded resampling with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedprune.data.partition import DirichletPartitioner, IIDPartitioner
from fedprune.errors import FedpruneError

labels_st = st.lists(st.integers(0, 4), min_size=20, max_size=300).map(np.array)


@settings(max_examples=60, deadline=None)
@given(labels_st, st.integers(1, 8), st.floats(0.05, 10), st.integers(0, 2**16))
def test_dirichlet_assigns_every_sample_to_exactly_one_client(labels, clients, alpha, seed):
    part = DirichletPartitioner(alpha, min_size=1, max_tries=1000)
    try:
        split = part.split(labels, clients, np.random.default_rng(seed))
    except FedpruneError:
        return  # allowed: the error is the bounded-resampling outcome, tested below
    assert len(split) == clients
    everything = np.concatenate(split)
    assert np.array_equal(np.sort(everything), np.arange(len(labels)))
    assert all(len(c) >= 1 for c in split)


@settings(max_examples=30, deadline=None)
@given(st.integers(10, 200), st.integers(1, 10), st.integers(0, 2**16))
def test_iid_splits_evenly(n, clients, seed):
    split = IIDPartitioner().split(np.zeros(n, dtype=int), clients, np.random.default_rng(seed))
    assert np.array_equal(np.sort(np.concatenate(split)), np.arange(n))
    sizes = [len(c) for c in split]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_is_seeded():
    labels = np.repeat(np.arange(5), 40)
    a = DirichletPartitioner(0.5).split(labels, 4, np.random.default_rng(1))
    b = DirichletPartitioner(0.5).split(labels, 4, np.random.default_rng(1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_dirichlet_gives_up_with_a_clear_error():
    labels = np.repeat(np.arange(10), 20)
    part = DirichletPartitioner(alpha=0.01, min_size=19, max_tries=5)
    with pytest.raises(FedpruneError, match="fewer clients, a larger alpha"):
        part.split(labels, 10, np.random.default_rng(0))


def test_too_many_clients_is_an_error():
    with pytest.raises(FedpruneError, match="use fewer clients"):
        IIDPartitioner().split(np.zeros(3, dtype=int), 5, np.random.default_rng(0))


def test_dirichlet_skews_labels():
    labels = np.repeat(np.arange(10), 100)
    split = DirichletPartitioner(0.1).split(labels, 10, np.random.default_rng(0))
    dominant = [np.bincount(labels[c], minlength=10).max() / len(c) for c in split]
    assert np.mean(dominant) > 0.4  # an IID split would give about 0.1


@pytest.mark.parametrize("alpha", [0, -1, float("nan"), float("inf"), "0.5", True, None])
def test_dirichlet_alpha_must_be_a_finite_positive_number(alpha):
    with pytest.raises(FedpruneError, match=r"alpha must be a finite number > 0, got"):
        DirichletPartitioner(alpha)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"min_size": -1}, r"min_size must be an integer >= 0, got -1"),
        ({"min_size": 1.5}, r"min_size must be an integer >= 0, got 1\.5"),
        ({"min_size": "3"}, r"min_size must be an integer >= 0, got '3'"),
        ({"max_tries": 0}, r"max_tries must be an integer >= 1, got 0"),
        ({"max_tries": 2.0}, r"max_tries must be an integer >= 1, got 2\.0"),
        ({"max_tries": False}, r"max_tries must be an integer >= 1, got False"),
    ],
)
def test_dirichlet_min_size_and_max_tries_must_be_integers(options, expected):
    with pytest.raises(FedpruneError, match=expected):
        DirichletPartitioner(0.5, **options)


@pytest.mark.parametrize("partitioner", [IIDPartitioner(), DirichletPartitioner()])
@pytest.mark.parametrize("clients", [0, -3, 2.5])
def test_num_clients_must_be_a_positive_integer(partitioner, clients):
    labels = np.repeat(np.arange(5), 20)
    with pytest.raises(FedpruneError, match=r"num_clients must be an integer >= 1, got"):
        partitioner.split(labels, clients, np.random.default_rng(0))


def test_numpy_numbers_are_accepted():
    part = DirichletPartitioner(np.float64(0.5), np.int64(1), np.int32(10))
    split = part.split(np.repeat(np.arange(5), 20), np.int64(4), np.random.default_rng(0))
    assert len(split) == 4
