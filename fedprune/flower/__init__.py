"""fedprune on Flower: the same round loop, with clients on Flower nodes.

The server runs fedprune's own loop (`fedprune.bench.run_bench`) inside a Flower ServerApp and
hands it `server.FlowerClients`, a `ClientExecutor` that sends each sampled client a message and
yields the replies in client order. Each node runs `client.client_app`, which rebuilds the run
from the message (config, method, seed) exactly as the in-process engine builds it, so a run
gives the same result in process, in Flower's simulation (`simulation.run_bench`) and on real
SuperNodes (the deployable app in ``app/``, see docs/distributed.md).

Modules: `messages` (records on the wire), `server` (executor, handshake, ServerApp), `client`
(ClientApp), `simulation` (a bench on Ray actors). All of them need ``flwr`` (``pip install
fedprune[flower]``); importing this package does not.
"""

from __future__ import annotations

from pathlib import Path

#: The deployable Flower app (``flwr run`` takes this directory).
APP_DIR = Path(__file__).resolve().parent / "app"

__all__ = ["APP_DIR"]
