"""Streaming server aggregation of weights: updates are folded into running sums as they arrive.

Masked tensors use the sparse average: per element, sum_k n_k m_k w_k / sum_k n_k m_k over the
clients whose mask m_k holds it, 0 where none does (a value a client sends outside its own mask
is ignored). The same denominator, divided by sum_k n_k, is each position's sample-weighted vote
share. Dense tensors and float buffers take the plain sample-weighted average; integer buffers
(BatchNorm's step counter) keep the largest value. Sums are float64, so the result does not
depend on the order clients are folded in (up to the exactness of those sums). Memory is two
model-sized buffers, whatever the number of clients. A strategy folds anything else a client
uploads (growth scores) itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


class Aggregator:
    def __init__(self, template: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None) -> None:
        self.masks = dict(masks or {})
        self.sums = {
            k: torch.zeros_like(v, dtype=torch.float64 if v.is_floating_point() else v.dtype)
            for k, v in template.items()
        }
        self.holders = {k: torch.zeros_like(self.sums[k]) for k in self.masks}
        self.samples = 0

    def add(
        self,
        state: Mapping[str, Tensor],
        samples: int,
        masks: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Fold in one client's state (``masks``: the client's, when they differ from global)."""
        masks = masks if masks is not None else self.masks
        self.samples += samples
        for name, value in state.items():
            acc = self.sums[name]
            if not value.is_floating_point():
                torch.maximum(acc, value, out=acc)
                continue
            if name in self.holders:
                held = masks[name]
                acc.add_(value.to(acc.dtype).masked_fill(~held, 0), alpha=samples)
                self.holders[name].add_(held.to(acc.dtype), alpha=samples)
            else:
                acc.add_(value.to(acc.dtype), alpha=samples)

    def result(
        self, template: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(averaged state in the template's dtypes, vote shares of the masked tensors)."""
        if not self.samples:
            raise RuntimeError("no client update was aggregated")
        state, votes = {}, {}
        for name, acc in self.sums.items():
            dtype = template[name].dtype
            if name in self.holders:
                held = self.holders[name]
                state[name] = torch.where(held > 0, acc / held.clamp_min(1e-300), 0).to(dtype)
                votes[name] = (held / self.samples).float()
            elif acc.is_floating_point():
                state[name] = (acc / self.samples).to(dtype)
            else:
                state[name] = acc.clone()
        return state, votes


class ScoreSum:
    """A sample-weighted average of per-layer tensors (e.g. growth scores), streamed."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.samples = 0

    def add(self, scores: Mapping[str, Tensor], samples: int) -> None:
        self.samples += samples
        for name, score in scores.items():
            if name not in self.sums:
                self.sums[name] = torch.zeros_like(score, dtype=torch.float64)
            self.sums[name].add_(score.to(torch.float64), alpha=samples)

    def mean(self) -> dict[str, Tensor]:
        return {n: (s / self.samples).float() for n, s in self.sums.items()} if self.samples else {}

    def take(self) -> dict[str, Tensor]:
        """The mean, and empty for the next round."""
        mean = self.mean()
        self.sums, self.samples = {}, 0
        return mean
