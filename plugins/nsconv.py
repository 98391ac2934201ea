"""NSConv: BatchNorm-free convolutions with scaled weight standardisation (FedMef).

Each ``nn.Conv2d`` becomes an `NSConv2d` that convolves with the standardised, masked weight

    W^ = gain * (W - mean(W)) / sqrt(max(var(W) * fan_in, 1e-4)) * mask

(statistics per output channel), and each ``nn.BatchNorm2d`` becomes ``nn.Identity``. Without
BatchNorm, activations stay zero-centred through the weights alone, which is what lets SAP drop
small activations cheaply, and training no longer depends on client batch statistics.

Memory: written out with differentiable ops, the standardisation makes autograd keep two extra
weight-sized tensors per layer for backward, and the convolution keeps W^ itself. With
``recompute=True`` (the default) the standardisation and the convolution form one autograd
function that saves only the input, the raw weight, the gain, the mask (parameters and the
engine's mask: nothing weight-sized of its own) and four per-channel statistics, and recomputes W^
in backward, with a closed-form gradient of the standardisation. `conv2d_function` is that
function; SAP reuses it with its compressed input, so a SAP + NSConv layer also saves nothing
weight-sized.

Growth: the engine scores growth candidates by the gradient w.r.t. the weight a layer actually
uses. Through the standardisation every pruned position of an output channel gets the same raw
gradient, so `NSConv2d` declares ``capture_effective_weight``: while it is True, forward keeps the
masked standardised weight W^ it convolves with as ``effective_weight``, with its gradient
retained: dL/dW^ at every position, pruned ones included (the weight gradient RigL-style growth
ranks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from fedprune import Component, hookimpl
from fedprune.errors import FedpruneError

#: Floor of var * fan_in, as in NF-Nets: keeps the scale finite for (near-)constant channels.
EPS = 1e-4
STATS = ("all", "active")

__all__ = [
    "EPS",
    "NSConv",
    "NSConv2d",
    "STATS",
    "ConvSpec",
    "conv2d_function",
    "conv_input_padding",
    "needs_grad",
    "standardize",
    "standardize_backward",
]


# ------------------------------------------------------------------------ the standardisation


def _channel_stats(
    weight: Tensor, mask: Tensor | None, stats: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-output-channel mean, (biased) variance and the count they are taken over.

    ``stats="active"`` takes them over the active (mask True) entries only; with no mask, or with
    ``stats="all"``, over every entry including zeros.
    """
    dims = tuple(range(1, weight.dim()))
    if stats == "active" and mask is not None:
        m = mask.to(weight.dtype)
        n = m.sum(dims, keepdim=True).clamp_min(1)
        mean = (weight * m).sum(dims, keepdim=True) / n
        var = ((weight - mean) * m).square().sum(dims, keepdim=True) / n
        return mean, var, n
    var, mean = torch.var_mean(weight, dims, correction=0, keepdim=True)
    return mean, var, weight.new_full((), weight[0].numel())


def standardize(
    weight: Tensor, gain: Tensor, mask: Tensor | None = None, stats: str = "all", eps: float = EPS
) -> Tensor:
    """The standardised weight before masking, written with differentiable ops (textbook form).

    ``gain`` broadcasts against ``weight`` (shape ``(out, 1, 1, 1)``). ``mask`` only matters for
    ``stats="active"``; the caller multiplies the result by the mask.
    """
    mean, var, _ = _channel_stats(weight, mask, stats)
    fan_in = weight[0].numel()
    return gain * (weight - mean) * torch.rsqrt((var * fan_in).clamp_min(eps))


class _Stats(NamedTuple):
    """Per-channel statistics of one weight, as ``(out, 1)`` columns (tiny: saved for backward).

    ``s`` = rsqrt(max(var * fan_in, eps)); ``live`` is 1 where var * fan_in >= eps (there the
    scale depends on the weight), else 0; ``n`` is the count the statistics are taken over.
    """

    mean: Tensor
    s: Tensor
    live: Tensor
    n: Tensor


