"""``torch.library`` registration: the custom ops, their fake implementations and autograd.

Ops (namespace ``monarchrt`` unless ``MONARCHRT_OPS_NAMESPACE`` names another, for vendored copies):

- ``attention(q, k, v, sm_scale, causal_block_tiles, num_iters, backend) -> (out, lse)`` on
  tile-order tensors, q ``(B, A, b1, b2, nh, d)``, k and v ``(B, F, b1, b2, nh, d)`` (a KV cache slice
  goes in as it is stored, without a copy); ``out`` is tile order like q and ``lse``, the stage-L
  log-normaliser, ``(B, A, b1, b2, nh)`` in float32 (float64 for float64 inputs).
  ``causal_block_tiles = 0`` means no mask, ``backend = ''`` automatic selection. The public
  functions (attention.py) convert natural order to tiles once, outside the op.
- ``attention_backward(dout, dlse, q, k, v, out, lse, ...) -> (dq, dk, dv)``, tile order.
- ``kv_cache_write(k_cache, v_cache, new_k, new_v, start) -> ()`` copies tile-order tokens into the
  cache buffers in place at token offset ``start``.
- ``hadamard(x, scale, transpose, fp32_intermediate, backend) -> y`` (autograd: the transform with H
  transposed) and ``hadamard_(x, scale, transpose, fp32_intermediate, backend) -> ()`` in place.
- ``monarch_matmul(x, w1, w2, backend) -> y``; its autograd calls ``monarch_matmul_backward(dout, x, w1,
  w2, backend) -> (dx, dw1, dw2)``, the backward chosen on its own: Triton's kernels where named or where
  a table measured them faster (measured-only in this direction), else the closed form of
  structured_reference.py; a second derivative takes the closed form.
- ``argument_error(kind, message) -> ()`` raises ``ValueError``/``TypeError(message)``, eagerly and in its
  fake impl: how a public function's argument error reaches a ``torch.compile(fullgraph=True)`` user
  (:func:`traceable_errors`).

Inputs are validated by the public functions (attention.py, hadamard.py, monarch_matmul.py); every
op also runs the cheap checks of limits.py itself (shapes, dtypes, devices, parameters; for
``kv_cache_write`` aliased or broadcast buffers), in its impl and its fake impl, since a direct
``torch.ops`` call (vendoring, compile) skips the public functions. A second derivative
through attention differentiates the reference's recomputation (``attention_backward`` has no
derivative of its own), as monarch_matmul's takes its closed form.
Under ``torch.autocast``, ``attention`` and ``monarch_matmul`` run in the autocast dtype and the other
ops ignore it (amp.py), the same eagerly and compiled.
The public functions call ``call_<op>``: the op's implementation directly where :func:`eager`
allows (no autograd, compile, mode, transform, autocast or subclass), else the op.
Registering twice (a second import of a vendored copy, a reload) reuses the ops already there.
"""

from __future__ import annotations

import functools
import os
import sys
import types

import torch

from . import amp
from . import backends as _backends  # noqa: F401  (registers the backends)
from .arch import arch_of
from .hadamard_matrices import factor
from .limits import (
    check_attention_backward,
    check_attention_params,
    check_attention_tensors,
    check_hadamard_input,
    check_hadamard_scale,
    check_kv_cache_write,
    check_monarch_matmul,
)
from .problem import AttentionProblem, HadamardProblem, MonarchMatmulProblem
from .reference import compute_dtype, monarch_attention_tiles
from .registry import _state as _registry_state
from .registry import cached_select
from .structured_reference import reference_monarch_matmul_backward

NAMESPACE = os.environ.get("MONARCHRT_OPS_NAMESPACE", "monarchrt")
_RESERVED_NAMESPACES = ("aten", "prims", "prim", "quantized", "_test", "torch")
if not NAMESPACE.isidentifier() or NAMESPACE in _RESERVED_NAMESPACES:
    raise ValueError(
        f"MONARCHRT_OPS_NAMESPACE={NAMESPACE!r} must be a Python identifier and not one of torch's own "
        f"namespaces {_RESERVED_NAMESPACES}"
    )


