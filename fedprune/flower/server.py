"""The server side: fedprune's round loop inside a Flower ServerApp.

`FlowerClients` is the `ClientExecutor` the loop talks to: it sends each sampled client a message
(the client's node: partition ``client % P``, found by `handshake`) and yields the replies in
client order as they arrive. A reply that arrives early waits in a reorder buffer; at most
``window`` messages are out at once (sent or buffered), so the server holds at most ``window``
replies whatever the number of clients per round, and folds them one by one. A node gets one
message at a time: its state (kept client states) is updated message by message.

`bench_on_grid` runs a whole bench (`fedprune.bench.run_bench`) with it and records each run's
final global state digest in ``OUT/flower.json``; ``server_app`` does that for ``flwr run``,
reading the bench from the run config (see ``app/pyproject.toml``).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from torch import Tensor

from fedprune.bench import BENCH_FILE, BenchPlan, Output, run_bench, run_key
from fedprune.contracts import Payload, RoundPlan
from fedprune.engine.client import ClientUpdate, LocalTrainer
from fedprune.engine.config import RunConfig, cli_name, config_fields
from fedprune.errors import FedpruneError
from fedprune.flower.messages import (
    HELLO,
    PAYLOAD,
    REPLY,
    RUN,
    STATE,
    TASK,
    TASK_QUERY,
    RunSpec,
    array_bytes,
    decode_update,
    fields,
    message_bytes,
    pack_state,
    plan_to_json,
    tensors,
    to_record,
)
from fedprune.options import option_grid, parse_options, split_sweep
from fedprune.plugins import GROUP, PluginManager
from fedprune.registry import Method, Registry

FLOWER_FILE = "flower.json"


# ------------------------------------------------------------------------------ the exchange


@dataclass
class Request:
    client: int
    node: int
    message: Message


class Stopped(KeyboardInterrupt):
    """The exchange was asked to stop (the bench records the run in flight as interrupted)."""


def exchange(
    grid: Grid, requests: Sequence[Request], *, window: int, poll: float = 0.02,
    timeout: float = 3600.0, stop: threading.Event | None = None, stats: dict | None = None,
) -> Iterator[tuple[int, Message]]:
    """Send ``requests`` and yield ``(client, reply)`` in their order, each as soon as it and
    every earlier one are in. At most ``window`` requests are out (sent or buffered) and at most
    one per node. A reply with an error raises `FedpruneError`; no reply for ``timeout`` seconds
    raises `TimeoutError`."""
    pending = list(enumerate(requests))
    sent: dict[str, tuple[int, int]] = {}  # message id -> (index, node)
    ready: dict[int, Message] = {}
    busy: set[int] = set()
    position, last = 0, time.monotonic()
    while position < len(requests):
        room = window - len(sent) - len(ready)
        batch: list[tuple[int, Request]] = []
        for item in pending:
            if len(batch) >= room:
                break
            if item[1].node not in busy:
                batch.append(item)
                busy.add(item[1].node)
        if batch:
            pending = [item for item in pending if item not in batch]
            ids = list(grid.push_messages([r.message for _, r in batch]))
            if len(ids) != len(batch) or not all(ids):
                raise FedpruneError(f"Flower refused messages for clients "
                                    f"{[r.client for _, r in batch]} (too large for a proxy?)")
            sent.update({mid: (i, r.node) for mid, (i, r) in zip(ids, batch, strict=True)})
        replies = list(grid.pull_messages(list(sent))) if sent else []
        for reply in replies:
            index, node = sent.pop(reply.metadata.reply_to_message_id)
            busy.discard(node)
            if reply.has_error():
                raise FedpruneError(f"client {requests[index].client} on node {node} failed: "
                                    f"{reply.error.reason}")
            ready[index] = reply
        if stats is not None:
            stats["held"] = max(stats.get("held", 0), len(ready))
        while position in ready:
            yield requests[position].client, ready.pop(position)
            position += 1
        if replies:
            last = time.monotonic()
        elif position < len(requests):
            if stop is not None and stop.is_set():
                raise Stopped()
            if time.monotonic() - last > timeout:
                waiting = sorted(requests[i].client for i, _ in sent.values())
                raise TimeoutError(f"no reply from clients {waiting} for {timeout:g} s")
            time.sleep(poll)


def handshake(grid: Grid, min_nodes: int = 1, wait: float = 120.0,
              poll: float = 0.02) -> list[int]:
    """Node ids by data partition: each node says its ``partition-id`` of ``num-partitions``
    (its node config); partitions must be exactly 0..P-1, one node each."""
    start = time.monotonic()
    while len(nodes := sorted(grid.get_node_ids())) < min_nodes:
        if time.monotonic() - start > wait:
            raise FedpruneError(f"{len(nodes)} of {min_nodes} nodes connected after {wait:g} s")
        time.sleep(0.5)
    requests = [Request(i, node, Message(RecordDict({TASK: ConfigRecord({})}), dst_node_id=node,
                                         message_type=f"{MessageType.QUERY}.{HELLO}"))
                for i, node in enumerate(nodes)]
    found = {}
    for i, reply in exchange(grid, requests, window=len(requests), poll=poll, timeout=wait):
        info = fields(reply, REPLY)
        found[nodes[i]] = (int(info["partition-id"]), int(info["num-partitions"]))
    partitions = sorted(p for p, _ in found.values())
    totals = {n for _, n in found.values()}
    if len(totals) != 1 or partitions != list(range(totals.pop())):
        raise FedpruneError(
            "nodes must hold partitions 0..P-1 of the same P, one each (node config "
            f"partition-id and num-partitions); found {sorted(found.values())}")
    return [node for node, _ in sorted(found.items(), key=lambda item: item[1])]


# ------------------------------------------------------------------------------ the executor


class FlowerClients:
    """A `fedprune.engine.client.ClientExecutor` whose clients run on Flower nodes.

    ``nodes[p]`` holds partition p; client c runs on node ``c % len(nodes)``. ``stats`` lists,
    per exchange, the message bytes (arrays only) and the most replies held at once.
    """

    def __init__(
        self, grid: Grid, nodes: Sequence[int], trainer: LocalTrainer, spec: RunSpec, *,
        window: int = 0, poll: float = 0.02, timeout: float = 3600.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.grid, self.nodes, self.trainer, self.spec = grid, list(nodes), trainer, spec
        self.window = window or len(self.nodes)
        self.poll, self.timeout, self.stop = poll, timeout, stop
        self.run = spec.record()
        self.stats: list[dict[str, Any]] = []

    def _requests(
        self, kind: str, clients: list[int], state: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None, fields: dict[str, Any], payload: Payload,
    ) -> tuple[list[Request], dict[str, Any]]:
        arrays = to_record(pack_state(state, masks, positions=True))  # one record, every client
        extra = to_record(payload)
        names = json.dumps(sorted(masks) if masks is not None else None)
        requests = []
        for client in sorted(clients):
            task = ConfigRecord({"client": client, "masks": names, **fields})
            content = RecordDict({RUN: self.run, TASK: task, STATE: arrays, PAYLOAD: extra})
            node = self.nodes[client % len(self.nodes)]
            requests.append(Request(client, node, Message(content, dst_node_id=node,
                                                          message_type=kind)))
        stats = {"kind": kind, "clients": len(requests), "held": 0, "up_bytes": 0,
                 "down_bytes": array_bytes(arrays) + array_bytes(extra)}
        self.stats.append(stats)
        return requests, stats

    def _exchange(self, requests: list[Request], stats: dict) -> Iterator[tuple[int, Message]]:
        return exchange(self.grid, requests, window=self.window, poll=self.poll,
                        timeout=self.timeout, stop=self.stop, stats=stats)

    def _device(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(self.trainer.device) for k, v in tensors.items()}

    def train(
        self, round: int, clients: list[int], state: dict[str, Tensor],
        masks: dict[str, Tensor] | None, plan: RoundPlan, lr: float,
    ) -> Iterator[ClientUpdate]:
        extra = {"round": round, "lr": lr, "plan": plan_to_json(plan)}
        requests, stats = self._requests(MessageType.TRAIN, clients, state, masks, extra, {})
        stats["round"] = round
        for client, reply in self._exchange(requests, stats):
            stats["up_bytes"] += message_bytes(reply, STATE, PAYLOAD)
            update = decode_update(reply, state, masks)
            assert update.client == client, f"reply of client {update.client} for {client}"
            update.state, update.payload = self._device(update.state), self._device(update.payload)
            if update.masks is not None:
                update.masks = self._device(update.masks)
            yield update

    def task(
        self, name: str, clients: list[int], state: dict[str, Tensor],
        masks: dict[str, Tensor] | None, payload: Payload,
    ) -> Iterator[tuple[int, int, Payload]]:
        kind = f"{MessageType.QUERY}.{TASK_QUERY}"
        requests, stats = self._requests(kind, clients, state, masks, {"task": name}, payload)
        for client, reply in self._exchange(requests, stats):
            stats["up_bytes"] += message_bytes(reply, PAYLOAD)
            samples = int(fields(reply, REPLY)["samples"])
            yield client, samples, self._device(tensors(reply, PAYLOAD))


# --------------------------------------------------------------------------------- the bench


def plugin_refs(pm: PluginManager) -> tuple[str, ...]:
    """``name=module[:attribute]`` for every plugin a node can import by name: modules, and
    objects installed as entry points. Others (observers, objects made at run time) stay."""
    entry_points = {ep.name: ep.value for ep in metadata.entry_points(group=GROUP)}
    refs = []
    for name, plugin in pm.list_name_plugin():
        if isinstance(plugin, types.ModuleType):
            refs.append(f"{name}={plugin.__name__}")
        elif name in entry_points:
            refs.append(f"{name}={entry_points[name]}")
    return tuple(refs)


def _check_travels(
    registry: Registry, method: Method, config: RunConfig, refs: tuple[str, ...]
) -> None:
    """Every plugin the run's records come from must be importable on the nodes."""
    names = {ref.partition("=")[0] for ref in refs}
    used = [*method.components(), config.dataset, config.model, config.partition]
    records = [registry.find(name) for name in used]
    plugins = {method.plugin, *(r.plugin for r in records if r is not None)} - names - {""}
    if plugins:
        raise FedpruneError(
            f"method {method.name!r} uses plugin(s) {', '.join(sorted(plugins))}, which nodes "
            "cannot import by name: install them as entry points of the 'fedprune' group or "
            "register them as modules")