def _stats(weight: Tensor, mask: Tensor | None, stats: str, eps: float) -> _Stats:
    """`_Stats` without autograd, on a 2-D view (much faster than var_mean over 3 dims)."""
    w = weight.reshape(weight.shape[0], -1)
    fan_in = w.shape[1]
    if stats == "active" and mask is not None:
        m = mask.reshape(w.shape).to(w.dtype)
        n = m.sum(1, keepdim=True).clamp_min(1)
        mean = (w * m).sum(1, keepdim=True) / n
        d = (w - mean).mul_(m)
    else:
        n = w.new_full((w.shape[0], 1), fan_in)
        mean = w.mean(1, keepdim=True)
        d = w - mean
    z = d.mul_(d).sum(1, keepdim=True) / n * fan_in
    return _Stats(mean, torch.rsqrt(z.clamp_min(eps)), (z >= eps).to(w.dtype), n)


def _apply_stats(weight: Tensor, gain: Tensor, mask: Tensor | None, st: _Stats) -> Tensor:
    """W^ (masked) from precomputed statistics, in two passes over the weight."""
    w = weight.reshape(weight.shape[0], -1)
    scale = gain.reshape(-1, 1) * st.s
    out = torch.addcmul(-st.mean * scale, w, scale).view_as(weight)
    return out if mask is None else out.mul_(mask)


def _stats_backward(
    grad: Tensor, weight: Tensor, gain: Tensor, mask: Tensor | None, stats: str, st: _Stats
) -> tuple[Tensor, Tensor]:
    """Closed-form gradients of the standardisation; see `standardize_backward`.

    Written so that what cancels in exact arithmetic cancels in floating point too (a channel
    with one active weight has a zero gradient, however large its scale s).
    """
    rows = weight.shape[0]
    g = grad.reshape(rows, -1)
    out = weight.reshape(rows, -1) - st.mean  # W - mean; becomes the gradient in place
    grad_gain = st.s * torch.linalg.vecdot(g, out).unsqueeze(1)  # sum(grad * u)
    k = st.live * (out.shape[1] * st.s / st.n) * grad_gain
    out.mul_(k).add_(g.sum(1, keepdim=True) / st.n)
    if stats == "active" and mask is not None:
        out.mul_(mask.reshape(rows, -1))
    out.sub_(g).mul_(-gain.reshape(rows, 1) * st.s)
    return out.view_as(weight), grad_gain.view_as(gain)


def standardize_backward(
    grad: Tensor,
    weight: Tensor,
    gain: Tensor,
    mask: Tensor | None = None,
    stats: str = "all",
    eps: float = EPS,
) -> tuple[Tensor, Tensor]:
    """Gradients w.r.t. ``weight`` and ``gain`` of `standardize`, given ``grad`` = dL/dW^.

    Closed form, so backward builds no autograd graph (whose saved tensors a meter active during
    backward would count). With u = (W - mean) * s, s = rsqrt(max(var * fan_in, eps)) and sums
    over each output channel (n entries in the statistics, indicator [k in S] of taking part in
    them, [live] of var * fan_in >= eps):

        dL/dgain = A = sum(grad * u)
        dL/dW_k  = gain * s * (grad_k - [k in S] * (sum(grad) / n
                                                    + [live] * fan_in * s * A / n * (W_k - mean)))

    per-channel coefficients times a few passes over the weight.
    """
    return _stats_backward(grad, weight, gain, mask, stats, _stats(weight, mask, stats, eps))


# ----------------------------------------------------------- one autograd function for both


