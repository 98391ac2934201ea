"""Deterministic random streams derived from (seed, purpose, ...) keys.

Every random choice in a run draws from its own stream, so adding a client, a method or an
evaluation never shifts another choice: the partition and initial weights for a seed are the
same for every method, and a client's batches do not depend on which other clients ran.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def _entropy(seed: int, keys: tuple) -> list[int]:
    return [seed] + [zlib.crc32(str(k).encode()) for k in keys]


def torch_generator(seed: int, *keys: object) -> torch.Generator:
    """A torch generator for the stream named by ``keys``."""
    state = np.random.SeedSequence(_entropy(seed, keys)).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def numpy_generator(seed: int, *keys: object) -> np.random.Generator:
    """A numpy generator for the stream named by ``keys``."""
    return np.random.default_rng(np.random.SeedSequence(_entropy(seed, keys)))
