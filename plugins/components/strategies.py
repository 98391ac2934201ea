"""The two classic places masks change: on the clients (FedDST) or on the server (PruneFL, FedMef).

Both adjust in the rounds their schedule names, k_l = ceil(zeta_r * active_l) weights per layer.

- `ClientAdjust`: after local training each client prunes by its pruning criterion (with the
  gradient of one mini-batch) and grows by its growth criterion, resets the optimizer state of
  grown weights and uploads its new mask; the server keeps the positions held by more than
  ``min_votes`` of the sample-weighted clients and re-prunes each layer back to its size by
  magnitude of the averaged weight, ties (grown weights, all 0) broken by votes.
- `ServerAdjust`: clients upload growth scores, dense or (``upload="topk"``) only the k_l
  largest |score| among inactive positions, as values and positions; the server averages them
  with weights n_k / sum n and prunes and grows k_l per layer, or lets a mask policy decide
  (e.g. PruneFL's objective), after the policy's optional initial pruning on one client.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

import fedprune
from fedprune import comm
from fedprune import masks as M
from fedprune.contracts import (
    ClientContext,
    ClientResult,
    GrowthCriterion,
    MaskPolicy,
    Masks,
    Payload,
    PruningCriterion,
    RoundPlan,
    Schedule,
    ServerContext,
)
from fedprune.engine.aggregate import ScoreSum
from fedprune.errors import FedpruneError
from fedprune.ops.layers import bind_masks

UPLOADS = ("dense", "topk")


class Scheduled(fedprune.Strategy):
    """Adjustment rounds and per-layer counts from the method's schedule."""

    def plan(self, server: ServerContext, round: int) -> RoundPlan:
        schedule = server.parts.need(Schedule)
        fraction = float(schedule.fraction(round, server.config.rounds))
        if not server.masks or fraction <= 0:
            return RoundPlan(round)
        return RoundPlan(round, M.adjustment_counts(server.masks, fraction))


def _weights(ctx: ClientContext) -> dict[str, Tensor]:
    assert ctx.masks is not None
    return {n: ctx.params[n].detach() for n in ctx.masks}


class ClientAdjust(Scheduled):
    """FedDST's adjustment: clients prune and grow, the server votes and re-prunes."""

    uses = frozenset({"pruning_criterion", "growth_criterion", "schedule"})

    def client_end(self, ctx: ClientContext) -> ClientResult:
        if not ctx.adjusting or ctx.masks is None:
            return ClientResult()
        pruning = ctx.parts.need(PruningCriterion)
        growth = ctx.parts.need(GrowthCriterion)
        grads = ctx.growth_gradients()
        weights = _weights(ctx)
        scores = growth.scores(weights, grads)
        growth.consumed()
        regrow = ctx.parts.settings.regrow_pruned
        new = {}
        for name, mask in ctx.masks.items():
            prune = pruning.scores(weights[name], grads[name])
            new[name], _ = M.prune_and_grow(mask, prune, scores[name], ctx.counts[name], regrow)
        M.apply_masks(ctx.params, new)
        if ctx.optimizer is not None:
            M.reset_optimizer_state(ctx.optimizer, ctx.params, M.changed_positions(ctx.masks, new))
        return ClientResult(masks=new)

    def server_masks(
        self, server: ServerContext, plan: RoundPlan, state: dict[str, Tensor],
        votes: Mapping[str, Tensor],
    ) -> Masks | None:
        assert server.masks is not None
        pruning = server.parts.need(PruningCriterion)
        min_votes = server.parts.settings.min_votes
        return {
            name: M.keep_top(pruning.scores(state[name], None), votes[name] > min_votes,
                             int(old.sum()), tiebreak=votes[name])
            for name, old in server.masks.items()
        }


class ServerAdjust(Scheduled):
    """PruneFL's and FedMef's adjustment: clients upload growth scores, the server decides."""

    uses = frozenset({"pruning_criterion", "growth_criterion", "schedule", "mask_policy"})

    def __init__(self, upload: str = "dense") -> None:
        if upload not in UPLOADS:
            raise FedpruneError(
                f"server_adjust.upload must be one of {', '.join(UPLOADS)}, not {upload!r}"
            )
        self.upload = upload
        self.scores = ScoreSum()

    # ----------------------------------------------------------------- the policy's initial step

    def setup(self, server: ServerContext) -> None:
        policy = server.parts.one(MaskPolicy)
        if policy is None or server.masks is None:
            return
        generator = server.generator("mask-policy-initial")
        client = policy.initial_client(server.client_sizes, server.config, generator)
        if client is None:
            return
        payload = {"generator": generator.get_state()}
        payload.update({f"mask/{n}": m for n, m in server.masks.items()})
        [(_, _, reply)] = list(server.run_clients("policy_initial", [client], payload))
        server.masks = {n: reply[f"mask/{n}"].bool() for n in server.masks}
        server.state = {k: reply[f"state/{k}"].clone() for k in server.state}

    def client_task(self, task: str, ctx: ClientContext, payload: Payload) -> Payload:
        if task != "policy_initial":
            return super().client_task(task, ctx, payload)
        policy = ctx.parts.need(MaskPolicy)
        generator = torch.Generator()
        generator.set_state(payload["generator"])
        masks = {k[len("mask/"):]: v for k, v in payload.items() if k.startswith("mask/")}
        bind_masks(ctx.model, None)  # initial pruning may start from the dense model
        assert ctx.data is not None and ctx.indices is not None
        new = policy.initial(ctx.model, masks, ctx.data, ctx.indices, ctx.config, generator)
        reply = {f"mask/{n}": m for n, m in new.items()}
        reply.update({f"state/{k}": v for k, v in ctx.model.state_dict().items()})
        return reply

    # ------------------------------------------------------------------------------- rounds

    def client_end(self, ctx: ClientContext) -> ClientResult:
        if not ctx.adjusting or ctx.masks is None:
            return ClientResult()
        growth = ctx.parts.need(GrowthCriterion)
        grads = ctx.growth_gradients() if growth.uses_gradient else {}
        scores = growth.scores(_weights(ctx), grads)
        growth.consumed()
        if self.upload == "dense":
            return ClientResult(payload={n: scores[n] for n in ctx.masks})
        return ClientResult(payload=comm.encode_top_inactive(scores, ctx.masks, ctx.counts,
                                                             ctx.masks))

    def begin_round(self, server: ServerContext, plan: RoundPlan) -> None:
        self.scores = ScoreSum()

    def fold(self, server, plan, client, samples, state, result) -> None:
        if not plan.adjusting or not result.payload:
            return
        assert server.masks is not None
        self.scores.add({n: comm.decode_sparse(n, result.payload, server.state[n])
                         for n in server.masks}, samples)

    def server_masks(
        self, server: ServerContext, plan: RoundPlan, state: dict[str, Tensor],
        votes: Mapping[str, Tensor],
    ) -> Masks | None:
        masks = server.masks
        assert masks is not None
        scores = self.scores.take()
        if not plan.adjusting or not scores:
            return masks
        policy = server.parts.one(MaskPolicy)
        if policy is not None:
            return policy.update({n: m.clone() for n, m in masks.items()},
                                 {n: state[n] for n in masks}, scores, plan.counts,
                                 plan.round, server.config.rounds)
        pruning = server.parts.need(PruningCriterion)
        regrow = server.parts.settings.regrow_pruned
        return {
            name: M.prune_and_grow(mask, pruning.scores(state[name], None), scores[name],
                                   plan.counts[name], regrow)[0]
            for name, mask in masks.items()
        }
