"""Local SGD, shared by client training and by components that train on the server side
(PruneFL's initial pruning): mini-batches, step counts and the masked SGD loop.

`seeded` runs a block with torch's global generator seeded from a stream key and restored
afterwards: the engine wraps each client's work in it, so dropout and any component drawing from
the global generator are reproducible and independent of what ran before (another method, a
resumed run).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedprune import masks as M
from fedprune.contracts import GrowthCriterion, Regularizer
from fedprune.data.base import ArrayDataset
from fedprune.engine.config import RunConfig
from fedprune.errors import Diverged
from fedprune.seeding import torch_generator

__all__ = ["batches", "local_steps", "seeded", "sgd_steps", "data_batches"]


def batches(
    indices: np.ndarray, batch_size: int, steps: int, generator: torch.Generator
) -> Iterator[np.ndarray]:
    """``steps`` mini-batches of the client's indices, reshuffled every epoch."""
    produced = 0
    while produced < steps:
        order = indices[torch.randperm(len(indices), generator=generator).numpy()]
        for start in range(0, len(order), batch_size):
            if produced == steps:
                return
            yield order[start : start + batch_size]
            produced += 1


def data_batches(
    data: ArrayDataset, indices: np.ndarray, batch_size: int, steps: int,
    generator: torch.Generator, device: torch.device,
) -> Iterator[tuple[Tensor, Tensor]]:
    """`batches` gathered, augmented and moved to ``device``."""
    for index in batches(indices, batch_size, steps, generator):
        x, y = data.batch(index, train=True, generator=generator)
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def local_steps(num_samples: int, config: RunConfig) -> int:
    if config.local_steps is not None:
        return config.local_steps
    return config.local_epochs * math.ceil(num_samples / config.batch_size)


@contextlib.contextmanager
def seeded(seed: int, *keys: object, device: torch.device | None = None) -> Iterator[None]:
    """torch's global generator seeded from ``(seed, *keys)`` inside, restored after."""
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(torch_generator(seed, "global", *keys).initial_seed())
        yield


def sgd_steps(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    data: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    masks: Mapping[str, Tensor] | None = None,
    regularizer: Regularizer | None = None,
    growth: GrowthCriterion | None = None,
    step_lr: Callable[[int], float] | None = None,
) -> tuple[float, int]:
    """Masked SGD over ``data``: (mean training loss, steps). Masked weights stay exactly 0.

    Per step: the learning rate from ``step_lr``, cross-entropy plus the regularizer's penalty,
    backward, ``growth.after_backward`` (criteria that observe training), gradient mask, step,
    the regularizer's ``after_step``, weight mask. A non-finite mean loss raises
    `fedprune.errors.Diverged`.
    """
    observe = growth is not None and growth.observes_training
    total = None
    steps = 0
    lr = float(optimizer.param_groups[0]["lr"])
    for step, (x, y) in enumerate(data):
        if step_lr is not None:
            lr = step_lr(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
        loss = F.cross_entropy(model(x), y)
        total = loss.detach() if total is None else total + loss.detach()
        if regularizer is not None:
            penalty = regularizer.penalty(model)
            if penalty is not None:
                loss = loss + penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if observe:
            assert growth is not None
            growth.after_backward(params)
        if masks is not None:
            M.mask_gradients(params, masks)
        optimizer.step()
        if regularizer is not None:
            regularizer.after_step(lr)
        if masks is not None:
            M.apply_masks(params, masks)
        steps += 1
    mean = float(total) / steps if total is not None else 0.0
    if not math.isfinite(mean):
        raise Diverged(f"the training loss became {mean}")
    return mean, steps
