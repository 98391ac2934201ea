"""What travels between the server and the nodes: fedprune's compact encoding in Flower records.

A request (``train`` or ``query.task``) is a `RecordDict` of

* ``fedprune.run`` (`ConfigRecord`): the `RunSpec`, from which a node rebuilds the run; the same
  record in every message of a run, so Flower's content-addressed transport stores it once;
* ``fedprune.task`` (`ConfigRecord`): client id, round, learning rate, the `RoundPlan` as JSON,
  the masked layers (JSON list, ``null`` for a dense method), the task's name for a query;
* ``state`` (`ArrayRecord`): the global state as `pack_state` encodes it with positions (values
  at mask positions plus a packed bitmap or int32 indices: `fedprune.comm.encode_state`), so the
  node learns the masks from the positions; shared by every message of a round;
* ``payload`` (`ArrayRecord`): a query's payload.

A reply is ``fedprune.reply`` (client, samples, steps, loss, whether the masks changed),
``state`` (values only at the global mask's positions, or with positions when the client changed
its masks: what `fedprune.engine.simulation.Simulation` counts as uploaded bytes), ``payload``
and ``metrics`` (`MetricRecord`).

Arrays keep dtype and shape (``np.save`` without pickle); bfloat16, which numpy lacks, travels
as its int16 bits under ``name#bfloat16``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from torch import Tensor

from fedprune import comm
from fedprune.contracts import RoundPlan
from fedprune.engine.client import ClientUpdate
from fedprune.engine.config import RunConfig
from fedprune.ops.bits import pack_bits, unpack_bits

RUN, TASK, REPLY = "fedprune.run", "fedprune.task", "fedprune.reply"
HELLO = "hello"  # query.hello: the handshake
TASK_QUERY = "task"  # query.task: a strategy's client task
STATE, PAYLOAD, METRICS = "state", "payload", "metrics"
_BF16 = "#bfloat16"


# ------------------------------------------------------------------------------------ arrays


def to_record(tensors: Mapping[str, Tensor]) -> ArrayRecord:
    """Named tensors as an `ArrayRecord` (moved to the CPU, dtype and shape kept)."""
    arrays = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            name, tensor = name + _BF16, tensor.view(torch.int16)
        arrays[name] = Array(tensor.contiguous().numpy())
    return ArrayRecord(arrays)


def from_record(record: ArrayRecord) -> dict[str, Tensor]:
    """The tensors of `to_record`."""
    out = {}
    for name, array in record.items():
        data = array.numpy()
        tensor = torch.from_numpy(data if data.flags.writeable else data.copy())
        if name.endswith(_BF16):
            name, tensor = name[: -len(_BF16)], tensor.view(torch.bfloat16)
        out[name] = tensor
    return out


def array_bytes(record: ArrayRecord) -> int:
    """The arrays' own bytes (values, positions), without Flower's per-array header."""
    return sum(array.numpy().nbytes for array in record.values())


def fields(message: Message, key: str) -> dict[str, Any]:
    """A message's config record ``key`` as a plain dict."""
    return dict(message.content.config_records[key])


def tensors(message: Message, key: str) -> dict[str, Tensor]:
    """A message's array record ``key`` as tensors."""
    return from_record(message.content.array_records[key])


def message_bytes(message: Message, *keys: str) -> int:
    """`array_bytes` of the message's array records ``keys``."""
    return sum(array_bytes(message.content.array_records[key]) for key in keys)


# ------------------------------------------------------------------------------------ states


def pack_state(
    state: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None, positions: bool
) -> dict[str, Tensor]:
    """A state's message arrays: `fedprune.comm.encode_state`.

    With ``positions`` the receiver learns the masks from the message. Where a masked tensor
    travels dense (cheaper at high density) or holds values outside its mask (the dense state a
    strategy's setup sends), its mask goes along as a packed bitmap (``name/mask``), empty when
    the mask is full (a layer left dense): the bytes fedprune counts, plus a bitmap only for a
    layer between 31/32 density and full.
    """
    if not positions or not masks:
        return comm.encode_state(state, masks, positions)
    compact = {n: m for n, m in masks.items() if not bool(state[n].masked_select(~m).any())}
    arrays = comm.encode_state(state, compact, positions=True)
    for name, mask in masks.items():
        if name in arrays:
            full = name in compact and bool(mask.all())
            arrays[f"{name}/mask"] = pack_bits(mask)[:0] if full else pack_bits(mask)
    return arrays