def _attention_impl(q, k, v, sm_scale, causal_block_tiles, num_iters, backend):
    check_attention_tensors(q, k, v)
    check_attention_params(sm_scale, causal_block_tiles, num_iters, q.dtype)
    return _attention_run(q, k, v, sm_scale, causal_block_tiles, num_iters, backend)


def _attention_selection(q, k, sm_scale, causal_block_tiles, num_iters, backend):
    """The cached Selection of a forward on checked tile-order tensors."""
    key = (q.shape, k.shape, q.dtype, q.device, sm_scale, causal_block_tiles, num_iters)

    def problem():
        return AttentionProblem.from_tiles(q, k, causal_block_tiles, num_iters, sm_scale=sm_scale), arch_of(q.device)

    return cached_select("attention", key, problem, backend)


def _attention_run(q, k, v, sm_scale, causal_block_tiles, num_iters, backend):
    """The op's work on checked tile-order tensors: the cached selection, then the backend."""
    sel = _attention_selection(q, k, sm_scale, causal_block_tiles, num_iters, backend)
    z, lse = sel.backend.launch(
        sel.config, q, k, v, sm_scale=sm_scale, causal_block_tiles=causal_block_tiles, num_iters=num_iters
    )
    want = compute_dtype(q.dtype)
    if lse.dtype is not want:  # (a call of .to less when it already is: ~0.8 us)
        lse = lse.to(want)
    return z.contiguous(), lse.contiguous()


def _attention_fake(q, k, v, sm_scale, causal_block_tiles, num_iters, backend):
    check_attention_tensors(q, k, v)
    check_attention_params(sm_scale, causal_block_tiles, num_iters, q.dtype)
    lse = q.new_empty(q.shape[:-1], dtype=compute_dtype(q.dtype))
    return torch.empty_like(q, memory_format=torch.contiguous_format), lse


def _check_backward(dout, dlse, q, k, v, out, lse, sm_scale, causal_block_tiles, num_iters) -> None:
    check_attention_backward(dout, dlse, q, k, v, out, lse)
    check_attention_params(sm_scale, causal_block_tiles, num_iters, q.dtype)


def _attention_backward_impl(dout, dlse, q, k, v, out, lse, sm_scale, causal_block_tiles, num_iters, backend):
    _check_backward(dout, dlse, q, k, v, out, lse, sm_scale, causal_block_tiles, num_iters)
    # the registry chooses the backward on its own (a forward-only backend named for the forward,
    # 'cuda', leaves the backward to automatic selection): docs/design.md, Selection
    key = ("backward", q.shape, k.shape, q.dtype, q.device, sm_scale, causal_block_tiles, num_iters)

    def problem():
        prob = AttentionProblem.from_tiles(q, k, causal_block_tiles, num_iters, backward=True, sm_scale=sm_scale)
        return prob, arch_of(q.device)

    sel = cached_select("attention", key, problem, backend)
    dq, dk, dv = sel.backend.launch_backward(
        sel.config, dout, dlse, q, k, v, out, lse,
        sm_scale=sm_scale, causal_block_tiles=causal_block_tiles, num_iters=num_iters,
    )  # fmt: skip
    return tuple(g.contiguous() for g in (dq, dk, dv))


def _attention_backward_fake(dout, dlse, q, k, v, out, lse, sm_scale, causal_block_tiles, num_iters, backend):
    _check_backward(dout, dlse, q, k, v, out, lse, sm_scale, causal_block_tiles, num_iters)
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, *params = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.params = params


