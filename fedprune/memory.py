"""Measured training memory: sparse parameter storage, saved activations, process peak.

The training footprint of a client in this line of work is the model's parameters in a sparse
storage format plus the activations autograd keeps for backward. Both are measured here on the real
tensors rather than estimated from layer shapes, so that anything a method changes (a compressor, a
different normalisation, an in-place activation) shows up in the numbers:

- :func:`params_bytes` stores each masked parameter in its cheapest format (:func:`storage_bytes`).
- :class:`SavedTensorMeter` counts what autograd saves for backward. The rule: **everything kept
  for backward is counted**, either by the meter's pack hook (``ctx.save_for_backward`` and every
  built-in op) or, for anything a custom ``autograd.Function`` keeps elsewhere (attributes on
  ``ctx``, closures), by the function calling :func:`account_saved` on it. A component that installs
  its own ``saved_tensors_hooks`` hides the tensors saved inside it from the meter (torch only runs
  the innermost pair), so it must call :func:`account_saved` on what its pack hook keeps.
- :class:`PeakRSS` and, on CUDA, the allocator's peak give the physical side: saved bytes are not
  the peak, because forward materialises each full activation briefly and backward rebuilds inputs.

:func:`measure_training_step` runs one SGD step under all of them and returns a
:class:`MemoryReport`. Building a method's client model to measure is the engine's business
(`fedprune.engine.prepare`); this module only measures.
"""

from __future__ import annotations

import contextvars
import ctypes
import dataclasses
import gc
import os
import sys
import threading
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef

from fedprune.formats import format_bytes, storage_bytes

__all__ = [
    "MemoryReport",
    "PeakRSS",
    "SavedTensorMeter",
    "account_saved",
    "measure_training_step",
    "params_bytes",
    "tensor_bytes",
]

def params_bytes(model: nn.Module, masks: Mapping[str, Tensor] | None = None) -> int:
    """Bytes of every parameter and buffer, masked parameters in their cheapest sparse format.

    ``masks`` maps names from ``model.named_parameters()`` to boolean masks of the parameter's
    shape; the kept count is the mask's, since positions grown at zero are stored too. Unmasked
    parameters and all buffers (BatchNorm statistics) are counted dense at their own dtype.
    """
    masks = dict(masks or {})
    named = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(named))
    if unknown:
        raise KeyError(f"masks name parameters the model does not have: {unknown}")
    total = 0
    for name, param in named.items():
        bits = param.element_size() * 8
        mask = masks.get(name)
        if mask is None:
            total += format_bytes("dense", param.numel(), param.numel(), param.shape, bits)
            continue
        if mask.shape != param.shape:
            raise ValueError(
                f"mask {name!r} has shape {tuple(mask.shape)}, parameter has {tuple(param.shape)}"
            )
        nnz = int(torch.count_nonzero(mask))
        total += storage_bytes(param.numel(), nnz, tuple(param.shape), bits)[1]
    total += sum(b.numel() * b.element_size() for _, b in model.named_buffers())
    return total


def tensor_bytes(tensor: Tensor) -> int:
    """Bytes held by a tensor: its whole storage for strided tensors (a view keeps all of it
    alive), the component arrays for sparse layouts."""
    if tensor.layout == torch.strided:
        try:
            return tensor.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage
            return tensor.numel() * tensor.element_size()
    if tensor.layout == torch.sparse_coo:
        return tensor_bytes(tensor._indices()) + tensor_bytes(tensor._values())
    if tensor.layout in (torch.sparse_csr, torch.sparse_bsr):
        return sum(
            map(tensor_bytes, (tensor.crow_indices(), tensor.col_indices(), tensor.values()))
        )
    if tensor.layout in (torch.sparse_csc, torch.sparse_bsc):
        return sum(
            map(tensor_bytes, (tensor.ccol_indices(), tensor.row_indices(), tensor.values()))
        )
    return tensor.numel() * tensor.element_size()


def _storage_key(tensor: Tensor) -> tuple[str, int] | None:
    """(device, data pointer) of a strided tensor's storage; None if it has no real storage."""
    if tensor.layout != torch.strided:
        return None
    try:
        ptr = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    return (str(tensor.device), ptr) if ptr != 0 else None


