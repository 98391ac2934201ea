"""FedTiny (Huang et al., ICDCS'23): adaptive BatchNorm selection, then progressive pruning.

**Adaptive BN selection** (``abns``, in `FedTiny.setup`, before round 1). The server draws
``candidates`` masks from the initial weights: per layer the density of the method's
distribution at ``--density`` times (1 + u_l), u_l ~ U(-``noise``, ``noise``), redrawn until the
global density is within ``tolerance`` (relative) of the target; each layer keeps its
largest-|w| weights (the pruning criterion). The clients of one sampled cohort then
(1) re-estimate every candidate's BN statistics by forward passes alone on a validation split
(``validation``, 10% of their data) and upload them with the split's size; the server pools them
per candidate, mean = sum_k p_k mu_k and variance = sum_k p_k (var_k + (mu_k - mean)^2),
p_k = n_k / sum n (the pooled variance of the union of the splits); (2) evaluate every
candidate with the pooled statistics and upload its summed loss and correct count. The
candidate of lowest sample-weighted mean loss becomes the initial mask, with its pooled BN
statistics in the global model. A model without BatchNorm (e.g. under ``nsconv``) skips (1):
the candidates are ranked by their loss alone.

**Progressive pruning** (``progressive``). In the schedule's adjustment rounds only some layers
adjust: ``granularity="layer"`` one layer per adjustment, round-robin from the last layer to the
first; ``"block"`` one stage of a torchvision ResNet (stem with the first stage, classifier with
the last), otherwise groups of ``block_size`` consecutive layers, also back to front;
``"entire"`` every layer. k_l = ceil(rate_r * active_l), rate indexed by round. Clients upload,
for the selected layers only, the top-k_l |growth score| (the dense gradient of one batch) among
inactive positions, as values with their positions (`fedprune.comm.encode_sparse`: int32
indices, or a bitmap when cheaper); the server averages them (``weighting="samples"``:
n_k / sum n; ``"clients"``: the authors' plain mean), prunes the k_l smallest-|w| active weights
of each selected layer and grows its k_l inactive positions of largest |mean gradient|, at 0.
``progressive=False``: every layer adjusts and clients upload their gradients dense, which with
``abns=False`` is the FedMef/FedRTS papers' "FedTiny" (the authors' ``fedtinyclean``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fedprune
from fedprune import comm
from fedprune import masks as M
from fedprune.contracts import (
    ClientContext,
    ClientResult,
    GrowthCriterion,
    Masks,
    Payload,
    PruningCriterion,
    RoundPlan,
    Schedule,
    ServerContext,
)
from fedprune.engine.aggregate import ScoreSum
from fedprune.errors import FedpruneError
from fedprune.ops.bits import pack_bits, unpack_bits
from fedprune.ops.layers import bind_masks
from fedprune.options import as_bool
from fedprune.seeding import torch_generator

GRANULARITIES = ("layer", "block", "entire")
WEIGHTINGS = ("samples", "clients")
CALIBRATE, EVALUATE = "fedtiny_calibrate", "fedtiny_evaluate"
STATISTICS = ("running_mean", "running_var")

# ------------------------------------------------------------------------------- candidates


def candidate_masks(
    scores: Mapping[str, Tensor], densities: Mapping[str, float], density: float, count: int,
    noise: float, tolerance: float, generator: torch.Generator, max_draws: int = 1000,
) -> list[Masks]:
    """``count`` masks keeping each layer's highest ``scores`` at noisy layer densities
    d_l * (1 + u_l), u_l ~ U(-noise, noise), whose global density is within ``tolerance``
    (relative) of ``density``; a draw outside it is redrawn (at most ``max_draws`` per mask)."""
    shapes = {n: s.shape for n, s in scores.items()}
    total = sum(s.numel() for s in scores.values())
    pool: list[Masks] = []
    for _ in range(count * max_draws):
        u = (torch.rand(len(shapes), generator=generator) * 2 - 1) * noise
        noisy = {n: min(1.0, densities[n] * (1 + float(x))) for n, x in zip(shapes, u, strict=True)}
        counts = M.target_counts(shapes, noisy)
        if abs(sum(counts.values()) / total - density) <= tolerance * density:
            pool.append({n: m.to(scores[n].device) for n, m in M.top_masks(scores, counts).items()})
            if len(pool) == count:
                return pool
    raise FedpruneError(
        f"fedtiny_adjust: no candidate mask within {tolerance:.0%} of density {density} in "
        f"{max_draws} draws (layer densities cannot reach it); raise fedtiny_adjust.tolerance "
        "or lower fedtiny_adjust.noise"
    )


def _pack(pool: list[Masks]) -> Payload:
    return {f"mask/{c}/{n}": pack_bits(m) for c, masks in enumerate(pool) for n, m in masks.items()}


def _unpack(payload: Payload, like: Mapping[str, Tensor]) -> list[Masks]:
    pool: dict[int, Masks] = {}
    for key, packed in payload.items():
        if key.startswith("mask/"):
            _, c, name = key.split("/", 2)
            mask = unpack_bits(packed, like[name].numel()).view(like[name].shape)
            pool.setdefault(int(c), {})[name] = mask.to(like[name].device)
    return [pool[c] for c in sorted(pool)]


# ----------------------------------------------------------------------- BatchNorm statistics


def batch_norms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The model's normalisation layers that keep running statistics, by module name."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


def _key(module: str, buffer: str) -> str:
    return f"{module}.{buffer}" if module else buffer


@torch.no_grad()
def recalibrate(model: nn.Module, batches: Iterable[Tensor]) -> dict[str, Tensor]:
    """BN running statistics re-estimated by forward passes alone (no training): the cumulative
    average of the batches' statistics (momentum None), by state-dict key."""
    norms = batch_norms(model)
    momenta = {n: m.momentum for n, m in norms.items()}
    model.train()
    try:
        for m in norms.values():
            m.reset_running_stats()
            m.momentum = None
        for x in batches:
            model(x)
    finally:
        for n, m in norms.items():
            m.momentum = momenta[n]
    return {_key(n, b): getattr(m, b).detach().clone() for n, m in norms.items()
            for b in STATISTICS}


