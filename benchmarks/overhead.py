"""A whole fedprune round against a bare PyTorch round doing the same work.

fedprune's round is the engine's (`Simulation.play`, FedAvg, tracking and observers off): train
each sampled client from the global state, fold its update into the streaming aggregator, set
the new state, evaluate on the test set, compute the round's metrics (bytes, density, loss).
The bare round is the minimum any framework does for that: per client, load the global state,
plain SGD on the same seeded mini-batches (forward, cross-entropy, zero_grad, backward, step),
add the weights into a float64 sample-weighted sum (integer buffers: the largest); average;
evaluate. Both start every repeat from the same global state and the same round's clients, so
both compute the same new weights (checked: the largest difference is printed).

Rounds are interleaved, who goes first alternates, and time is this process's CPU time
(``time.process_time``; the machine is noisy, only the ratio means anything).

    python benchmarks/overhead.py [--repeats 10] [--model cnn] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fedprune.data.digits import load_digits
from fedprune.engine.config import RunConfig
from fedprune.engine.prepare import PreparedRun, make_federation, prepare
from fedprune.engine.simulation import Simulation
from fedprune.engine.training import data_batches, local_steps, seeded
from fedprune.plugins import get_plugin_manager
from fedprune.seeding import torch_generator


def bare_round(run: PreparedRun, state: dict, round_: int, clients: list[int]) -> dict:
    """The new global state after one FedAvg round of ``clients``, then an evaluation."""
    model, config, data = run.model, run.config, run.federation.data
    sums = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in state.items()}
    total = 0
    for client in clients:
        indices = run.federation.clients[client]
        model.load_state_dict(state)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
        generator = torch_generator(run.seed, "client-data", round_, client)
        steps = local_steps(len(indices), config)
        with seeded(run.seed, "client", round_, client):
            for x, y in data_batches(data.train, indices, config.batch_size, steps, generator,
                                     torch.device("cpu")):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                sums[k].add_(v.to(torch.float64), alpha=len(indices))
            else:  # BatchNorm's step counter: the largest, as fedprune keeps it
                torch.maximum(sums[k], v.to(torch.float64), out=sums[k])
        total += len(indices)
    new = {k: (s / total if state[k].is_floating_point() else s).to(state[k].dtype)
           for k, s in sums.items()}
    model.load_state_dict(new)
    model.eval()
    with torch.no_grad():
        test = data.test
        size = len(test)
        for start in range(0, size, config.eval_batch_size):
            x, y = test.batch(np.arange(start, min(start + config.eval_batch_size, size)))
            F.cross_entropy(model(x), y, reduction="sum")
    return new


def fedprune_round(sim: Simulation, state: dict, round_: int, clients: list[int]) -> dict:
    sim.prepared.state = state
    sim.play(round_, clients)
    return sim.prepared.state


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="cnn")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pm = get_plugin_manager()
    config = RunConfig(model=args.model, eval_every=1)  # evaluate every round, as bare does
    federation = make_federation(pm.registry, config, 0, load_digits())
    run = prepare(pm.registry, pm.registry.method("fedavg"), federation)
    sim = Simulation(run)
    state = {k: v.clone() for k, v in run.state.items()}
    clients = run.sample_clients(1)

    a = fedprune_round(sim, state, 1, clients)
    b = bare_round(run, state, 1, clients)
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)

    times: dict[str, list[float]] = {"fedprune": [], "bare": []}
    for repeat in range(args.repeats):
        order = [("fedprune", fedprune_round), ("bare", bare_round)]
        if repeat % 2:
            order.reverse()  # alternate who goes first
        for name, fn in order:
            start = time.process_time()
            fn(sim if name == "fedprune" else run, state, 1, clients)  # type: ignore[operator]
            times[name].append(time.process_time() - start)
    ratios = [f / b for f, b in zip(times["fedprune"], times["bare"], strict=True)]
    print(f"model {args.model}, FedAvg, {len(clients)} clients per round, {args.repeats} "
          f"interleaved rounds, {args.threads} thread(s); largest weight difference {diff:.2e}")
    for name, ts in times.items():
        print(f"  {name:9s} median {statistics.median(ts):7.3f} CPU s per round")
    print(f"  ratio fedprune / bare round: median {statistics.median(ratios):.3f}, "
          f"min {min(ratios):.3f}, max {max(ratios):.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
