"""The ClientApp: a node trains its clients exactly as the in-process engine does.

From a message's `RunSpec` the node rebuilds the run with `fedprune.engine.prepare` (the same
data split, base model, method parts and model, all determined by config and seed), then trains
with `LocalTrainer.train` in the same seeded scope as `InProcessClients`. The rebuilt run is
cached in the process: a Ray actor serves many messages; a SuperNode starts a process per
message (Flower's design), which rebuilds it each time.

What a client's growth criterion keeps between its rounds (`LocalTrainer.client_states`) stays
on the node, in the node's ``context.state``, which Flower keeps between messages.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from torch import Tensor

from fedprune.data.base import DatasetSplits
from fedprune.engine.client import LocalTrainer
from fedprune.engine.prepare import make_federation, prepare
from fedprune.engine.training import seeded
from fedprune.flower.messages import (
    HELLO,
    PAYLOAD,
    REPLY,
    RUN,
    STATE,
    TASK,
    TASK_QUERY,
    RunSpec,
    encode_update,
    fields,
    from_record,
    plan_from_json,
    tensors,
    to_record,
    unpack_masks,
    unpack_state,
)
from fedprune.plugins import PluginManager

_CLIENT_STATE = "fedprune.client-state."
_CLIENT_RUN = "fedprune.client-run"

client_app = ClientApp()


@dataclass
class NodeRun:
    """One run as a node holds it: the trainer and the state's names, shapes and dtypes."""

    spec: RunSpec
    trainer: LocalTrainer
    like: dict[str, Tensor]


_runs: dict[str, NodeRun] = {}  # the latest run only
_datasets: dict[str, DatasetSplits] = {}  # the latest dataset only


@functools.lru_cache(maxsize=4)
def plugin_manager(refs: tuple[str, ...]) -> PluginManager:
    """The server's plugins, from their ``name=module[:attribute]`` references."""
    pm = PluginManager()
    for ref in refs:
        name, _, target = ref.partition("=")
        module, _, attribute = target.partition(":")
        plugin: Any = importlib.import_module(module)
        for part in filter(None, attribute.split(".")):
            plugin = getattr(plugin, part)
        pm.register(plugin, name=name)
    return pm


def node_run(spec: RunSpec, node_config: Mapping[str, Any]) -> NodeRun:
    """The run of ``spec``, rebuilt as `fedprune.bench` builds it (data root: the node's)."""
    cached = _runs.get(spec.id)
    if cached is not None:
        return cached
    config = spec.config
    if node_config.get("data-root"):
        config = dataclasses.replace(config, data_root=str(node_config["data-root"]))
    registry = plugin_manager(spec.plugins).registry
    key = json.dumps([config.dataset, config.data_root, config.component_options(config.dataset)],
                     sort_keys=True)
    if key not in _datasets:
        _datasets.clear()
        _datasets[key] = registry.get(config.dataset, "dataset").build(
            root=config.data_root, **config.component_options(config.dataset))
    federation = make_federation(registry, config, spec.seed, _datasets[key])
    run = prepare(registry, registry.method(spec.method), federation, setup=False)
    _runs.clear()
    _runs[spec.id] = NodeRun(spec, run.trainer, dict(run.model.state_dict()))
    return _runs[spec.id]


def _request(message: Message, context: Context) -> tuple[NodeRun, dict[str, Any], Any, Any]:
    """The node's run, the task's fields, the decoded global state and masks."""
    spec = RunSpec.from_record(message.content.config_records[RUN])
    if spec.threads:
        torch.set_num_threads(spec.threads)
    run = node_run(spec, context.node_config)
    task = fields(message, TASK)
    arrays = tensors(message, STATE)
    names = json.loads(str(task["masks"]))
    device = run.trainer.device
    masks = None if names is None else {
        n: m.to(device) for n, m in unpack_masks(arrays, run.like, names).items()}
    return run, task, unpack_state(arrays, run.like, masks), masks


@client_app.query(HELLO)
def hello(message: Message, context: Context) -> Message:
    """The handshake: which data partition this node holds."""
    node = context.node_config
    reply = ConfigRecord({"partition-id": int(node.get("partition-id", -1)),
                          "num-partitions": int(node.get("num-partitions", 0))})
    return Message(RecordDict({REPLY: reply}), reply_to=message)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """One client's round (`LocalTrainer.train`), replied as compactly as fedprune counts it."""
    run, task, state, masks = _request(message, context)
    trainer, seed = run.trainer, run.spec.seed
    client, round_ = int(task["client"]), int(task["round"])
    _load_client_state(trainer, context, run.spec.id, client)
    with seeded(seed, "client", round_, client, device=trainer.device):
        update = trainer.train(client, state, masks, plan_from_json(str(task["plan"])),
                               float(task["lr"]))
    _keep_client_state(trainer, context, client)
    return Message(encode_update(update, masks), reply_to=message)


@client_app.query(TASK_QUERY)
def task(message: Message, context: Context) -> Message:
    """A strategy's client task (`LocalTrainer.task`) in `InProcessClients`' seeded scope."""
    run, task, state, masks = _request(message, context)
    trainer, name, client = run.trainer, str(task["task"]), int(task["client"])
    payload = tensors(message, PAYLOAD)
    with seeded(run.spec.seed, "task", name, client, device=trainer.device):
        reply = trainer.task(name, client, state, masks, payload)
    samples = len(trainer.client_indices[client])
    return Message(RecordDict({
        REPLY: ConfigRecord({"client": client, "samples": samples}),
        PAYLOAD: to_record(reply),
    }), reply_to=message)


def _load_client_state(trainer: LocalTrainer, context: Context, run: str, client: int) -> None:
    """Put the client's kept state where the trainer looks for it; forget other runs' states."""
    state = context.state
    previous = state.config_records.get(_CLIENT_RUN)
    if previous is None or previous["id"] != run:
        for key in [k for k in state if k.startswith(_CLIENT_STATE)]:
            del state[key]
        state[_CLIENT_RUN] = ConfigRecord({"id": run})
    trainer.client_states = {}
    kept = state.array_records.get(f"{_CLIENT_STATE}{client}")
    if kept is not None:
        trainer.client_states[client] = from_record(kept)


def _keep_client_state(trainer: LocalTrainer, context: Context, client: int) -> None:
    key = f"{_CLIENT_STATE}{client}"
    kept = trainer.client_states.pop(client, None)
    if kept:
        context.state[key] = to_record(kept)
    elif key in context.state:
        del context.state[key]
