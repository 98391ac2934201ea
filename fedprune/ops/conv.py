"""The fused convolution (and linear) whose backward recomputes what it can and keeps its input
in whatever form a codec chooses; and the closed-form weight standardisation NSConv uses.

`conv2d_function` saves the raw weight (never a derived, weight-sized tensor) and either the input
or ``codec.encode(input)``; backward rebuilds the input with ``codec.decode``. The input gradient
needs only the weight, so it is exact whatever the codec keeps. Under autocast the functions
compute in the autocast dtype and return gradients in the parameters' own dtypes (explicit casts
rather than ``torch.amp.custom_fwd``, whose decorator is bound to one device type).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

#: Floor of var * n, as in NF-Nets: keeps the scale finite for (near-)constant channels.
EPS = 1e-4
STATS = ("all", "active")

__all__ = [
    "EPS",
    "STATS",
    "ConvSpec",
    "Encoded",
    "InputCodec",
    "conv2d_function",
    "conv_input_padding",
    "linear_function",
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
    ``stats="all"``, over every entry including zeros. The scale is rsqrt(var * n): n is the
    fan-in whose variance it preserves (all inputs, or the active ones).
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
    mean, var, n = _channel_stats(weight, mask, stats)
    return gain * (weight - mean) * torch.rsqrt((var * n).clamp_min(eps))


class _Stats(NamedTuple):
    """Per-channel statistics of one weight, as ``(out, 1)`` columns (tiny: saved for backward).

    ``s`` = rsqrt(max(var * n, eps)); ``live`` is 1 where var * n >= eps (there the
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
    z = d.mul_(d).sum(1, keepdim=True)  # var * n: n is the fan-in the scale preserves
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
    k = st.live * st.s * grad_gain
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
    backward would count). With u = (W - mean) * s, s = rsqrt(max(var * n, eps)) and sums
    over each output channel (n entries in the statistics, indicator [k in S] of taking part in
    them, [live] of var * n >= eps):

        dL/dgain = A = sum(grad * u)
        dL/dW_k  = gain * s * (grad_k - [k in S] * (sum(grad) / n
                                                    + [live] * s * A * (W_k - mean)))

    per-channel coefficients times a few passes over the weight.
    """
    return _stats_backward(grad, weight, gain, mask, stats, _stats(weight, mask, stats, eps))


# ----------------------------------------------------------- one autograd function for both


class ConvSpec(NamedTuple):
    """Convolution geometry plus how the weight is derived (``stats=None``: used as given)."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    stats: str | None = None
    eps: float = EPS


class Encoded(NamedTuple):
    """What a codec keeps of an input: ``tensors`` go to ``save_for_backward`` (their bytes are
    the cost), ``context`` (anything else decode needs, e.g. how to rebuild the input from a
    tensor another op keeps) stays on the autograd context."""

    tensors: tuple[Tensor, ...]
    context: Any = None


