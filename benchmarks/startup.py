"""How long a bench takes from process start to its first round, against importing torch.

Three commands are timed as whole processes, interleaved over ``--repeats`` rounds (wall time:
process start-up is what is measured; only ratios within one run mean anything):

- ``python -c "import torch, torchvision"``: the floor any PyTorch program pays;
- ``fedprune bench --methods fedavg --rounds 1`` on the embedded digits (tracking on, as a user
  runs it; ``--no-tracking`` too), until its round loop (`Simulation.run`) begins: imports,
  plugins, data, partition, model, tracking set-up and the memory measurement;
- ``fedprune --help`` against ``python -c pass``.

Targets: start to first round at most 1.5x the torch import; the memory measurement (part of
the start-up) costs at most one training step (``benchmarks/overhead.py`` times steps).

    python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# The child: fedprune's CLI, noting when the first run's round loop (`Simulation.run`) begins.
CHILD = """
import sys, time
from fedprune.engine.simulation import Simulation
run, clock = Simulation.run, sys.argv[1]
def noted(self, *args, **kw):
    open(clock, "a").write(repr(time.time()) + "\\n")
    return run(self, *args, **kw)
Simulation.run = noted
from fedprune.cli import main
sys.argv = ["fedprune", *sys.argv[2:]]
main()
"""


def wall(command: Sequence[str]) -> float:
    start = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - start


def to_first_round(tracking: bool) -> float:
    """Seconds from process start to the start of the bench's first round."""
    with tempfile.TemporaryDirectory() as tmp:
        clock, out = Path(tmp) / "clock", Path(tmp) / "out"
        args = ["bench", "--methods", "fedavg", "--rounds", "1", "--eval-every", "1",
                "--no-report", "--output", str(out), *([] if tracking else ["--no-tracking"])]
        start = time.time()
        subprocess.run([sys.executable, "-c", CHILD, str(clock), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return float(clock.read_text().split()[0]) - start


def memory_vs_step(repeats: int) -> float:
    """Median over interleaved repeats of the bench's memory measurement (`measure_memory`)
    over one SGD step of the same model on the same batch (wall time, in this process)."""
    import torch
    import torch.nn.functional as F

    from fedprune.data.digits import load_digits
    from fedprune.engine.config import RunConfig
    from fedprune.engine.prepare import make_federation, measure_memory, prepare
    from fedprune.plugins import get_plugin_manager

    pm = get_plugin_manager()
    federation = make_federation(pm.registry, RunConfig(), 0, load_digits())
    run = prepare(pm.registry, pm.registry.method("fedavg"), federation)
    x, y = batch = federation.memory_batch()
    optimizer = torch.optim.SGD(run.model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(run.model(x), y).backward()
        optimizer.step()

    ratios = []
    for repeat in range(repeats + 1):  # repeat 0 warms up
        start = time.perf_counter()
        measure_memory(run, batch)
        middle = time.perf_counter()
        step()
        if repeat:
            ratios.append((middle - start) / (time.perf_counter() - middle))
    return statistics.median(ratios)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    py = sys.executable
    fedprune_cli = [py, "-m", "fedprune"]
    probes = {
        "import torch, torchvision": lambda: wall([py, "-c", "import torch, torchvision"]),
        "bench: start to first round": lambda: to_first_round(True),
        "bench --no-tracking: start to first round": lambda: to_first_round(False),
        "python -c pass": lambda: wall([py, "-c", "pass"]),
        "fedprune --help": lambda: wall([*fedprune_cli, "--help"]),
    }
    times: dict[str, list[float]] = {name: [] for name in probes}
    for repeat in range(args.repeats + 1):  # repeat 0 warms the file cache up
        for name, probe in probes.items():
            seconds = probe()
            if repeat:
                times[name].append(seconds)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"{args.repeats} interleaved repeats, wall time, median seconds")
    for name, value in median.items():
        print(f"  {name:44s} {value:6.2f}")
    torch_import = median["import torch, torchvision"]
    for name in ("bench: start to first round", "bench --no-tracking: start to first round"):
        print(f"ratio {name} / torch import: {median[name] / torch_import:.2f} (target <= 1.5)")
    print(f"ratio memory measurement / one training step (digits CNN, batch 32): "
          f"{memory_vs_step(10 * args.repeats):.2f} (target <= 1)")
    print(f"ratio fedprune --help / python -c pass: "
          f"{median['fedprune --help'] / median['python -c pass']:.2f}")


if __name__ == "__main__":
    main()
