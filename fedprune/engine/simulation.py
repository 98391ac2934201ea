"""The round loop of one (method, seed) run, simulated in one process.

Data flows one way: sample clients -> each trains the shared model from the global state ->
the aggregator folds its update in -> the server sets the new global weights and masks ->
evaluation -> observers. Plugins are called at named points; the loop knows no method by name.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedprune import comm
from fedprune import masks as M
from fedprune.data.base import ArrayDataset, DatasetSplits
from fedprune.engine.aggregate import Aggregator
from fedprune.engine.build import MethodParts, bind_masks
from fedprune.engine.client import ClientUpdate, LocalTrainer, batches
from fedprune.engine.config import RunConfig
from fedprune.engine.events import ClientReport, RunInfo
from fedprune.memory import measure_training_step
from fedprune.seeding import torch_generator


class Simulation:
    """Federated training of ``model`` (already transformed for the method) from ``masks``."""

    def __init__(
        self,
        parts: MethodParts,
        config: RunConfig,
        data: DatasetSplits,
        client_indices: list[np.ndarray],
        model: nn.Module,
        masks: dict[str, torch.Tensor] | None,
        seed: int,
        hook: Any = None,
        run: RunInfo | None = None,
    ) -> None:
        self.parts, self.config, self.data, self.seed = parts, config, data, seed
        self.client_indices = client_indices
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        self.masks = {n: m.to(self.device) for n, m in masks.items()} if masks else None
        self.hook = hook
        self.run_info = run or RunInfo(parts.method.name, seed, config)
        self.trainer = LocalTrainer(self.model, parts, config)
        self.prunable = self.trainer.prunable
        if self.masks:
            # The policy sees the unmasked initial weights: it may start from the dense model.
            if hasattr(parts.policy, "initial"):
                self.masks = parts.policy.initial(
                    self.model, self.masks, data.train, client_indices, config,
                    torch_generator(seed, "mask-policy-initial"),
                )
            M.apply_masks(self.trainer.params, self.masks)
        self.global_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.history: list[dict[str, float]] = []
        self.upload_bytes = 0
        self.download_bytes = 0

    # ------------------------------------------------------------------------------------ loop

    def run(self) -> dict[str, Any]:
        """Train for ``config.rounds`` rounds; the run's results.json fields."""
        start = time.perf_counter()
        sampler = torch_generator(self.seed, "client-sampling")
        config = self.config
        for round_ in range(1, config.rounds + 1):
            chosen = torch.randperm(config.clients, generator=sampler)[: config.clients_per_round]
            metrics = self.round(round_, sorted(chosen.tolist()))
            if round_ % config.eval_every == 0 or round_ == config.rounds:
                accuracy, loss = self.evaluate(self.data.test)
                metrics.update(accuracy=accuracy, loss=loss)
                self.history.append({"round": round_, "accuracy": accuracy, "loss": loss})
            self._call("fedprune_round_end", run=self.run_info, round=round_, metrics=metrics)
        return self.summary(time.perf_counter() - start)

    def round(self, round_: int, clients: list[int]) -> dict[str, float]:
        """One round: local training of ``clients``, aggregation, server-side mask update."""
        parts, masks = self.parts, self.masks
        self.round_ = round_
        fraction = 0.0
        if parts.method.adjust and parts.schedule is not None:
            fraction = float(parts.schedule.fraction(round_, self.config.rounds))
        counts = M.adjustment_counts(masks, fraction) if masks and fraction > 0 else {}
        aggregator = Aggregator(self.global_state, masks)
        down = comm.state_bytes(self.global_state, masks, positions=True)
        losses, round_up = [], 0
        for client in clients:
            generator = torch_generator(self.seed, "client-data", round_, client)
            update = self.trainer.train(
                client, self.data.train, self.client_indices[client], self.global_state,
                masks, counts, round_, generator,
            )
            up = self._upload_bytes(update)
            aggregator.add(update.state, update.samples, update.masks, update.scores)
            losses.append(update.loss)
            round_up += up
            report = ClientReport(client, update.samples, update.steps, update.loss, up, down)
            self._call("fedprune_client_trained", run=self.run_info, round=round_, client=report)
        state, votes, scores = aggregator.result(self.global_state)
        if masks is not None:
            new_masks = self._server_masks(state, votes, scores, counts)
            if any(not torch.equal(new_masks[n], masks[n]) for n in masks):
                self._call("fedprune_masks_updated", run=self.run_info, round=round_,
                           masks=new_masks)
            self.masks = new_masks
        self.global_state = state
        round_down = down * len(clients)
        self.upload_bytes += round_up
        self.download_bytes += round_down
        return {
            "train_loss": float(np.mean(losses)),
            "upload_bytes": float(round_up),
            "download_bytes": float(round_down),
            "density": M.density(self.masks) if self.masks else 1.0,
        }

    def _server_masks(self, state, votes, scores, counts) -> dict[str, torch.Tensor]:
        """Vote and re-prune each layer to its current size; then, in server-side adjustment
        rounds, the mask policy or the fixed-count prune-and-grow."""
        pruning, settings, policy = self.parts.pruning, self.parts.settings, self.parts.policy
        new, prune_scores = {}, {}
        for name, old in self.masks.items():
            weight = state[name]
            prune = pruning.scores(weight, None) if pruning is not None else weight.abs()
            voted = votes[name] > settings.min_votes
            new[name] = M.keep_top(prune, voted, int(old.sum()), tiebreak=votes[name])
            prune_scores[name] = prune
        if self.parts.method.adjust == "server" and counts and scores:
            if policy is not None:
                new = policy.update(new, {n: state[n] for n in new}, scores, counts,
                                    self.round_, self.config.rounds)
            else:
                for name, mask in new.items():
                    new[name], _ = M.prune_and_grow(
                        mask, prune_scores[name], scores[name], counts[name])
        for name, mask in new.items():
            state[name].masked_fill_(~mask, 0)
        return new

    def _upload_bytes(self, update: ClientUpdate) -> int:
        """Weights (positions only when the client changed its mask) plus any growth scores."""
        masks = update.masks if update.masks is not None else self.masks
        total = comm.state_bytes(update.state, masks, positions=update.masks is not None)
        for name, score in (update.scores or {}).items():
            nnz = update.score_nnz[name] if update.score_nnz else score.numel()
            total += comm.sparse_bytes(score.numel(), nnz, score.element_size())
        return total

    # ------------------------------------------------------------------------- measurement

    def measure_memory(self) -> dict[str, int | None]:
        """One training step of the client model as it will train (current masks bound), on one
        training batch, measured by `fedprune.memory.measure_training_step`.

        It runs on a copy of the model under a forked RNG, so components' private state (e.g.
        SAP's sampling generator) and the global generator (dropout) are untouched: measuring
        never changes a run's results.
        """
        model = copy.deepcopy(self.model)
        bind_masks(model, self.masks)
        index = next(batches(self.client_indices[0], self.config.batch_size, 1,
                             torch_generator(self.seed, "memory-batch")))
        x, y = self.data.train.batch(index, train=True)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            report = measure_training_step(
                model, x.to(self.device), y.to(self.device), self.masks,
                lr=self.config.lr, momentum=self.config.momentum,
            )
        return report.as_dict()

    # ------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, dataset: ArrayDataset) -> tuple[float, float]:
        """Accuracy and mean loss of the global model on ``dataset``."""
        self.model.load_state_dict(self.global_state)
        bind_masks(self.model, self.masks)
        self.model.eval()
        correct, loss, size = 0, 0.0, len(dataset)
        for start in range(0, size, self.config.eval_batch_size):
            x, y = dataset.batch(np.arange(start, min(start + self.config.eval_batch_size, size)))
            x, y = x.to(self.device), y.to(self.device)
            out = self.model(x)
            loss += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
        return correct / size, loss / size

    def measured_density(self) -> float:
        """Non-zero fraction of the prunable weights of the global model (measured, not masks)."""
        tensors = [self.global_state[name] for name in self.prunable]
        return sum(int(t.count_nonzero()) for t in tensors) / sum(t.numel() for t in tensors)

    def summary(self, wall_seconds: float) -> dict[str, Any]:
        accuracies = [h["accuracy"] for h in self.history]
        return {
            "status": "ok",
            "final_accuracy": accuracies[-1],
            "best_accuracy": max(accuracies),
            "final_loss": self.history[-1]["loss"],
            "density": self.measured_density(),
            "rounds": self.config.rounds,
            "upload_bytes": self.upload_bytes,
            "download_bytes": self.download_bytes,
            "wall_seconds": wall_seconds,
            "history": self.history,
        }

    def _call(self, name: str, **kwargs: Any) -> None:
        if self.hook is not None:
            getattr(self.hook, name)(**kwargs)