def _attention_backward_autograd(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    if torch.is_grad_enabled() and any(t.requires_grad for t in (dout, dlse, q, k, v)):
        # a backward that records a graph (create_graph=True): attention_backward has no derivative
        # (torch would return zeros with a warning), so differentiate the reference's recomputation
        return (*_recorded_attention_backward(dout, dlse, q, k, v, *ctx.params[:3]), *(None,) * len(ctx.params))
    dq, dk, dv = _lookup("attention_backward")(dout, dlse, q, k, v, out, lse, *ctx.params)
    return (dq, dk, dv) + (None,) * len(ctx.params)


def _recorded_attention_backward(dout, dlse, q, k, v, sm_scale, causal_block_tiles, num_iters):
    """(dq, dk, dv) as a differentiable function of (dout, dlse, q, k, v): autograd of the reference
    forward (plain PyTorch, differentiable to any order) with the graph kept, as monarch_matmul's
    second derivative takes its closed form."""
    inputs = [t if t.requires_grad else t.detach().requires_grad_() for t in (q, k, v)]
    z, lse = monarch_attention_tiles(
        *inputs, sm_scale=sm_scale, causal_block_tiles=causal_block_tiles, num_iters=num_iters
    )
    return torch.autograd.grad((z, lse), inputs, (dout, dlse.to(lse.dtype)), create_graph=True)


def _kv_cache_write_impl(k_cache, v_cache, new_k, new_v, start):
    check_kv_cache_write(k_cache, v_cache, new_k, new_v, start)
    n = new_k.shape[1]
    k_cache[:, start : start + n].copy_(new_k)
    v_cache[:, start : start + n].copy_(new_v)


def _kv_cache_write_fake(k_cache, v_cache, new_k, new_v, start):
    check_kv_cache_write(k_cache, v_cache, new_k, new_v, start, compare_storages=False)


def _hadamard_selection(x, m, fp32_intermediate, backend):
    """The cached Selection of a Hadamard transform of 2-D rows ``x [rows, n]``, n = m * n2."""
    rows, n = x.shape

    def problem():
        return HadamardProblem(rows, n, m, x.dtype, fp32_intermediate), arch_of(x.device)

    return cached_select("hadamard", (rows, n, x.dtype, x.device, fp32_intermediate), problem, backend)


def _hadamard_rows(x, out, scale, transpose, fp32_intermediate, backend):
    """Run the chosen backend on 2-D row views ``x, out [rows, n]`` (out may be x)."""
    if x.numel():
        m, n2 = factor(x.shape[1])
        sel = _hadamard_selection(x, m, fp32_intermediate, backend)
        sel.backend.launch(sel.config, x, out, m=m, n2=n2, scale=scale, transpose=transpose,
                           fp32_intermediate=fp32_intermediate)  # fmt: skip
    return out


def _hadamard_impl(x, scale, transpose, fp32_intermediate, backend):
    check_hadamard_input(x)
    check_hadamard_scale(scale)
    return _hadamard_run(x, scale, transpose, fp32_intermediate, backend)


def _hadamard_run(x, scale, transpose, fp32_intermediate, backend):
    """The op's work on a checked x (the eager fast path's entry: the public function checked it)."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    return _hadamard_rows(x2, torch.empty_like(x2), scale, transpose, fp32_intermediate, backend).reshape(*x.shape)


def _check_inplace(x, scale) -> None:
    check_hadamard_input(x)
    check_hadamard_scale(scale)
    if not x.is_contiguous():
        raise ValueError("hadamard_: x must be contiguous to be transformed in place")


def _hadamard_fake(x, scale, *args):
    check_hadamard_input(x)
    check_hadamard_scale(scale)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _hadamard_inplace_impl(x, scale, transpose, fp32_intermediate, backend):
    _check_inplace(x, scale)
    _hadamard_inplace_run(x, scale, transpose, fp32_intermediate, backend)


def _hadamard_inplace_run(x, scale, transpose, fp32_intermediate, backend):
    x2 = x.view(-1, x.shape[-1])
    _hadamard_rows(x2, x2, scale, transpose, fp32_intermediate, backend)


def _hadamard_setup_context(ctx, inputs, output):
    ctx.scale, ctx.transpose, ctx.fp32_intermediate, ctx.backend = inputs[1:]


def _hadamard_backward(ctx, dy):
    # y = x M^T with M = scale * H (x) ...; dx = dy M: the transform with H transposed
    dx = _lookup("hadamard")(dy, ctx.scale, not ctx.transpose, ctx.fp32_intermediate, ctx.backend)
    return dx, None, None, None, None


def _monarch_matmul_impl(x, w1, w2, backend):
    check_monarch_matmul(x, w1, w2)
    return _monarch_matmul_run(x, w1, w2, backend)


def _monarch_matmul_selection(x2, w1, w2, backend, backward):
    def problem():
        prob = MonarchMatmulProblem(x2.shape[0], tuple(w1.shape), tuple(w2.shape), x2.dtype, backward)
        return prob, arch_of(x2.device)

    key = (x2.shape[0], w1.shape, w2.shape, x2.dtype, x2.device, backward)
    return cached_select("monarch_matmul", key, problem, backend)


def _monarch_matmul_run(x, w1, w2, backend):
    """The op's work on checked inputs (the eager fast path's entry: the public function checked them)."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    sel = _monarch_matmul_selection(x2, w1, w2, backend, backward=False)
    out = sel.backend.launch(sel.config, x2, w1, w2)  # the Triton kernels read the weights' strides
    return out.reshape(*x.shape[:-1], w2.shape[0] * w2.shape[1])