def pool_statistics(replies: Iterable[tuple[int, Mapping[str, Tensor]]]) -> dict[str, Tensor]:
    """Per BN layer, the pooled statistics of clients' ``(samples, {key: tensor})`` replies:
    mean = sum_k p_k mu_k, var = sum_k p_k (var_k + mu_k^2) - mean^2, p_k = n_k / sum n (the
    variance of the union of the clients' data, not the mean of their variances)."""
    sums = ScoreSum()
    for samples, stats in replies:
        moments = {}
        for key, mean in stats.items():
            if key.endswith("running_mean"):
                var = stats[key[: -len("mean")] + "var"]
                moments[key] = mean
                moments[key[: -len("mean")] + "var"] = var.double() + mean.double() ** 2
        sums.add(moments, samples)
    out = {key: total / sums.samples for key, total in sums.sums.items()}
    for key in [k for k in out if k.endswith("running_var")]:
        out[key] = (out[key] - out[key[: -len("var")] + "mean"] ** 2).clamp_min(0)
    return {k: v.float() for k, v in out.items()}


# ------------------------------------------------------------------------------ layer groups


def layer_groups(
    model: nn.Module, layers: list[str], granularity: str, block_size: int = 2
) -> list[list[str]]:
    """The groups of ``layers`` (front to back) that adjust together."""
    if granularity == "layer":
        return [[n] for n in layers]
    if granularity == "entire":
        return [list(layers)]
    from torchvision.models import ResNet

    if isinstance(model, ResNet):  # stages layer1..layer4; stem -> 1, classifier -> 4
        def key(i: int, name: str) -> int:
            head = name.split(".")[0]
            return int(head[5:]) if head.startswith("layer") else 1 if head == "conv1" else 4
    else:
        def key(i: int, name: str) -> int:
            return i // block_size
    groups: dict[int, list[str]] = {}
    for i, name in enumerate(layers):
        groups.setdefault(key(i, name), []).append(name)
    return [groups[k] for k in sorted(groups)]


# ---------------------------------------------------------------------------------- strategy


