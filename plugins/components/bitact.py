"""1-bit activations: ReLU, ReLU6 and Hardtanh that keep one bit per entry for backward.

The gradient of a clamp is the incoming gradient where the input lay strictly inside the clamp's
range and zero elsewhere, so one bit per entry is all backward needs. torch's own modules keep a
full tensor instead (ReLU its output; in-place ReLU6 a copy of its input), which in ResNet18 and
MobileNetV2 is a large share of the saved activations, and which makes SAP's compressed copy of a
conv input an extra copy rather than the only one. Component ``bitact`` swaps the modules' class in
place (parameters and names untouched) for subclasses whose autograd function saves the mask
packed 8 per byte. Any method can use it (``feddst+bitact``).

Never more memory than torch's modules: where an activation's output is saved in full anyway by
the op that reads it (a plain convolution saves its input, so does max-pooling), a bit mask would
come on top of that copy. `BitAct.calibrate` finds those calls with one probe forward of a copy of
the model, and they then save their output itself, as torch's ReLU does: the same storage as
the reader's copy, no extra byte. The decision is per call, since a module can be called several
times per forward (torchvision's BasicBlock calls its ReLU twice); call counts restart with each
forward of the calibrated model. Calibrate after every compressor that changes what the readers
save is applied (the engine calibrates each compressor right after applying it, so list ``sap``
before ``bitact``).

Results: forward calls torch's own functions, so outputs are torch's bit for bit (NaN included).
Gradients are torch's bit for bit for every input that is not NaN (boundaries 0 and 6, -0.0 and
infinities included). At a NaN input the 1-bit form passes the incoming gradient (NaN lies
"inside" the range, since both comparisons with it are false); torch's ReLU passes it too, but
torch's ReLU6 / Hardtanh backward passes it in its scalar loop and zeroes it in its vectorised
one, so which torch gives depends on the entry's position in the tensor. Calls that save their
output use torch's own backward kernels and so match torch there too.

Only modules are converted: activations called functionally (``F.relu``) in a model's ``forward``
are out of reach of a module transform.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fedprune
from fedprune.ops.bits import pack_bits, unpack_bits
from fedprune.ops.graph import savers

__all__ = ["BitAct", "BitHardtanh", "BitReLU", "BitReLU6"]


class _BitClamp(torch.autograd.Function):
    """relu / hardtanh whose backward needs only the packed "inside the range" bits."""

    @staticmethod
    def forward(ctx, x, lower, upper, inplace):
        # The complement of torch's own test (threshold_backward / hardtanh_backward): NaN is
        # inside the range.
        dead = x <= lower if upper is None else (x <= lower).logical_or_(x >= upper)
        ctx.save_for_backward(pack_bits(dead.logical_not_()))
        ctx.shape = x.shape
        del dead
        if upper is None:
            out = torch.relu_(x) if inplace else torch.relu(x)
        else:
            out = F.hardtanh(x, lower, upper, inplace)
        if inplace:
            ctx.mark_dirty(x)
        return out

    @staticmethod
    def backward(ctx, grad):
        (packed,) = ctx.saved_tensors
        alive = unpack_bits(packed, grad.numel()).view(ctx.shape).view(torch.uint8)
        # grad where alive (1 > 0), exactly 0 elsewhere: torch's own ReLU backward kernel, much
        # faster than masked_fill or where on the CPU.
        return torch.ops.aten.threshold_backward(grad, alive, 0), None, None, None


class _OutputClamp(torch.autograd.Function):
    """hardtanh saving its output (which another op keeps anyway), not a copy of its input."""

    @staticmethod
    def forward(ctx, x, lower, upper, inplace):
        out = F.hardtanh(x, lower, upper, inplace)
        if inplace:
            ctx.mark_dirty(x)
        ctx.save_for_backward(out)
        ctx.lower, ctx.upper = lower, upper
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        # lower < x < upper exactly where lower < hardtanh(x) < upper
        grad_x = torch.ops.aten.hardtanh_backward(grad, out, ctx.lower, ctx.upper)
        return grad_x, None, None, None


class _Bit:
    """Mixin of the 1-bit modules: per-call choice between the bit mask and the output."""

    inplace: bool
    #: Per call of one forward: True where the call saves its output instead of bits.
    share_calls: tuple[bool, ...] = ()
    _calls: int = 0

    def _clamp(self, x: Tensor, lower: float, upper: float | None) -> Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return F.relu(x, self.inplace) if upper is None else F.hardtanh(
                x, lower, upper, self.inplace)
        call = self._calls
        self._calls = call + 1
        if call < len(self.share_calls) and self.share_calls[call]:
            if upper is None:
                return F.relu(x, self.inplace)  # torch's ReLU saves its output
            return _OutputClamp.apply(x, lower, upper, self.inplace)
        return _BitClamp.apply(x, lower, upper, self.inplace)


class BitReLU(_Bit, nn.ReLU):
    """``nn.ReLU`` saving a 1-bit mask for backward."""

    def forward(self, input: Tensor) -> Tensor:
        return self._clamp(input, 0.0, None)


class BitHardtanh(_Bit, nn.Hardtanh):
    """``nn.Hardtanh`` saving a 1-bit mask for backward."""

    def forward(self, input: Tensor) -> Tensor:
        return self._clamp(input, self.min_val, self.max_val)


class BitReLU6(_Bit, nn.ReLU6):
    """``nn.ReLU6`` saving a 1-bit mask (0 < x < 6) for backward."""

    def forward(self, input: Tensor) -> Tensor:
        return self._clamp(input, self.min_val, self.max_val)


#: Exact module type -> its 1-bit subclass (exact types, so user subclasses keep their forward).
CONVERSIONS: dict[type[nn.Module], type[nn.Module]] = {
    nn.ReLU: BitReLU,
    nn.ReLU6: BitReLU6,
    nn.Hardtanh: BitHardtanh,
}


def _restart_calls(model: nn.Module, _args: Any) -> None:
    """Forward pre-hook of a calibrated model: each forward counts calls from 0."""
    for module in model.modules():
        if isinstance(module, _Bit):
            module._calls = 0


def _tensors(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


class BitAct(fedprune.ActivationCompressor):
    """Activation compressor ``bitact``: ReLU / ReLU6 / Hardtanh modules keep 1 bit per entry,
    except for calls whose output another op keeps anyway (`calibrate`).

    The modules' class is swapped in place, so the model's structure, parameters and names are
    unchanged. No options. Gradients are exact.
    """

    min_weight_grad_cosine = 1.0 - 1e-6
    accountings = {"paper": None}  # the papers count full activations: no 1-bit storage

    def __init__(self) -> None:
        self._left_alone: dict[str, str] = {}
        self._shared: dict[str, str] = {}

    def apply(self, model: nn.Module) -> None:
        self._left_alone, self._shared = {}, {}
        for name, module in model.named_modules():
            new = CONVERSIONS.get(type(module))
            if new is not None:
                module.__class__ = new
            elif isinstance(module, tuple(CONVERSIONS)) and not isinstance(module, _Bit):
                self._left_alone[name] = (f"{type(module).__name__} has its own forward: "
                                          "not converted")

    def calibrate(self, model: nn.Module, inputs: Tensor) -> None:
        """Probe one forward of a copy of ``model`` (RNG forked: the run is untouched) and let
        each call whose output another node of the graph saves keep that output, not bits."""
        probe = copy.deepcopy(model)
        outputs: dict[str, list[Tensor]] = {}

        def record(name: str) -> Any:
            def hook(module: nn.Module, args: Any, out: Tensor) -> None:
                if out.requires_grad:  # the calls `_clamp` counts
                    outputs.setdefault(name, []).append(out)  # alive: no address reuse
            return hook

        hooks = []
        for name, module in probe.named_modules():
            if isinstance(bit := module, _Bit):
                bit.share_calls, bit._calls = (), 0
                hooks.append(module.register_forward_hook(record(name)))
        if not hooks:
            return
        try:
            with torch.random.fork_rng(devices=[]), torch.enable_grad():
                probe.train()
                result = probe(inputs)
            own = {out.grad_fn for outs in outputs.values() for out in outs}
            kept = savers(_tensors(result), own)
        finally:
            for hook in hooks:
                hook.remove()
        modules = dict(model.named_modules())
        self._shared = {}
        for name, outs in outputs.items():
            readers = [kept.get(out.untyped_storage().data_ptr(), set()) for out in outs]
            flags = tuple(bool(r) for r in readers)
            module = modules[name]
            assert isinstance(module, _Bit)
            module.share_calls = flags
            if any(flags):
                calls = "" if all(flags) else (
                    f" (calls {', '.join(str(i + 1) for i, f in enumerate(flags) if f)} "
                    f"of {len(flags)})")
                by = ", ".join(sorted(set().union(*readers)))
                self._shared[name] = (f"output kept in full by {by}{calls}: saved as torch "
                                       "does, no 1-bit copy")
        if not any(hook is _restart_calls for hook in model._forward_pre_hooks.values()):
            model.register_forward_pre_hook(_restart_calls)

    def skipped(self) -> dict[str, str]:
        return {**self._left_alone, **self._shared}
