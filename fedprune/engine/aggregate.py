"""Streaming server aggregation: updates are folded into running sums as they arrive.

Masked tensors use the sparse average: per element, sum_k n_k m_k w_k / sum_k n_k m_k over the
clients whose mask holds it, 0 where none does. The same denominator, divided by sum_k n_k, is
each position's sample-weighted vote share. Dense tensors and float buffers take the plain
sample-weighted average; integer buffers (BatchNorm's step counter) keep the largest value.
Growth scores are averaged with weights n_k / sum n. Memory is two model-sized buffers,
whatever the number of clients.
"""

from __future__ import annotations

import torch


class Aggregator:
    def __init__(
        self, template: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None
    ) -> None:
        self.masks = masks or {}
        self.sums = {
            k: torch.zeros_like(v, dtype=torch.float64 if v.is_floating_point() else v.dtype)
            for k, v in template.items()
        }
        self.holders = {k: torch.zeros_like(self.sums[k]) for k in self.masks}
        self.scores: dict[str, torch.Tensor] = {}
        self.samples = 0

    def add(
        self,
        state: dict[str, torch.Tensor],
        samples: int,
        masks: dict[str, torch.Tensor] | None = None,
        scores: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Fold in one client's state (``masks``: the client's, when they differ from global)."""
        masks = masks if masks is not None else self.masks
        self.samples += samples
        for name, value in state.items():
            acc = self.sums[name]
            if not value.is_floating_point():
                torch.maximum(acc, value, out=acc)
                continue
            acc.add_(value.to(acc.dtype), alpha=samples)
            if name in self.holders:
                self.holders[name].add_(masks[name].to(acc.dtype), alpha=samples)
        for name, score in (scores or {}).items():
            if name not in self.scores:
                self.scores[name] = torch.zeros_like(score, dtype=torch.float64)
            self.scores[name].add_(score.to(torch.float64), alpha=samples)

    def result(
        self, template: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(averaged state in the template's dtypes, vote shares, averaged growth scores)."""
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
        scores = {n: (s / self.samples).float() for n, s in self.scores.items()}
        return state, votes, scores
