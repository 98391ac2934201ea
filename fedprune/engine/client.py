"""Local training of one client on the one shared model object.

The same `nn.Module` serves every simulated client: load the global state, train, hand the
result to the aggregator, which consumes it before the next client. Memory does not grow with
the number of clients. The per-step loop does only what the method needs: regularizer, growth
observers and mask enforcement are skipped entirely when absent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedprune import masks as M
from fedprune.data.base import ArrayDataset
from fedprune.engine.build import MethodParts, bind_masks
from fedprune.engine.config import RunConfig
from fedprune.engine.events import ClientContext


@dataclass
class ClientUpdate:
    """What a client sends back. ``state`` aliases the model's tensors: consume it at once."""

    client: int
    samples: int
    steps: int
    loss: float
    state: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor] | None  # the client's masks, when it changed them
    scores: dict[str, torch.Tensor] | None  # growth scores, in server-side adjustment rounds
    score_nnz: dict[str, int] | None  # present entries per score tensor when uploaded sparse


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


def local_steps(num_samples: int, config: RunConfig) -> int:
    if config.local_steps is not None:
        return config.local_steps
    return config.local_epochs * math.ceil(num_samples / config.batch_size)


class LocalTrainer:
    """Trains the shared model as client after client, for one method."""

    def __init__(self, model: nn.Module, parts: MethodParts, config: RunConfig) -> None:
        self.model = model
        self.parts = parts
        self.config = config
        self.params = dict(model.named_parameters())
        self.prunable = M.prunable_parameters(model, parts.settings.prune_classifier)
        reg = parts.regularizer
        self._lr_fn = getattr(reg, "learning_rate", None)

    def train(
        self,
        client: int,
        data: ArrayDataset,
        indices: np.ndarray,
        global_state: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor] | None,
        counts: dict[str, int],
        round_: int,
        generator: torch.Generator,
    ) -> ClientUpdate:
        model, parts, config = self.model, self.parts, self.config
        device = torch.device(config.device)
        model.load_state_dict(global_state)
        bind_masks(model, masks)
        model.train()
        steps = local_steps(len(indices), config)
        adjusting = bool(counts) and any(counts.values())
        optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        ctx = ClientContext(model, self.params, masks, round_, client, counts, steps, parts.pruning)
        reg = parts.regularizer
        if reg is not None and hasattr(reg, "begin"):
            reg.begin(ctx)
        observer = parts.growth if adjusting else None
        if observer is not None and hasattr(observer, "begin"):
            observer.begin(self.params)
        after_backward = getattr(observer, "after_backward", None)

        total_loss = torch.zeros((), device=device)
        for step, index in enumerate(batches(indices, config.batch_size, steps, generator)):
            x, y = data.batch(index, train=True, generator=generator)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if self._lr_fn is not None:
                lr = self._lr_fn(step, steps, config.lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
            loss = F.cross_entropy(model(x), y)
            total_loss += loss.detach()
            if reg is not None:
                penalty = reg.penalty(model)
                if penalty is not None:
                    loss = loss + penalty
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if after_backward is not None:
                after_backward(self.params)
            if masks is not None:
                M.mask_gradients(self.params, masks)
            optimizer.step()
            if masks is not None:
                M.apply_masks(self.params, masks)

        update = ClientUpdate(
            client, len(indices), steps, float(total_loss) / steps,
            model.state_dict(), None, None, None,
        )
        if adjusting:
            self._adjust(update, data, indices, masks, counts, optimizer, generator)
        return update

    def _adjust(self, update, data, indices, masks, counts, optimizer, generator) -> None:
        """End of an adjustment round: score growth, then prune/grow here or upload scores."""
        parts = self.parts
        grads: dict[str, torch.Tensor] = {}
        if parts.method.adjust == "client" or getattr(parts.growth, "uses_gradient", True):
            index = next(batches(indices, self.config.batch_size, 1, generator))
            x, y = data.batch(index, train=True, generator=generator)
            device = torch.device(self.config.device)
            grads = growth_gradients(self.model, self.prunable, x.to(device), y.to(device))
        weights = {n: self.params[n].detach() for n in masks}
        scores = parts.growth.scores(weights, grads)
        if parts.method.adjust == "client":
            new = {}
            for name, mask in masks.items():
                prune = parts.pruning.scores(weights[name], grads[name])
                new[name], _ = M.prune_and_grow(mask, prune, scores[name], counts[name])
            M.apply_masks(self.params, new)
            M.reset_optimizer_state(optimizer, self.params, M.changed_positions(masks, new))
            update.masks = new
        elif getattr(parts.growth, "upload_topk", False):
            update.scores, update.score_nnz = {}, {}
            for name, mask in masks.items():
                s = torch.where(mask, torch.zeros_like(scores[name]), scores[name])
                k = min(counts[name], int((~mask).sum()))
                top = torch.topk(s.flatten().abs(), k).indices
                sparse = torch.zeros_like(s).flatten()
                sparse[top] = s.flatten()[top]
                update.scores[name] = sparse.view_as(s)
                update.score_nnz[name] = k
        else:
            update.scores = scores


def growth_gradients(
    model: nn.Module, prunable: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Dense gradient of one mini-batch's loss w.r.t. the weight each layer actually uses.

    A module with a derived effective weight (e.g. a standardised convolution) declares
    ``capture_effective_weight``; while it is True the module keeps that weight as
    ``effective_weight`` with its gradient retained. Other modules use ``weight.grad``.
    """
    capturing = [m for m in prunable.values() if hasattr(m, "capture_effective_weight")]
    for module in capturing:
        module.capture_effective_weight = True
    try:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        out = {}
        for name, module in prunable.items():
            effective = getattr(module, "effective_weight", None) if module in capturing else None
            grad = effective.grad if effective is not None else module.weight.grad
            out[name] = grad.detach().clone()
        return out
    finally:
        for module in capturing:
            module.capture_effective_weight = False
            module.effective_weight = None
        model.zero_grad(set_to_none=True)