class ConvSpec(NamedTuple):
    """Convolution geometry plus how the weight is derived (``stats=None``: used as given)."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    stats: str | None = None
    eps: float = EPS


class InputCodec(Protocol):
    """What `conv2d_function` needs from a compressor of its input (SAP implements it)."""

    def encode(self, x: Tensor) -> tuple[Tensor, ...]: ...

    def decode(self, saved: Sequence[Tensor], shape: torch.Size, dtype: torch.dtype) -> Tensor: ...


class _Conv2dFunction(torch.autograd.Function):
    """Convolution that saves the raw weight (not W^) and, optionally, an encoded input."""

    @staticmethod
    def forward(ctx, x, weight, gain, mask, bias, spec, codec):
        if spec.stats is None:
            st, w = None, weight if mask is None else weight * mask
        else:
            st = _stats(weight, mask, spec.stats, spec.eps)
            w = _apply_stats(weight, gain, mask, st)
        out = F.conv2d(x, w, bias, spec.stride, spec.padding, spec.dilation, spec.groups)
        del w
        saved = (x,) if codec is None else tuple(codec.encode(x))
        ctx.save_for_backward(weight, gain, mask, *(st or (None,) * 4), *saved)
        ctx.spec, ctx.codec, ctx.x_shape, ctx.x_dtype = spec, codec, x.shape, x.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        weight, gain, mask, *rest = ctx.saved_tensors
        st, saved = rest[:4], rest[4:]
        spec, codec = ctx.spec, ctx.codec
        need_x, need_w, need_gain, _, need_bias = ctx.needs_input_grad[:5]
        need_eff = need_w or need_gain
        if spec.stats is None:
            w = weight if mask is None else weight * mask
        else:
            st = _Stats(*st)
            w = _apply_stats(weight, gain, mask, st)
        if not need_eff:  # the input gradient needs only the input's shape
            x = grad_out.new_empty(1).expand(ctx.x_shape)
        elif codec is None:
            x = saved[0]
        else:
            x = codec.decode(saved, ctx.x_shape, ctx.x_dtype)
        grad_x, grad_eff, grad_bias = torch.ops.aten.convolution_backward(
            grad_out, x, w, [w.shape[0]] if need_bias else None,
            spec.stride, spec.padding, spec.dilation, False, [0, 0], spec.groups,
            [need_x, need_eff, need_bias],
        )
        del x, w
        grad_w = grad_gain = None
        if need_eff:
            if mask is not None:
                grad_eff = grad_eff.mul_(mask)
            if spec.stats is None:
                grad_w = grad_eff
            else:
                grad_w, grad_gain = _stats_backward(
                    grad_eff, weight, gain, mask, spec.stats, st
                )
        return (grad_x, grad_w if need_w else None, grad_gain if need_gain else None, None,
                grad_bias, None, None)


def conv2d_function(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    spec: ConvSpec,
    gain: Tensor | None = None,
    mask: Tensor | None = None,
    codec: InputCodec | None = None,
) -> Tensor:
    """``conv2d(x, W_eff, bias)`` whose backward recomputes W_eff from what forward saved.

    W_eff is ``standardize(weight, gain, mask) * mask`` when ``spec.stats`` is set, else
    ``weight`` (times ``mask`` if given). Saved for backward: ``weight``, ``gain``, ``mask`` and
    either ``x`` or ``codec.encode(x)``; backward rebuilds the input with ``codec.decode``.
    Padding must be numeric zero padding (see `conv_input_padding`).
    """
    if spec.stats is not None and gain is None:
        raise ValueError("a standardised convolution needs its gain")
    return _Conv2dFunction.apply(x, weight, gain, mask, bias, spec, codec)


def conv_input_padding(conv: nn.Conv2d, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """The input and numeric zero padding equivalent to ``conv``'s padding settings.

    String paddings ("same" may be asymmetric) and non-zero padding modes are applied to the
    input explicitly, as ``nn.Conv2d`` itself does for the latter.
    """
    if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
        return x, tuple(conv.padding)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, conv._reversed_padding_repeated_twice, mode=mode), (0, 0)


def needs_grad(x: Tensor, module: nn.Module) -> bool:
    """Whether this forward builds a graph at all (else a compressed save is wasted work)."""
    return torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in module.parameters(recurse=False))
    )


# ------------------------------------------------------------------------------- the module


class NSConv2d(nn.Conv2d):
    """``nn.Conv2d`` with a scaled, standardised, masked weight and a per-channel ``gain``.

    Made from an existing convolution by `NSConv2d.convert`, which keeps its ``weight`` and
    ``bias`` parameters (same objects, same names). Engine protocol attributes:

    - ``weight_mask``: the bool mask of ``weight`` set by the engine, None when dense;
    - ``capture_effective_weight`` / ``effective_weight``: see the module docstring.
    """

    gain: nn.Parameter
    stats: str
    recompute: bool
    weight_mask: Tensor | None
    capture_effective_weight: bool
    effective_weight: Tensor | None

    @classmethod
    def convert(cls, conv: nn.Conv2d, stats: str = "all", recompute: bool = True) -> NSConv2d:
        """Turn ``conv`` into this class in place (parameters, hooks and names are kept)."""
        if stats not in STATS:
            raise FedpruneError(f"nsconv: stats must be one of {STATS}, not {stats!r}")
        conv.__class__ = cls
        w = conv.weight
        conv.gain = nn.Parameter(torch.ones(w.shape[0], 1, 1, 1, dtype=w.dtype, device=w.device))
        conv.stats = stats
        conv.recompute = recompute
        conv.weight_mask = None
        conv.capture_effective_weight = False
        conv.effective_weight = None
        return conv

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stats={self.stats}, recompute={self.recompute}"

    def standardized_weight(self) -> Tensor:
        """W^ before masking (differentiable)."""
        return standardize(self.weight, self.gain, self.weight_mask, self.stats)

    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x, None)

    def _forward(self, x: Tensor, codec: InputCodec | None) -> Tensor:
        mask = self.weight_mask
        if self.capture_effective_weight:
            # Growth pass: the gradient w.r.t. the tensor the convolution consumes is non-zero
            # at pruned positions too (its gradient w.r.t. the raw weight is not informative).
            w = self.standardized_weight()
            w = w if mask is None else w * mask
            w.retain_grad()
            self.effective_weight = w
            return self._conv_forward(x, w, self.bias)
        self.effective_weight = None
        if not needs_grad(x, self):
            with torch.no_grad():
                w = self.standardized_weight()
                return self._conv_forward(x, w if mask is None else w * mask, self.bias)
        x, padding = conv_input_padding(self, x)
        if self.recompute:
            spec = ConvSpec(self.stride, padding, self.dilation, self.groups, self.stats)
            return conv2d_function(x, self.weight, self.bias, spec, self.gain, mask, codec)
        # Textbook form: autograd keeps the standardisation's intermediates and W^.
        w = self.standardized_weight()
        w = w if mask is None else w * mask
        if codec is None:
            return F.conv2d(x, w, self.bias, self.stride, padding, self.dilation, self.groups)
        spec = ConvSpec(self.stride, padding, self.dilation, self.groups)
        return conv2d_function(x, w, self.bias, spec, codec=codec)


# ----------------------------------------------------------------------------- the component


def as_bool(value: Any, name: str) -> bool:
    """Accept booleans and their command-line spellings."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise FedpruneError(f"{name} must be true or false, not {value!r}")