def state_digest(state: Mapping[str, Tensor]) -> str:
    """sha256 of a model state (names, dtypes, shapes and bytes): equal digests, equal weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def bench_on_grid(
    grid: Grid, nodes: Sequence[int], pm: PluginManager, plan: BenchPlan | None,
    output_dir: Path, *, window: int = 0, threads: int = 0, poll: float = 0.02,
    timeout: float = 3600.0, stop: threading.Event | None = None, **bench: Any,
) -> list[dict[str, Any]]:
    """`fedprune.bench.run_bench` with every client on ``nodes``; ``bench``: its keywords
    (resume, overwrite, provenance, report). Writes ``OUT/flower.json``: each finished run's
    final global state digest and its message statistics."""
    refs = plugin_refs(pm)
    executors: list[FlowerClients] = []

    def executor(trainer: LocalTrainer) -> FlowerClients:
        _check_travels(pm.registry, trainer.parts.method, trainer.config, refs)
        spec = RunSpec(trainer.parts.method.name, trainer.config, trainer.seed, refs, threads)
        clients = FlowerClients(grid, nodes, trainer, spec, window=window, poll=poll,
                                timeout=timeout, stop=stop)
        executors.append(clients)
        return clients

    results = run_bench(pm, plan, output_dir, executor=executor, **bench)
    output = Output(output_dir)
    swept = BenchPlan.from_json(output.read_json(BENCH_FILE)["plan"]).swept()
    ok = {r["key"] for r in results if r.get("status") == "ok"}
    runs = {}
    for clients in executors:
        trainer = clients.trainer
        key = run_key(clients.spec.method, trainer.config, trainer.seed, swept)
        if key in ok:
            runs[key] = {"final_state_sha256": state_digest(trainer.model.state_dict()),
                         "exchanges": clients.stats}
    output.write_json(FLOWER_FILE, {"flwr": metadata.version("flwr"), "nodes": len(nodes),
                                    "window": window or len(nodes), "runs": runs})
    return results


# ------------------------------------------------------------------- the deployable ServerApp

#: Run-config keys besides one per `RunConfig` bench option (dashes for underscores, "" and 0
#: for "not set"); ``app/pyproject.toml`` lists them all with their defaults.
APP_KEYS: dict[str, Any] = {
    "methods": "fedavg", "seeds": "0", "preset": "", "options": "", "output": "",
    "checkpoint-every": 10, "resume": False, "overwrite": False, "report": True,
    "min-nodes": 1, "node-wait": 300.0, "window": 0, "threads": 0, "poll": 0.05,
    "reply-timeout": 3600.0,
}


def app_plan(run_config: Mapping[str, Any]) -> BenchPlan:
    """The bench a run config asks for: a preset's values where a key keeps its default."""
    values = {f.name: run_config.get(cli_name(f.name), f.default) for f in config_fields()}
    for name in ("data_root", "local_steps"):
        values[name] = values[name] or None
    options = [o for o in str(run_config.get("options", "")).split() if o]
    methods, seeds = str(run_config.get("methods", "fedavg")), str(run_config.get("seeds", "0"))
    if run_config.get("preset"):
        from fedprune.presets import load_preset

        defaults = {f.name: f.default for f in config_fields()}
        for key, value in load_preset(str(run_config["preset"])).items():
            if key == "option":
                options = list(value) + options
            elif key == "methods" and methods == APP_KEYS["methods"]:
                methods = value
            elif key == "seeds" and seeds == APP_KEYS["seeds"]:
                seeds = ",".join(map(str, value)) if isinstance(value, list) else value
            elif key in defaults and values[key] == (defaults[key] or None):
                values[key] = value
    densities = [float(d) for d in split_sweep(str(values.pop("density")))]
    grid = tuple(RunConfig(**values, density=density, options=point)
                 for density in densities for point in option_grid(parse_options(options)))
    return BenchPlan(tuple(m.strip() for m in methods.split(",") if m.strip()),
                     tuple(int(s) for s in seeds.split(",") if s.strip()), grid,
                     int(run_config.get("checkpoint-every", 10)))


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run``: the bench of the run config, on the SuperNodes that joined."""
    from fedprune.plugins import get_plugin_manager
    from fedprune.provenance import provenance

    config = {**APP_KEYS, **dict(context.run_config)}
    if not config["output"]:
        raise FedpruneError("set the run config's output to the directory for results.json")
    output = Path(str(config["output"])).expanduser()
    resume = bool(config["resume"])
    plan = None if resume else app_plan(config)
    nodes = handshake(grid, int(config["min-nodes"]), float(config["node-wait"]),
                      float(config["poll"]))
    record = {**provenance(torch.get_num_threads(), ["flwr", "run"]), "engine": "flower"}
    bench_on_grid(grid, nodes, get_plugin_manager(), plan, output,
                  window=int(config["window"]), threads=int(config["threads"]),
                  poll=float(config["poll"]), timeout=float(config["reply-timeout"]),
                  resume=resume, overwrite=bool(config["overwrite"]), provenance=record,
                  report=bool(config["report"]))
