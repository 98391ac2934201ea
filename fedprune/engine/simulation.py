"""The round loop of one run, simulated in one process, and the evaluation of the global model.

Data flows one way: the strategy plans the round -> the sampled clients train the shared model
from the global state, one after another -> the aggregator and the strategy fold each update in
as it arrives -> the strategy sets the new masks -> evaluation -> observers. Where and how masks
change is entirely the strategy's (`fedprune.contracts.Strategy`); the loop knows no method.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedprune import comm
from fedprune import masks as M
from fedprune.contracts import ClientResult, MaskPolicy
from fedprune.data.base import ArrayDataset
from fedprune.engine.aggregate import Aggregator
from fedprune.engine.events import ClientReport, Observers, RunInfo
from fedprune.engine.prepare import PreparedRun
from fedprune.errors import Diverged
from fedprune.ops.layers import bind_masks


class Simulation:
    """Federated training of a `PreparedRun` for ``config.rounds`` rounds."""

    def __init__(self, run: PreparedRun, observers: Observers | None = None,
                 info: RunInfo | None = None) -> None:
        self.prepared = run
        self.config = run.config
        self.device = torch.device(run.config.device)
        self.observers = observers or Observers(None)
        self.info = info or RunInfo(run.parts.method.name, run.seed, run.config)
        self.strategy = run.parts.strategy
        self.prunable = run.trainer.prunable
        policy = run.parts.one(MaskPolicy)
        self.fixed_size = self.strategy.fixed_size and (policy is None or policy.fixed_size)
        self.history: list[dict[str, float]] = []
        self.adjustments: list[dict[str, float]] = []
        self.upload_bytes = 0
        self.download_bytes = 0
        self.round = 0  # the last completed round
        self.elapsed = 0.0  # seconds of this process's rounds so far
        self.earlier_seconds = 0.0  # seconds of the rounds before a resume

    # ------------------------------------------------------------------------------------ loop

    def run(self, after_round: Callable[[Simulation], None] | None = None) -> dict[str, Any]:
        """Train the remaining rounds; the run's results.json fields. ``after_round`` is called
        after every completed round (the bench checkpoints there)."""
        start = time.perf_counter()
        config = self.config
        while self.round < config.rounds:
            self.elapsed = time.perf_counter() - start
            round_ = self.round + 1
            self.play(round_, self.prepared.sample_clients(round_))
            if after_round is not None:
                self.elapsed = time.perf_counter() - start
                after_round(self)
        return self.summary(self.earlier_seconds + time.perf_counter() - start)

    def play(self, round_: int, clients: list[int]) -> dict[str, float]:
        """Round ``round_`` as the run plays it: `step`, the evaluation when it is due, the
        history and the observers; the round's metrics."""
        config = self.config
        metrics = self.step(round_, clients)
        if round_ % config.eval_every == 0 or round_ == config.rounds:
            accuracy, loss = self.evaluate(self.prepared.federation.data.test)
            metrics.update(accuracy=accuracy, loss=loss)
            self.history.append({"round": round_, "accuracy": accuracy, "loss": loss})
        self.round = round_
        self.observers.round_end(self.info, round_, metrics)
        return metrics

    def step(self, round_: int, clients: list[int]) -> dict[str, float]:
        """One round: local training of ``clients``, aggregation, the strategy's new masks."""
        run, strategy = self.prepared, self.strategy
        masks = run.masks
        lr = self.config.learning_rate(round_)
        plan = strategy.plan(run, round_)
        strategy.begin_round(run, plan)
        aggregator = Aggregator(run.state, masks)
        down = comm.state_bytes(run.state, masks, positions=True)
        losses, round_up, client_metrics = [], 0, []
        for update in run.executor.train(round_, clients, run.state, masks, plan, lr):
            client = update.client
            up = self._upload_bytes(update.state, update.masks, update.payload)
            aggregator.add(update.state, update.samples, update.masks)
            strategy.fold(run, plan, client, update.samples, update.state,
                          ClientResult(update.masks, update.payload))
            losses.append(update.loss)
            client_metrics.append(update.metrics)
            round_up += up
            report = ClientReport(client, update.samples, update.steps, update.loss, up, down,
                                  update.metrics)
            self.observers.client_trained(self.info, round_, report)
        state, votes = aggregator.result(run.state)
        metrics: dict[str, float] = {}
        if masks is not None:
            new = strategy.server_masks(run, plan, state, votes)
            assert new is not None, "a sparse method's strategy returned no masks"
            for name, mask in new.items():
                state[name].masked_fill_(~mask, 0)
            self._check_masks(new, round_)
            pruned = sum(int((masks[n] & ~new[n]).sum()) for n in new)
            grown = sum(int((new[n] & ~masks[n]).sum()) for n in new)
            if pruned or grown:
                self.observers.masks_updated(self.info, round_, new)
            if plan.adjusting:
                entry: dict[str, float] = {"round": round_, "pruned": pruned, "grown": grown}
                entry.update(_mean_metrics(client_metrics))
                self.adjustments.append(entry)
                metrics.update({k: v for k, v in entry.items() if k != "round"})
            run.masks = new
        self._check_finite(state, round_)
        run.state = state
        round_down = down * len(clients)
        self.upload_bytes += round_up
        self.download_bytes += round_down
        metrics.update({
            "train_loss": float(np.mean(losses)),
            "lr": lr,
            "round_upload_bytes": float(round_up),
            "round_download_bytes": float(round_down),
            "density": M.density(run.masks) if run.masks else 1.0,
        })
        return metrics

    def _upload_bytes(self, state, masks, payload) -> int:
        """Weights (positions only when the client changed its mask) plus the payload."""
        positions = masks is not None
        total = comm.state_bytes(state, masks if positions else self.prepared.masks, positions)
        return total + comm.payload_bytes(payload)

    def _check_masks(self, masks: dict[str, torch.Tensor], round_: int) -> None:
        """Fixed-size strategies never exceed any layer's target count, whatever the scores."""
        if not self.fixed_size:
            return
        over = [f"{n} ({int(m.sum())} > {self.prepared.targets[n]})" for n, m in masks.items()
                if int(m.sum()) > self.prepared.targets[n]]
        if over:
            raise RuntimeError(
                f"round {round_}: the strategy {type(self.strategy).__name__} grew masks above "
                f"their target counts: {', '.join(over[:3])}"
            )

    @staticmethod
    def _check_finite(state: dict[str, torch.Tensor], round_: int) -> None:
        for name, tensor in state.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise Diverged(f"the global weights became non-finite ({name})", round_)

    # ----------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything the rest of the run depends on, at a round boundary."""
        run = self.prepared
        policy = run.parts.one(MaskPolicy)
        return {
            "round": self.round,
            "state": run.state,
            "masks": run.masks,
            "sampler": run.sampler.get_state(),
            "strategy": self.strategy.state_dict(),
            "policy": policy.state_dict() if policy is not None else {},
            "client_states": run.trainer.client_states,
            "history": self.history,
            "adjustments": self.adjustments,
            "upload_bytes": self.upload_bytes,
            "download_bytes": self.download_bytes,
            "task_bytes": list(run.task_bytes),
            "targets": run.targets,
            "wall_seconds": self.earlier_seconds + self.elapsed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        run = self.prepared
        self.round = int(state["round"])
        run.state = dict(state["state"])
        run.masks = dict(state["masks"]) if state["masks"] is not None else None
        run.sampler.set_state(state["sampler"])
        self.strategy.load_state_dict(state["strategy"])
        policy = run.parts.one(MaskPolicy)
        if policy is not None:
            policy.load_state_dict(state["policy"])
        run.trainer.client_states = dict(state["client_states"])
        self.history = list(state["history"])
        self.adjustments = list(state["adjustments"])
        self.upload_bytes = int(state["upload_bytes"])
        self.download_bytes = int(state["download_bytes"])
        self.earlier_seconds = float(state["wall_seconds"])
        run.task_bytes = list(state["task_bytes"])
        run.targets = dict(state["targets"])
        run.model.load_state_dict(run.state)
        bind_masks(run.model, run.masks)

    # ------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, dataset: ArrayDataset) -> tuple[float, float]:
        """Accuracy and mean loss of the global model on ``dataset``."""
        model = self.prepared.model
        model.load_state_dict(self.prepared.state)
        bind_masks(model, self.prepared.masks)
        model.eval()
        correct, loss, size = 0, 0.0, len(dataset)
        batch = self.config.eval_batch_size
        for start in range(0, size, batch):
            x, y = dataset.batch(np.arange(start, min(start + batch, size)))
            x, y = x.to(self.device), y.to(self.device)
            out = model(x)
            loss += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
        if not math.isfinite(loss):
            raise Diverged("the evaluation loss became non-finite", self.round + 1)
        return correct / size, loss / size

    def measured_density(self) -> float:
        """Non-zero fraction of the prunable weights of the global model (measured, not masks)."""
        tensors = [self.prepared.state[name] for name in self.prunable]
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
            "upload_bytes": self.upload_bytes + self.prepared.task_bytes[0],
            "download_bytes": self.download_bytes + self.prepared.task_bytes[1],
            "wall_seconds": wall_seconds,
            "history": self.history,
            "adjustments": self.adjustments,
        }


def _mean_metrics(metrics: list[dict[str, float]]) -> dict[str, float]:
    """Per-name plain mean over the clients that reported the metric."""
    names = sorted({k for m in metrics for k in m})
    return {k: float(np.mean([m[k] for m in metrics if k in m])) for k in names}