def _check_monarch_matmul_backward(dout, x, w1, w2) -> None:
    check_monarch_matmul(x, w1, w2)
    want = (*x.shape[:-1], w2.shape[0] * w2.shape[1])
    if tuple(dout.shape) != want or dout.dtype != x.dtype or dout.device != x.device:
        raise ValueError(
            f"monarch_matmul_backward: dout must be the output's shape {want}, dtype {x.dtype} and device "
            f"{x.device}, got {tuple(dout.shape)} {dout.dtype} {dout.device}"
        )


def _monarch_matmul_backward_impl(dout, x, w1, w2, backend):
    # the backward is chosen on its own, as attention's: 'cuda' (forward only) named for the forward
    # leaves it to automatic selection (docs/design.md, Selection)
    _check_monarch_matmul_backward(dout, x, w1, w2)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    dout2 = dout.reshape(-1, dout.shape[-1]).contiguous()
    sel = _monarch_matmul_selection(x2, w1, w2, backend, backward=True)
    dx, dw1, dw2 = sel.backend.launch_backward(sel.config, dout2, x2, w1, w2)
    return dx.reshape(x.shape), dw1.to(w1.dtype).contiguous(), dw2.to(w2.dtype).contiguous()


def _monarch_matmul_backward_fake(dout, x, w1, w2, backend):
    _check_monarch_matmul_backward(dout, x, w1, w2)
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (x, w1, w2))


def _monarch_matmul_fake(x, w1, w2, backend):
    check_monarch_matmul(x, w1, w2)
    return x.new_empty(*x.shape[:-1], w2.shape[0] * w2.shape[1])


def _monarch_matmul_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.backend = inputs[3]


def _monarch_matmul_backward(ctx, dout):
    x, w1, w2 = ctx.saved_tensors
    if torch.is_grad_enabled() and any(t.requires_grad for t in (dout, x, w1, w2)):
        # a second derivative: the closed form is differentiable (einsums), the kernels are not
        return (*reference_monarch_matmul_backward(dout, x, w1, w2), None)
    return (*_lookup("monarch_matmul_backward")(dout, x, w1, w2, ctx.backend), None)


_ARGUMENT_ERRORS = {"ValueError": ValueError, "TypeError": TypeError}


def _argument_error(kind, message):
    raise _ARGUMENT_ERRORS[kind](message)


