"""fedprune's local training against a bare PyTorch loop doing the same SGD steps.

Both train the same model from the same state on the same pre-gathered batches, interleaved in
one process (the machine is noisy: only the ratio means anything). The bare loop is the
minimum any framework must do: forward, cross-entropy, zero_grad, backward, step. fedprune's
loop adds loading the global state, building the optimizer and gathering batches, so the bare
loop is given the batch gathering too (identical calls) to compare training, not data access.

    python benchmarks/overhead.py [--repeats 15] [--steps 50] [--threads 1] [--model cnn]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from fedprune.engine.build import build_base_model, build_parts
from fedprune.engine.client import LocalTrainer, batches
from fedprune.engine.config import RunConfig
from fedprune.plugins import get_plugin_manager
from fedprune.seeding import torch_generator


def bare_loop(model, data, indices, state, config, generator) -> None:
    model.load_state_dict(state)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    for index in batches(indices, config.batch_size, config.local_steps, generator):
        x, y = data.batch(index, train=True, generator=generator)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="cnn")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pm = get_plugin_manager()
    config = RunConfig(model=args.model, local_steps=args.steps)
    data = pm.registry.get(config.dataset, "dataset").build(root=None)
    model = build_base_model(pm.registry, config, data.num_classes, data.input_shape, 0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = LocalTrainer(model, build_parts(pm.registry, pm.registry.method("fedavg"), config),
                           config)
    indices = np.arange(len(data.train))

    def fedprune_run(seed):
        trainer.train(0, data.train, indices, state, None, {}, 1, torch_generator(seed, "d"))

    def bare_run(seed):
        bare_loop(model, data.train, indices, state, config, torch_generator(seed, "d"))

    # Same computation: identical weights after one run of each.
    fedprune_run(0)
    after_fedprune = {k: v.clone() for k, v in model.state_dict().items()}
    bare_run(0)
    same = all(torch.equal(after_fedprune[k], v) for k, v in model.state_dict().items())

    times: dict[str, list[float]] = {"fedprune": [], "bare": []}
    for repeat in range(args.repeats):
        order = [("fedprune", fedprune_run), ("bare", bare_run)]
        if repeat % 2:
            order.reverse()  # alternate who goes first
        for name, fn in order:
            start = time.perf_counter()
            fn(repeat)
            times[name].append(time.perf_counter() - start)
    ratios = [f / b for f, b in zip(times["fedprune"], times["bare"], strict=True)]
    print(f"model {args.model}, {args.steps} steps x {args.repeats} repeats, "
          f"{args.threads} thread(s); identical weights: {same}")
    for name, ts in times.items():
        print(f"  {name:9s} median {statistics.median(ts) * 1e3:8.1f} ms per client")
    print(f"  ratio fedprune / bare: median {statistics.median(ratios):.3f}, "
          f"min {min(ratios):.3f}, max {max(ratios):.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