# Innermost-last stack of active meters, per thread and per context (a fresh thread starts empty,
# like torch's own thread-local saved-tensor hooks).
_ACTIVE: contextvars.ContextVar[tuple[SavedTensorMeter, ...]] = contextvars.ContextVar(
    "fedprune_saved_tensor_meters", default=()
)


class SavedTensorMeter:
    """Count bytes of tensors autograd saves for backward while the context is active.

    Each storage is counted once, at its full ``nbytes``: several saved views of one storage (a
    tensor saved by two ops, a slice, an in-place result) hold that memory once, and a view keeps
    the whole storage alive however small it is. A storage is recognised while it is alive (weak
    reference), so an address reused after a free counts again. Storages of ``exclude``'s
    parameters and buffers, and of ``exclude_tensors`` (the masks: model state that a layer may
    save but did not allocate), are not counted: they are the model, counted by
    :func:`params_bytes`; tensors derived from them (a standardised weight, a masked copy) are
    counted.

    Sparse tensors count their component arrays (indices, values). Tensors kept outside
    ``save_for_backward`` must be reported with :func:`account_saved`. The pack hook returns the
    tensor itself, so training is unaffected. The hooks are removed on exit, also on error.
    """

    def __init__(
        self, exclude: nn.Module | None = None, exclude_tensors: Iterable[Tensor] = ()
    ) -> None:
        self.exclude = exclude
        self.exclude_tensors = list(exclude_tensors)
        self.bytes = 0
        self.count = 0
        self._seen: dict[tuple[str, int], StorageWeakRef] = {}
        self._excluded: set[tuple[str, int]] = set()
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None
        self._token: contextvars.Token | None = None
        self._state: list[Tensor] = []

    def add(self, tensor: Tensor) -> None:
        """Count ``tensor`` unless its storage is already counted or belongs to the model."""
        if not isinstance(tensor, Tensor):
            return
        key = _storage_key(tensor)
        if key is None:
            self.bytes += tensor_bytes(tensor)
            self.count += 1
            return
        if key in self._excluded:
            return
        ref = self._seen.get(key)
        if ref is not None and not ref.expired():
            return
        self._seen[key] = StorageWeakRef(tensor.untyped_storage())
        self.bytes += tensor_bytes(tensor)
        self.count += 1

    def _pack(self, tensor: Tensor) -> Tensor:
        self.add(tensor)
        return tensor

    @staticmethod
    def _unpack(tensor: Tensor) -> Tensor:
        return tensor

    def __enter__(self) -> SavedTensorMeter:
        # Strong references keep the excluded storages (and so their addresses) alive.
        self._state = list(self.exclude_tensors)
        if self.exclude is not None:
            self._state += [*self.exclude.parameters(), *self.exclude.buffers()]
        self._excluded = {k for k in map(_storage_key, self._state) if k is not None}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        self._token = _ACTIVE.set((*_ACTIVE.get(), self))
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._token is not None:
                _ACTIVE.reset(self._token)
        finally:
            self._token = None
            hooks, self._hooks = self._hooks, None
            self._state = []
            self._seen.clear()
            if hooks is not None:
                hooks.__exit__(*exc_info)