def traceable_errors(fn):
    """Decorate a public function so that its argument errors reach the user under
    ``torch.compile(fullgraph=True)``. Dynamo turns a ``raise`` it traces into ``Unsupported:
    Observed exception`` with the message only in its debug context; here the error goes to the
    ``argument_error`` op, whose fake impl raises it while Dynamo traces, so the compile error says
    ``got ValueError('<message>')`` (and its traceback ends in it). Eager calls run ``fn`` as is."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError) as e:
            # isinstance, not type(e).__name__: Dynamo of torch 2.11 cannot trace the latter
            _lookup("argument_error")("TypeError" if isinstance(e, TypeError) else "ValueError", str(e))
            raise

    # a code object of its own per function: Dynamo caches compiled frames per code object, and one
    # shared by every public function would share one recompile limit when they are compiled directly
    wrapper.__code__ = wrapper.__code__.replace(co_name=fn.__name__, co_qualname=fn.__qualname__)
    return wrapper


# --- eager fast path ------------------------------------------------------------------------------
# QuACK's pattern: an eager call may run the op's implementation directly, skipping the dispatcher
# (~20-60 us of its Python and C++ layers a call); torch.compile, autograd and anything else that
# must see the op (modes, transforms, subclasses, autocast) go through torch.ops. Both run the same
# implementation, so results are identical.
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def eager(*tensors: torch.Tensor) -> bool:
    """Whether a call on ``tensors`` may skip the dispatcher: not while torch.compile traces; no
    dispatch or torch-function mode (FakeTensorMode, FlopCounterMode, ``with torch.device``), no
    functorch transform (vmap, grad, functionalize), no autocast; plain tensors (no subclass such as
    FakeTensor or DTensor) on the CPU or a CUDA device; and no autograd (grad mode on and an input
    that requires grad: the op's autograd formula must record the call). About a microsecond."""
    C = torch._C
    if (
        torch.compiler.is_compiling()
        or C._len_torch_dispatch_stack()
        or C._is_torch_function_mode_enabled()
        or C._are_functorch_transforms_active()
        or C._is_any_autocast_enabled()
        or _tracing_or_forward_ad()
    ):
        return False
    grad = C.is_grad_enabled()
    for t in tensors:
        if type(t) not in _PLAIN_TENSORS or (grad and t.requires_grad) or not (t.is_cuda or t.is_cpu):
            return False
    return True


def _tracing_or_forward_ad() -> bool:
    """torch.jit.trace is recording (it must see the op, or its replay returns the traced call's empty
    output) or a forward-mode AD level is open (dual tensors' tangents must go through the op's formula)."""
    return torch._C._get_tracing_state() is not None or torch.autograd.forward_ad._current_level >= 0


class CallEntry:
    """A public function's entry per argument key (its exact types, shapes, strides, dtypes, devices and
    Python arguments): ``checked``, the outcome of its checks; ``run``, its eager fast path's call prepared
    by a ``prepare_<op>`` below under the registry state ``state`` (None: not asked yet, asked under
    another state, or nothing prepared). The public functions keep these only while torch.compile is not
    tracing (Dynamo would guard on the dict)."""

    __slots__ = ("checked", "state", "run")

    def __init__(self, checked):
        self.checked, self.state, self.run = checked, None, None


def ready(entry: CallEntry, *tensors: torch.Tensor) -> bool:
    """Whether an eager call may take ``entry.run`` now: prepared, the registry state it was prepared
    under still holds (so does its Selection, config and kernels), and :func:`eager_checked`."""
    return entry.run is not None and entry.state == _registry_state() and eager_checked(*tensors)


def eager_checked(*tensors: torch.Tensor) -> bool:
    """:func:`eager` for a caller that has checked ``torch.compiler.is_compiling()`` and whose key holds
    the tensors' exact type (``torch.Tensor``) and devices: the modes, transforms, autocast and autograd."""
    C = torch._C
    if (
        C._len_torch_dispatch_stack()
        or C._is_torch_function_mode_enabled()
        or C._are_functorch_transforms_active()
        or C._is_any_autocast_enabled()
        or _tracing_or_forward_ad()
    ):
        return False
    if C.is_grad_enabled():
        for t in tensors:
            if t.requires_grad:
                return False
    return True


def prepare_attention(q, k, v, sm_scale, causal_block_tiles, num_iters, backend, z_shape):
    """The public functions' eager fast path, asked once per argument key and registry state:
    ``(state, run)`` for validated tile-order q, k, v (an eager call: :func:`eager`), where ``run(q, k, v)
    -> (z, lse) | None`` is the selected backend's forward prepared for this problem and layout
    (``backend.prepare``: tensors with the data pointers of tile-order tensors laid out as these, ``z``
    of ``z_shape``, ``lse`` scratch the caller discards; None: that call cannot take it), or None where
    the backend prepares nothing. ``state`` is the registry's (``registry._state``, read before the
    selection): ``run`` stands while it does, since the Selection does. Results equal the op's: the
    same selection, config and kernels."""
    state = _registry_state()
    sel = _attention_selection(q, k, sm_scale, causal_block_tiles, num_iters, backend)
    prepare = getattr(sel.backend, "prepare", None)
    if prepare is None:
        return state, None
    run = prepare(sel.config, q, k, v, sm_scale=sm_scale, causal_block_tiles=causal_block_tiles,
                  num_iters=num_iters, z_shape=z_shape)  # fmt: skip
    return state, run


def prepare_hadamard(x, scale, transpose, fp32_intermediate, backend):
    """:func:`prepare_attention` for a checked Hadamard call on ``x (..., n)`` whose rows are contiguous
    (a 2-D view of the same memory): ``(state, run)``, ``run(x) -> y`` a new contiguous tensor of x's
    shape, or None where the backend prepares nothing (or x is empty, or its rows need a copy)."""
    state = _registry_state()
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    if not x.numel() or x2.data_ptr() != x.data_ptr() or not x2.is_contiguous():
        return state, None
    m, n2 = factor(n)
    sel = _hadamard_selection(x2, m, fp32_intermediate, backend)
    prepare = getattr(sel.backend, "prepare", None)
    # x2 stands for the output too: a new contiguous y has its layout
    launch = None if prepare is None else prepare(sel.config, x2, x2, m=m, n2=n2, scale=scale, transpose=transpose,
                                                  fp32_intermediate=fp32_intermediate)  # fmt: skip
    if launch is None:
        return state, None
    shape, dtype, device = tuple(x.shape), x.dtype, x.device

    def run(x):
        y = torch.empty(*shape, dtype=dtype, device=device)
        launch(x, y)
        return y

    return state, run


def prepare_monarch_matmul(x, w1, w2, backend):
    """:func:`prepare_attention` for a checked Monarch matmul call whose x rows are contiguous (a 2-D view
    of the same memory): ``(state, run)``, ``run(x, w1, w2) -> out`` a new contiguous ``(..., s*l)``, or
    None where the backend prepares nothing (or x's rows need a copy)."""
    state = _registry_state()
    x2 = x.reshape(-1, x.shape[-1])
    if x2.data_ptr() != x.data_ptr() or not x2.is_contiguous():
        return state, None
    sel = _monarch_matmul_selection(x2, w1, w2, backend, backward=False)
    prepare = getattr(sel.backend, "prepare", None)
    out_shape = (*x.shape[:-1], w2.shape[0] * w2.shape[1])
    return state, None if prepare is None else prepare(sel.config, x2, w1, w2, out_shape=out_shape)


def call_attention(q, k, v, sm_scale, causal_block_tiles, num_iters, backend):
    """What the public functions call on validated tile-order tensors: :data:`attention`'s result.
    The ``call_<op>`` functions skip the op's own checks too (``_<op>_run``): the caller has checked."""
    if eager(q, k, v):
        return _attention_run(q, k, v, sm_scale, causal_block_tiles, num_iters, backend)
    return attention(q, k, v, sm_scale, causal_block_tiles, num_iters, backend)


def call_hadamard(x, scale, transpose, fp32_intermediate, backend):
    if eager(x):
        return _hadamard_run(x, scale, transpose, fp32_intermediate, backend)
    return hadamard(x, scale, transpose, fp32_intermediate, backend)


def call_hadamard_(x, scale, transpose, fp32_intermediate, backend):
    if eager(x):
        return _hadamard_inplace_run(x, scale, transpose, fp32_intermediate, backend)
    return hadamard_(x, scale, transpose, fp32_intermediate, backend)


def call_monarch_matmul(x, w1, w2, backend):
    if eager(x, w1, w2):
        return _monarch_matmul_run(x, w1, w2, backend)
    return monarch_matmul(x, w1, w2, backend)


def _lookup(name: str):
    return getattr(getattr(torch.ops, NAMESPACE), name)


def _exists(name: str) -> bool:
    try:
        _lookup(name)
    except (AttributeError, RuntimeError):
        return False
    return True


_ATTN_PARAMS = "float sm_scale, int causal_block_tiles, int num_iters, str backend"
_SCHEMAS = {
    "attention": f"(Tensor q, Tensor k, Tensor v, {_ATTN_PARAMS}) -> (Tensor, Tensor)",
    "attention_backward": (
        f"(Tensor dout, Tensor dlse, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, {_ATTN_PARAMS})"
        " -> (Tensor, Tensor, Tensor)"
    ),
    "kv_cache_write": "(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor new_k, Tensor new_v, SymInt start) -> ()",
    "hadamard": "(Tensor x, float scale, bool transpose, bool fp32_intermediate, str backend) -> Tensor",
    "hadamard_": "(Tensor(a!) x, float scale, bool transpose, bool fp32_intermediate, str backend) -> ()",
    "monarch_matmul": "(Tensor x, Tensor w1, Tensor w2, str backend) -> Tensor",
    "monarch_matmul_backward": "(Tensor dout, Tensor x, Tensor w1, Tensor w2, str backend) -> (Tensor, Tensor, Tensor)",
    "argument_error": "(str kind, str message) -> ()",
}
_AUTOGRAD = {
    "attention": (_attention_backward_autograd, _setup_context),
    "hadamard": (_hadamard_backward, _hadamard_setup_context),
    "monarch_matmul": (_monarch_matmul_backward, _monarch_matmul_setup_context),
}


def _namespace_owners() -> dict[str, str]:
    """Op namespace -> the package that registered its ops, shared by every copy of this package in
    the process (vendored copies rename ``monarchrt_ops``, not this module name)."""
    holder = sys.modules.get("_monarchrt_op_namespaces")
    if holder is None:
        holder = sys.modules["_monarchrt_op_namespaces"] = types.ModuleType("_monarchrt_op_namespaces")
        holder.owners = {}
    return holder.owners


def _claim_namespace() -> None:
    """Registering twice from one package (a reload) reuses its ops; a second package (another vendored
    copy) in the same namespace would silently run the first one's ops and registry: refuse it."""
    owners = _namespace_owners()
    owner = owners.get(NAMESPACE)
    if owner is None and _exists("attention"):
        owner = "another library"
    if owner is not None and owner != __package__:
        raise RuntimeError(
            f"{__package__}: the op namespace {NAMESPACE!r} is already registered by {owner}; two packages cannot "
            f"share one namespace. Give this copy a namespace of its own (the vendoring tool's --namespace, "
            f"or its *_OPS_NAMESPACE environment variable before the import; docs/vendoring.md)"
        )
    owners[NAMESPACE] = __package__


def _register() -> None:
    _claim_namespace()
    lib = torch.library.Library(NAMESPACE, "FRAGMENT")
    impls = {
        "attention": (_attention_impl, _attention_fake),
        "attention_backward": (_attention_backward_impl, _attention_backward_fake),
        "kv_cache_write": (_kv_cache_write_impl, _kv_cache_write_fake),
        "hadamard": (_hadamard_impl, _hadamard_fake),
        "hadamard_": (_hadamard_inplace_impl, lambda x, scale, *args: _check_inplace(x, scale)),
        "monarch_matmul": (_monarch_matmul_impl, _monarch_matmul_fake),
        "monarch_matmul_backward": (_monarch_matmul_backward_impl, _monarch_matmul_backward_fake),
        "argument_error": (_argument_error, _argument_error),
    }
    for name, (impl, fake) in impls.items():
        if _exists(name):
            continue
        qualname = f"{NAMESPACE}::{name}"
        lib.define(name + _SCHEMAS[name])
        torch.library.impl(qualname, "CompositeExplicitAutograd", lib=lib)(impl)
        torch.library.register_fake(qualname, fake, lib=lib)
        if name in _AUTOGRAD:
            backward, setup_context = _AUTOGRAD[name]
            torch.library.register_autograd(qualname, backward, setup_context=setup_context, lib=lib)
        amp.register(lib, name, _lookup(name))  # the autocast policy of amp.py
    _libraries.append(lib)  # a Library deregisters its ops when garbage-collected


_libraries: list = []
_register()

attention = _lookup("attention")
attention_backward = _lookup("attention_backward")
kv_cache_write = _lookup("kv_cache_write")
hadamard = _lookup("hadamard")
hadamard_ = _lookup("hadamard_")
monarch_matmul = _lookup("monarch_matmul")
monarch_matmul_backward = _lookup("monarch_matmul_backward")
argument_error = _lookup("argument_error")