class FedTiny(fedprune.Strategy):
    """FedTiny's adaptive BN selection and progressive pruning (see the module docstring)."""

    uses = frozenset({"pruning_criterion", "growth_criterion", "schedule"})

    def __init__(
        self, abns: bool = True, candidates: int = 5, noise: float = 0.5,
        tolerance: float = 0.02, validation: float = 0.1, progressive: bool = True,
        granularity: str = "layer", block_size: int = 2, weighting: str = "samples",
    ) -> None:
        self.abns = as_bool(abns, "fedtiny_adjust.abns")
        self.progressive = as_bool(progressive, "fedtiny_adjust.progressive")
        self.candidates, self.block_size = int(candidates), int(block_size)
        self.noise, self.tolerance = float(noise), float(tolerance)
        self.validation = float(validation)
        if self.candidates < 1 or self.block_size < 1:
            raise FedpruneError("fedtiny_adjust.candidates and block_size must be >= 1")
        if not (0 <= self.noise < 1 and self.tolerance > 0 and 0 < self.validation <= 1):
            raise FedpruneError(
                "fedtiny_adjust needs 0 <= noise < 1, tolerance > 0 and 0 < validation <= 1"
            )
        for name, value, allowed in (("granularity", granularity, GRANULARITIES),
                                     ("weighting", weighting, WEIGHTINGS)):
            if value not in allowed:
                raise FedpruneError(
                    f"fedtiny_adjust.{name} must be one of {', '.join(allowed)}, not {value!r}"
                )
        self.granularity, self.weighting = granularity, weighting
        self.scores = ScoreSum()
        self.selection: dict[str, Any] = {}  # what ABNS chose, for reports and tests

    # ------------------------------------------------------------------- adaptive BN selection

    def setup(self, server: ServerContext) -> None:
        self.selection = {}
        if not self.abns or server.masks is None:
            return
        pruning = server.parts.need(PruningCriterion)
        weights = {n: server.state[n] for n in server.masks}
        densities = M.DISTRIBUTIONS[server.parts.settings.distribution](
            {n: w.shape for n, w in weights.items()}, server.config.density)
        generator = server.generator("fedtiny-candidates")
        pool = candidate_masks({n: pruning.scores(w, None) for n, w in weights.items()},
                               densities, server.config.density, self.candidates, self.noise,
                               self.tolerance, generator)
        cohort = torch.randperm(server.num_clients, generator=generator)
        clients = sorted(cohort[: server.config.clients_per_round].tolist())
        payload = {"seed": torch.randint(2**31 - 1, (1,), generator=generator), **_pack(pool)}
        stats: dict[str, Tensor] = {}
        if batch_norms(server.model):
            replies = server.run_clients(CALIBRATE, clients, payload)
            stats = pool_statistics((int(r["samples"]), _bn(r)) for _, _, r in replies)
        loss = torch.zeros(len(pool), dtype=torch.float64)
        correct, samples = torch.zeros(len(pool), dtype=torch.int64), 0
        for _, _, reply in server.run_clients(EVALUATE, clients, {**payload, **stats}):
            loss += reply["loss"].double()
            correct += reply["correct"]
            samples += int(reply["samples"])
        mean_loss = loss / max(samples, 1)
        best = int(torch.argmin(mean_loss))
        server.masks = pool[best]
        prefix = f"bn/{best}/"
        server.state = {**server.state, **{
            k[len(prefix):]: v.to(server.state[k[len(prefix):]])
            for k, v in stats.items() if k.startswith(prefix)}}
        self.selection = {"candidate": best, "loss": mean_loss.tolist(),
                          "accuracy": (correct / max(samples, 1)).tolist(),
                          "density": [M.density(m) for m in pool]}

    def client_task(self, task: str, ctx: ClientContext, payload: Payload) -> Payload:
        """Per candidate: BN statistics by forward passes (CALIBRATE), or the summed loss and
        correct count with the pooled statistics (EVALUATE), on the validation split."""
        if task not in (CALIBRATE, EVALUATE):
            return super().client_task(task, ctx, payload)
        model = ctx.model
        pool = _unpack(payload, ctx.params)
        batches = self._validation_batches(ctx, int(payload["seed"]))
        dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
        reply: Payload = {"samples": torch.tensor(sum(len(y) for _, y in batches))}
        losses, correct = [], []
        for c, masks in enumerate(pool):
            model.load_state_dict(dense)
            M.apply_masks(ctx.params, masks)
            bind_masks(model, masks)
            if task == CALIBRATE:
                stats = recalibrate(model, (x for x, _ in batches))
                reply.update({f"bn/{c}/{k}": v for k, v in stats.items()})
                continue
            prefix = f"bn/{c}/"
            model.load_state_dict({k[len(prefix):]: v for k, v in payload.items()
                                   if k.startswith(prefix)}, strict=False)
            loss, right = _evaluate(model, batches)
            losses.append(loss)
            correct.append(right)
        if task == EVALUATE:
            reply["loss"] = torch.tensor(losses, dtype=torch.float64)
            reply["correct"] = torch.tensor(correct, dtype=torch.int64)
        return reply

    def _validation_batches(self, ctx: ClientContext, seed: int) -> list[tuple[Tensor, Tensor]]:
        """The client's validation split (the same in both tasks: drawn from the server's
        ``seed``), in evaluation-size batches of at least two samples where possible."""
        assert ctx.data is not None and ctx.indices is not None
        n = len(ctx.indices)
        size = min(n, max(1, round(self.validation * n)))
        order = torch.randperm(n, generator=torch_generator(seed, "fedtiny-validation", ctx.client))
        index = ctx.indices[order[:size].numpy()]
        device = next(ctx.model.parameters()).device
        chunks = np.array_split(index, max(1, math.ceil(size / ctx.config.eval_batch_size)))
        out = []
        for chunk in chunks:
            x, y = ctx.data.batch(chunk)
            out.append((x.to(device), y.to(device)))
        return out

    # ------------------------------------------------------------------ progressive pruning

    def plan(self, server: ServerContext, round: int) -> RoundPlan:
        """k_l for the layers of this adjustment's group (the ``done``-th from the back)."""
        schedule, total = server.parts.need(Schedule), server.config.rounds
        fraction = float(schedule.fraction(round, total))
        if not server.masks or fraction <= 0:
            return RoundPlan(round)
        counts = M.adjustment_counts(server.masks, fraction)
        if not self.progressive or self.granularity == "entire":
            return RoundPlan(round, counts)
        groups = layer_groups(server.model, list(counts), self.granularity, self.block_size)
        done = sum(schedule.fraction(r, total) > 0 for r in range(1, round))
        return RoundPlan(round, {n: counts[n] for n in groups[-1 - done % len(groups)]})

    def client_end(self, ctx: ClientContext) -> ClientResult:
        """The selected layers' top-k inactive growth scores (dense when not progressive)."""
        if not ctx.adjusting or ctx.masks is None:
            return ClientResult()
        layers = [n for n, k in ctx.counts.items() if k > 0]
        growth = ctx.parts.need(GrowthCriterion)
        grads = ctx.growth_gradients(layers) if growth.uses_gradient else {}
        scores = growth.scores({n: ctx.params[n].detach() for n in layers}, grads)
        growth.consumed()
        if not self.progressive:
            return ClientResult(payload={n: scores[n] for n in layers})
        return ClientResult(payload=comm.encode_top_inactive(scores, ctx.masks, ctx.counts,
                                                             layers))

    def begin_round(self, server: ServerContext, plan: RoundPlan) -> None:
        self.scores = ScoreSum()

    def fold(self, server, plan, client, samples, state, result) -> None:
        if not plan.adjusting or not result.payload:
            return
        layers = [n for n, k in plan.counts.items() if k > 0]
        weight = samples if self.weighting == "samples" else 1
        self.scores.add({n: comm.decode_sparse(n, result.payload, server.state[n])
                         for n in layers}, weight)

    def server_masks(
        self, server: ServerContext, plan: RoundPlan, state: dict[str, Tensor],
        votes: Mapping[str, Tensor],
    ) -> Masks | None:
        masks = server.masks
        assert masks is not None
        scores = self.scores.take()
        pruning = server.parts.need(PruningCriterion)
        regrow = server.parts.settings.regrow_pruned
        new = dict(masks)
        for name, score in scores.items():
            new[name], _ = M.prune_and_grow(masks[name], pruning.scores(state[name], None),
                                            score, plan.counts[name], regrow)
        return new


def _bn(reply: Payload) -> dict[str, Tensor]:
    """A calibration reply's statistics, keyed ``bn/<candidate>/<state key>``."""
    return {k: v for k, v in reply.items() if k.startswith("bn/")}


@torch.no_grad()
def _evaluate(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> tuple[float, int]:
    """Summed cross-entropy and correct count of ``model`` in evaluation mode."""
    model.eval()
    loss, correct = 0.0, 0
    for x, y in batches:
        out = model(x)
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
    return loss, correct