def account_saved(tensor: Tensor) -> None:
    """Report a tensor kept for backward outside ``save_for_backward`` (e.g. on ``ctx``).

    Adds it to the innermost active :class:`SavedTensorMeter`, with the same deduplication and
    exclusions as the pack hook; does nothing when no meter is active.
    """
    meters = _ACTIVE.get()
    if meters:
        meters[-1].add(tensor)


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _current_rss() -> int | None:
    """Resident set size of this process in bytes, or None where /proc is unavailable."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


def _max_rss() -> int:
    """Lifetime peak RSS in bytes from ``resource`` (kilobytes on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _release_free_heap() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``) so entry RSS is not inflated
    by memory cached from earlier work; a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: glibc's, no lookup
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak process RSS during the block minus RSS at entry, sampled every ``interval`` seconds.

    A physical complement to :class:`SavedTensorMeter`'s deterministic count: it sees transient
    full-size activations, gradients, workspace and everything else the process touches. It is
    noisy: allocators keep freed memory (so earlier work can hide a later peak), sampling can miss
    peaks shorter than the interval, and other threads' allocations count too. On Linux RSS is
    read from ``/proc/self/statm``; elsewhere only ``resource``'s lifetime peak is available, so
    the delta is zero unless the block sets a new lifetime peak.

    Attributes after exit: ``entry_bytes``, ``peak_bytes`` and ``delta_bytes``.
    """

    def __init__(self, interval: float = 1e-3) -> None:
        self.interval = interval
        self.entry_bytes = 0
        self.peak_bytes = 0
        self.delta_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc = _current_rss() is not None

    def _sample(self) -> int:
        rss = _current_rss() if self._proc else None
        return rss if rss is not None else _max_rss()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self._sample())

    def __enter__(self) -> PeakRSS:
        self.entry_bytes = self.peak_bytes = self._sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fedprune-peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.peak_bytes = max(self.peak_bytes, self._sample())
        self.delta_bytes = self.peak_bytes - self.entry_bytes


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Memory of one training step; all values in bytes.

    ``total_bytes`` is the footprint this line of work reports: sparse parameters plus saved
    activations. Gradients and optimizer state are listed separately, dense as torch keeps them.
    ``cuda_peak_bytes`` is the CUDA allocator's absolute peak over the step (parameters and inputs
    included), None on the CPU.
    """

    params_bytes: int
    activation_bytes: int
    total_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    peak_rss_delta_bytes: int
    cuda_peak_bytes: int | None

    def as_dict(self) -> dict[str, int | None]:
        return dataclasses.asdict(self)


def measure_training_step(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    masks: Mapping[str, Tensor] | None = None,
    lr: float = 0.01,
    momentum: float = 0.9,
) -> MemoryReport:
    """Measure one SGD step (forward, cross-entropy, backward, step) of ``model`` in train mode.

    The saved-tensor count covers forward and backward and is deterministic. RSS is measured over
    the whole step after releasing freed heap memory; no warm-up step is run, because a warm-up
    leaves freed activations cached by the allocator and the measured step then reuses them
    without growing RSS, which hides most of the peak. ``masks`` are model state, counted in
    ``params_bytes`` in their sparse format: a layer that saves its mask for backward (NSConv)
    adds no memory, so the mask tensors are excluded from the saved-tensor count. The same mask
    objects must be the ones the model's layers use. The model is left as it was: parameters,
    buffers, gradients and train/eval mode are restored afterwards, so this can probe a model in
    the middle of training. No hooks stay installed.
    """
    param_bytes = params_bytes(model, masks)  # first, so a bad mask fails before any work
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        saved_state = [t.detach().clone() for t in (*model.parameters(), *model.buffers())]
    saved_grads = [p.grad for p in model.parameters()]
    was_training = model.training
    on_cuda = inputs.is_cuda

    try:
        for p in model.parameters():
            p.grad = None
        model.train()
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
        gc.collect(1)  # young garbage only: a full collection costs ~0.15 s after torch imports
        _release_free_heap()
        if on_cuda:
            torch.cuda.synchronize(inputs.device)
            torch.cuda.reset_peak_memory_stats(inputs.device)
        with PeakRSS() as rss:
            with SavedTensorMeter(model, (masks or {}).values()) as meter:
                loss = nn.functional.cross_entropy(model(inputs), targets)
                loss.backward()
            optimizer.step()
            if on_cuda:
                torch.cuda.synchronize(inputs.device)
        cuda_peak = torch.cuda.max_memory_allocated(inputs.device) if on_cuda else None
        del loss
        grad_bytes = sum(tensor_bytes(p.grad) for p in params if p.grad is not None)
        optimizer_bytes = sum(
            tensor_bytes(v)
            for state in optimizer.state.values()
            for v in state.values()
            if isinstance(v, Tensor)
        )
    finally:
        with torch.no_grad():
            for t, old in zip((*model.parameters(), *model.buffers()), saved_state, strict=True):
                t.copy_(old)
        for p, g in zip(model.parameters(), saved_grads, strict=True):
            p.grad = g
        model.train(was_training)

    return MemoryReport(
        params_bytes=param_bytes,
        activation_bytes=meter.bytes,
        total_bytes=param_bytes + meter.bytes,
        grad_bytes=grad_bytes,
        optimizer_bytes=optimizer_bytes,
        peak_rss_delta_bytes=rss.delta_bytes,
        cuda_peak_bytes=cuda_peak,
    )