def unpack_masks(
    arrays: Mapping[str, Tensor], like: Mapping[str, Tensor], names: list[str]
) -> dict[str, Tensor]:
    """The masks of layers ``names`` from the positions `pack_state` sent."""
    masks = {}
    for name in names:
        numel, shape = like[name].numel(), like[name].shape
        bits = arrays.get(f"{name}/mask", arrays.get(f"{name}/bitmap"))
        if bits is not None:
            masks[name] = (unpack_bits(bits, numel).view(shape) if bits.numel()
                           else torch.ones(shape, dtype=torch.bool))
        else:
            flat = torch.zeros(numel, dtype=torch.bool)
            flat[arrays[f"{name}/index"].long()] = True
            masks[name] = flat.view(shape)
    return masks


def unpack_state(
    arrays: Mapping[str, Tensor], like: Mapping[str, Tensor],
    masks: Mapping[str, Tensor] | None,
) -> dict[str, Tensor]:
    """The state `pack_state` encoded (``masks``: the receiver's, for values-only tensors)."""
    return comm.decode_state(arrays, like, masks)


def encode_update(update: ClientUpdate, masks: Mapping[str, Tensor] | None) -> RecordDict:
    """A train reply: the weights as values at the global ``masks``' positions, or with
    positions when the client changed its masks; the payload and metrics as they are."""
    changed = update.masks is not None
    arrays = pack_state(update.state, update.masks if changed else masks, positions=changed)
    info = ConfigRecord({"client": update.client, "samples": update.samples,
                         "steps": update.steps, "loss": update.loss, "masks-changed": changed})
    return RecordDict({
        REPLY: info, STATE: to_record(arrays), PAYLOAD: to_record(update.payload),
        METRICS: MetricRecord({k: float(v) for k, v in update.metrics.items()}),
    })


def decode_update(
    message: Message, state: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None
) -> ClientUpdate:
    """The `ClientUpdate` of a train reply (on the CPU); ``state`` and ``masks``: global."""
    info, arrays = fields(message, REPLY), tensors(message, STATE)
    own = unpack_masks(arrays, state, sorted(masks or {})) if info["masks-changed"] else None
    weights = unpack_state(arrays, state, own if own is not None else masks)
    reported: dict[str, Any] = dict(message.content.metric_records[METRICS])
    return ClientUpdate(int(info["client"]), int(info["samples"]), int(info["steps"]),
                        float(info["loss"]), weights, own, tensors(message, PAYLOAD),
                        {k: float(v) for k, v in reported.items()})


# -------------------------------------------------------------------------- runs and rounds


@dataclass(frozen=True)
class RunSpec:
    """What a node rebuilds a run from: the same inputs `fedprune.engine.prepare` gets.

    ``plugins`` are ``name=module[:attribute]`` references, imported on the node in this order
    (the server's plugins that can be imported by name); ``threads`` > 0 sets the node's torch
    threads.
    """

    method: str
    config: RunConfig
    seed: int
    plugins: tuple[str, ...] = ()
    threads: int = 0

    @property
    def id(self) -> str:
        """Identifies the run on a node (what it caches and keeps client state under)."""
        text = json.dumps([self.method, self.config.record(), self.seed, self.plugins],
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def record(self) -> ConfigRecord:
        return ConfigRecord({
            "id": self.id, "method": self.method, "seed": self.seed,
            "config": json.dumps(self.config.record(), sort_keys=True),
            "plugins": json.dumps(list(self.plugins)), "threads": self.threads,
        })

    @classmethod
    def from_record(cls, record: ConfigRecord) -> RunSpec:
        data: dict[str, Any] = dict(record)
        return cls(str(data["method"]), config_from_json(str(data["config"])), int(data["seed"]),
                   tuple(json.loads(str(data["plugins"]))), int(data["threads"]))


def config_from_json(text: str) -> RunConfig:
    """The `RunConfig` of ``RunConfig.record()`` as JSON."""
    data = json.loads(text)
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(**{k: v for k, v in data.items() if k in names})


def plan_to_json(plan: RoundPlan) -> str:
    return json.dumps({"round": plan.round, "counts": dict(plan.counts), "info": dict(plan.info)})


def plan_from_json(text: str) -> RoundPlan:
    data: dict[str, Any] = json.loads(text)
    return RoundPlan(int(data["round"]), data["counts"], data["info"])