class InputCodec(Protocol):
    """What the fused functions need from a compressor of their input (SAP implements it)."""

    def encode(self, x: Tensor) -> Encoded: ...

    def decode(self, saved: Encoded, shape: torch.Size, dtype: torch.dtype) -> Tensor: ...


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype autocast would run a convolution in here (the input's own dtype outside it)."""
    kind = x.device.type
    if x.is_floating_point() and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


@overload
def _cast(t: Tensor, dtype: torch.dtype) -> Tensor: ...


@overload
def _cast(t: None, dtype: torch.dtype) -> None: ...


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


class _Conv2dFunction(torch.autograd.Function):
    """Convolution that saves the raw weight (not W^) and, optionally, an encoded input."""

    @staticmethod
    def forward(ctx, x, weight, gain, mask, bias, spec, codec):
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            if spec.stats is None:
                st, w = None, weight if mask is None else weight * mask
            else:
                st = _stats(weight, mask, spec.stats, spec.eps)
                w = _apply_stats(weight, gain, mask, st)
            out = F.conv2d(_cast(x, dtype), _cast(w, dtype), _cast(bias, dtype), spec.stride,
                           spec.padding, spec.dilation, spec.groups)
        del w
        saved = Encoded((x,)) if codec is None else codec.encode(x)
        ctx.save_for_backward(weight, gain, mask, *(st or (None,) * 4), *saved.tensors)
        ctx.spec, ctx.codec, ctx.context, ctx.x_shape, ctx.x_dtype, ctx.dtype = (
            spec, codec, saved.context, x.shape, x.dtype, dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        weight, gain, mask, *rest = ctx.saved_tensors
        st, saved = rest[:4], rest[4:]
        spec, codec, dtype = ctx.spec, ctx.codec, ctx.dtype
        need_x, need_w, need_gain, _, need_bias = ctx.needs_input_grad[:5]
        need_eff = need_w or need_gain
        if spec.stats is None:
            w = weight if mask is None else weight * mask
        else:
            st = _Stats(*st)
            w = _apply_stats(weight, gain, mask, st)
        if not need_eff:  # the input gradient needs only the input's shape
            x = grad_out.new_empty(1, dtype=dtype).expand(ctx.x_shape)
        elif codec is None:
            x = saved[0]
        else:
            x = codec.decode(Encoded(tuple(saved), ctx.context), ctx.x_shape, ctx.x_dtype)
        grad_x, grad_eff, grad_bias = torch.ops.aten.convolution_backward(
            _cast(grad_out, dtype), _cast(x, dtype), _cast(w, dtype),
            [w.shape[0]] if need_bias else None,
            spec.stride, spec.padding, spec.dilation, False, [0, 0], spec.groups,
            [need_x, need_eff, need_bias],
        )
        del x, w
        grad_w = grad_gain = None
        if need_eff:
            grad_eff = _cast(grad_eff, weight.dtype)
            if mask is not None:
                grad_eff = grad_eff.mul_(mask)
            if spec.stats is None:
                grad_w = grad_eff
            else:
                grad_w, grad_gain = _stats_backward(
                    grad_eff, weight, gain, mask, spec.stats, st
                )
        return (_cast(grad_x, ctx.x_dtype), grad_w if need_w else None,
                grad_gain if need_gain else None, None,
                _cast(grad_bias, weight.dtype), None, None)


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
    Padding must be numeric zero padding (see `conv_input_padding`); ``x`` is batched (N, C, H, W).
    """
    if spec.stats is not None and gain is None:
        raise ValueError("a standardised convolution needs its gain")
    return _Conv2dFunction.apply(x, weight, gain, mask, bias, spec, codec)


class _LinearFunction(torch.autograd.Function):
    """``F.linear`` that keeps ``codec.encode(x)`` for backward instead of ``x``."""

    @staticmethod
    def forward(ctx, x, weight, bias, codec):
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            out = F.linear(_cast(x, dtype), _cast(weight, dtype), _cast(bias, dtype))
        saved = codec.encode(x)
        ctx.save_for_backward(weight, *saved.tensors)
        ctx.codec, ctx.context, ctx.x_shape, ctx.x_dtype, ctx.dtype = (
            codec, saved.context, x.shape, x.dtype, dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        weight, *saved = ctx.saved_tensors
        need_x, need_w, need_bias = ctx.needs_input_grad[:3]
        grad_out = _cast(grad_out, ctx.dtype)
        grad_x = _cast(grad_out.matmul(_cast(weight, ctx.dtype)), ctx.x_dtype) if need_x else None
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
        grad_w = grad_bias = None
        if need_w:
            encoded = Encoded(tuple(saved), ctx.context)
            x = _cast(ctx.codec.decode(encoded, ctx.x_shape, ctx.x_dtype), ctx.dtype)
            grad_w = _cast(grad_2d.t().mm(x.reshape(-1, x.shape[-1])), weight.dtype)
        if need_bias:
            grad_bias = _cast(grad_2d.sum(0), weight.dtype)
        return grad_x, grad_w, grad_bias, None


def linear_function(x: Tensor, weight: Tensor, bias: Tensor | None, codec: InputCodec) -> Tensor:
    """``F.linear(x, weight, bias)`` whose input is kept for backward as ``codec.encode(x)``."""
    return _LinearFunction.apply(x, weight, bias, codec)


def conv_input_padding(conv: nn.Conv2d, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """The input and numeric zero padding equivalent to ``conv``'s padding settings.

    String paddings ("same" may be asymmetric) and non-zero padding modes are applied to the
    input explicitly, as ``nn.Conv2d`` itself does for the latter.
    """
    if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
        return x, (int(conv.padding[0]), int(conv.padding[1]))
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, conv._reversed_padding_repeated_twice, mode=mode), (0, 0)


def needs_grad(x: Tensor, module: nn.Module) -> bool:
    """Whether this forward builds a graph at all (else a compressed save is wasted work)."""
    return torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in module.parameters(recurse=False))
    )