def replace_modules(model: nn.Module, factory: Callable[[nn.Module], nn.Module | None]) -> int:
    """Replace each submodule for which ``factory`` returns a new module; return the count."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = factory(child)
            if new is not None and new is not child:
                setattr(parent, name, new)
                count += 1
    return count


class NSConv:
    """Model transform ``nsconv``: every ``nn.Conv2d`` -> `NSConv2d`, ``nn.BatchNorm2d`` removed.

    Options:

    - ``stats``: ``"all"`` takes the standardisation's mean and variance over every entry,
      zeros included (the FedMef authors' code); ``"active"`` over the mask's active entries
      only. Which of the two the paper means is not confirmed.
    - ``recompute``: recompute W^ in backward so nothing weight-sized is saved (default);
      ``False`` is the textbook differentiable form, for ablations.
    """

    def __init__(self, stats: str = "all", recompute: bool = True) -> None:
        if stats not in STATS:
            raise FedpruneError(f"nsconv.stats must be one of {', '.join(STATS)}, not {stats!r}")
        self.stats = stats
        self.recompute = as_bool(recompute, "nsconv.recompute")

    def apply(self, model: nn.Module) -> None:
        for module in model.modules():
            if type(module) is nn.Conv2d:
                NSConv2d.convert(module, self.stats, self.recompute)
        replace_modules(model, lambda m: nn.Identity() if type(m) is nn.BatchNorm2d else None)


@hookimpl
def fedprune_model_transforms():
    return [
        Component(
            "nsconv",
            NSConv,
            "FedMef NSConv: BatchNorm removed, conv weights standardised per channel with a gain",
        )
    ]
