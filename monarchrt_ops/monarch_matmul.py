"""Monarch (block-diagonal butterfly) matmul of Dao et al. 2022 (docs/math.md), and MonarchLinear."""

from __future__ import annotations

import math

import torch

from . import ops, registry, tables
from .amp import autocast_dtype_of, autocast_inputs
from .arch import arch_of
from .attention import _check_int
from .limits import MAX_TENSOR_ELEMENTS, check_monarch_matmul
from .registry import backend_names

# per argument key (_call_key): the checked backend name and the eager fast path's prepared forward
# (ops.CallEntry); the checks read only the key's values (the tensors' exact types, shapes, dtypes and
# devices, the backend name, the registry's generation for the backends' names)
_CHECKED: dict[tuple, ops.CallEntry] = {}
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_MAX_CHECKED = 4096


def _call_key(x, w1, w2, backend) -> tuple | None:
    """The key of a call whose checks may be cached, or None (checked every time): plain tensors and a
    str or None backend, not while torch.compile traces (Dynamo would guard on the dict). The strides
    are in it for the prepared forward, which reads the tensors' layout from the key."""
    if (
        type(x) in _PLAIN and type(w1) in _PLAIN and type(w2) in _PLAIN and type(backend) in (str, type(None))
        and not torch.compiler.is_compiling()
    ):  # fmt: skip
        return (type(x), type(w1), type(w2), x.shape, w1.shape, w2.shape, x.stride(), w1.stride(), w2.stride(),
                x.dtype, w1.dtype, w2.dtype, x.device, w1.device, w2.device, backend,
                registry._generation[0])  # fmt: skip
    return None


def _remember(key: tuple, backend: str) -> ops.CallEntry:
    if len(_CHECKED) >= _MAX_CHECKED:
        _CHECKED.clear()
    call = _CHECKED[key] = ops.CallEntry(backend)
    return call


def _check(x, w1, w2, backend) -> str:
    """Every check of a call -> the backend name ('' automatic); remembered per argument key (a failing
    call is never remembered)."""
    key = _call_key(x, w1, w2, backend)
    call = _CHECKED.get(key) if key is not None else None
    if call is not None:
        return call.checked
    checked = _run_checks(x, w1, w2, backend)
    if key is not None:
        _remember(key, checked)
    return checked


def _run_checks(x, w1, w2, backend) -> str:
    for name, t in (("x", x), ("w1", w1), ("w2", w2)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"monarch_matmul: {name} must be a torch.Tensor, got {type(t).__name__}")
    check_monarch_matmul(x, w1, w2)
    if backend is not None and backend not in backend_names("monarch_matmul"):
        raise ValueError(f"backend={backend!r} is not one of {backend_names('monarch_matmul')} (or None)")
    return backend or ""


@ops.traceable_errors
def monarch_matmul(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Monarch product ``(..., k*p) -> (..., s*l)`` with ``w1 (k, q, p)``, ``w2 (l, s, r)``, ``l*r = k*q``.

    Equals ``x @ M.T`` for the dense Monarch matrix M = P2 B2 P1 B1 (block-diagonal B1, B2 and the
    two reorders of docs/math.md). Differentiable in x, w1 and w2. Under ``torch.autocast`` it runs in
    the autocast dtype like ``torch.matmul`` (x, w1, w2 cast; float64 kept), eagerly and compiled.

    Example:
        >>> x = torch.randn(8, 16)
        >>> monarch_matmul(x, torch.randn(4, 4, 4), torch.randn(4, 4, 4)).shape
        torch.Size([8, 16])
    """
    x, w1, w2 = autocast_inputs(x, w1, w2)  # under autocast: the dtype the op runs in (amp.py)
    key = _call_key(x, w1, w2, backend)
    call = _CHECKED.get(key) if key is not None else None
    if call is not None and ops.ready(call, x, w1, w2):  # the eager fast path: the forward prepared for this key
        return call.run(x, w1, w2)
    if call is None:
        backend = _run_checks(x, w1, w2, backend)
        if key is None:
            return ops.call_monarch_matmul(x, w1, w2, backend)
        call = _remember(key, backend)
    backend = call.checked
    if call.state != registry._state() and ops.eager(x, w1, w2):  # asked once per registry state
        call.state, call.run = ops.prepare_monarch_matmul(x, w1, w2, backend)
        if call.run is not None:
            return call.run(x, w1, w2)
    return ops.call_monarch_matmul(x, w1, w2, backend)


# MonarchLinear's two ways of computing one linear map (docs/design.md, "MonarchLinear: structured or dense")
LINEAR_PATHS = ("structured", "dense")
_PATH_CACHE: dict[tuple, tuple[str, str]] = {}


def linear_path_key(rows: int, in_features: int, out_features: int, nblocks: int, dtype: torch.dtype) -> dict:
    """The problem key a table's ``monarch_linear`` choice matches (its ``where``): scalars only."""
    dtype = str(dtype).removeprefix("torch.")
    return {"rows": rows, "in_features": in_features, "out_features": out_features, "nblocks": nblocks, "dtype": dtype}


def linear_path(
    rows: int, in_features: int, out_features: int, nblocks: int, dtype: torch.dtype, device: torch.device
) -> tuple[str, str]:
    """``('structured' | 'dense', why)`` for a MonarchLinear call: 'dense' where a table's measured choice
    ``{"op": "monarch_linear", "backend": "dense", "auto": true, ...}`` matches the problem (this GPU's
    table, its family's, the shipped default, as for the backends' choices), else 'structured'.
    Cached per problem and tables generation."""
    key = (rows, in_features, out_features, nblocks, dtype, device, tables.generation())
    hit = _PATH_CACHE.get(key)
    if hit is None:
        arch = arch_of(device)
        gpu = tables.gpu_table_name(arch.device_name) if arch.is_cuda else None
        problem = linear_path_key(rows, in_features, out_features, nblocks, dtype)
        found = tables.choice("monarch_linear", "dense", problem, gpu, arch.family)
        if found is not None and found.auto:
            hit = ("dense", f"{found.why} ({found.table}.json)")
        elif found is not None:
            hit = ("structured", f"{found.why} ({found.table}.json)")
        else:
            hit = ("structured", "the default: no table has a monarch_linear choice for this problem")
        _PATH_CACHE[key] = hit
    return hit


def _check_path(path) -> str | None:
    if path is not None and not isinstance(path, str):
        raise TypeError(f"MonarchLinear: matmul must be a str or None, got {type(path).__name__} {path!r}")
    if path is not None and path not in LINEAR_PATHS:
        raise ValueError(f"MonarchLinear: matmul={path!r} is not one of {LINEAR_PATHS} (or None: the tables' choice)")
    return path


class MonarchLinear(torch.nn.Module):
    """``y = monarch_matmul(x, w1, w2) + bias``: a Monarch-structured ``nn.Linear``.

    ``nblocks`` blocks: w1 ``(nblocks, width, in/nblocks)``, w2 ``(nblocks, out/nblocks, width)`` with
    ``width = max(in, out) / nblocks``; in and out must divide by nblocks. Parameters:
    ``nblocks * width * (in + out) / nblocks`` against ``in * out`` for nn.Linear. Under
    ``torch.autocast`` it behaves as nn.Linear does: input, weights and bias in the autocast dtype,
    output in that dtype, gradients of the fp32 parameters in fp32.

    ``matmul``: how the forward computes the same linear map. 'structured': the Monarch kernel
    (``monarch_matmul``). 'dense': ``F.linear(x, W, bias)`` with ``W = dense_weight()``, the dense
    matrix of the factors, materialised on every forward (differentiable in w1 and w2; it costs one
    Monarch product of an ``in x in`` identity, so it pays where cuBLAS's dense GEMM beats the
    structured kernel by more than that, e.g. few output blocks). None (default): per call shape, the
    tables' measured choice (:func:`linear_path`), 'structured' where no table has one. Settable after
    construction (``layer.matmul = 'dense'``); validated either way.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nblocks: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        matmul: str | None = None,
    ):
        super().__init__()
        in_features = _check_int("in_features", in_features)  # numpy integers too, as nn.Linear takes
        out_features = _check_int("out_features", out_features)
        nblocks = _check_int("nblocks", nblocks)
        if in_features % nblocks or out_features % nblocks:
            raise ValueError(
                f"in_features={in_features} and out_features={out_features} must divide by nblocks={nblocks}"
            )
        self.in_features, self.out_features, self.nblocks = in_features, out_features, nblocks
        self.matmul = matmul
        width = max(in_features, out_features) // nblocks
        if width * max(in_features, out_features) > MAX_TENSOR_ELEMENTS:  # w1 or w2 (nblocks * width * n / nblocks)
            raise ValueError(
                f"in_features={in_features}, out_features={out_features}, nblocks={nblocks}: the factors would have "
                f"more elements than a tensor can hold ({MAX_TENSOR_ELEMENTS})"
            )
        kw = {"device": device, "dtype": dtype}
        self.w1 = torch.nn.Parameter(torch.empty(nblocks, width, in_features // nblocks, **kw))
        self.w2 = torch.nn.Parameter(torch.empty(nblocks, out_features // nblocks, width, **kw))
        self.bias = torch.nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    @property
    def matmul(self) -> str | None:
        return self._matmul

    @matmul.setter
    def matmul(self, value: str | None) -> None:
        self._matmul = _check_path(value)

    def reset_parameters(self) -> None:
        # each output sums in/nblocks * width terms per stage: uniform bounds keep activations O(1)
        for w in (self.w1, self.w2):
            bound = 1.0 / math.sqrt(w.shape[2])
            torch.nn.init.uniform_(w, -bound, bound)
        if self.bias is not None:
            torch.nn.init.uniform_(self.bias, -1.0 / math.sqrt(self.in_features), 1.0 / math.sqrt(self.in_features))

    def dense_weight(self) -> torch.Tensor:
        """The equivalent ``(out, in)`` matrix."""
        eye = torch.eye(self.in_features, device=self.w1.device, dtype=self.w1.dtype)
        return monarch_matmul(eye, self.w1, self.w2).T

    def path_for(self, x: torch.Tensor) -> str:
        """'structured' or 'dense' for ``self(x)``: ``matmul`` if set, else :func:`linear_path` (read
        once per shape at trace time under torch.compile; a symbolic row count takes 'structured')."""
        if self._matmul is not None:
            return self._matmul
        rows = x.numel() // self.in_features
        if not isinstance(rows, int):
            return "structured"
        dtype = autocast_dtype_of(x)  # the dtype the product runs in
        return _linear_path_const(rows, self.in_features, self.out_features, self.nblocks, dtype, x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"MonarchLinear: x must be a torch.Tensor, got {type(x).__name__}")
        if self.path_for(x) == "dense":
            _check(*autocast_inputs(x, self.w1, self.w2), None)  # the structured path's checks and messages
            # under autocast F.linear casts x, W and bias itself, as nn.Linear's does
            return torch.nn.functional.linear(x, self.dense_weight(), self.bias)
        y = monarch_matmul(x, self.w1, self.w2)
        # in y's dtype, as nn.Linear's addmm: under autocast y is in the autocast dtype, and an fp32
        # bias would promote the sum back to fp32
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def extra_repr(self) -> str:
        out = f"in_features={self.in_features}, out_features={self.out_features}, nblocks={self.nblocks}"
        return out + (f", matmul={self._matmul!r}" if self._matmul is not None else "")


def _linear_path_const(rows, in_features, out_features, nblocks, dtype, device) -> str:
    # a constant for torch.compile: the tables are read while tracing, not traced
    return linear_path(rows, in_features, out_features, nblocks, dtype, device)[0]


# What torch.compiler.assume_constant_result(fn) does (it sets this attribute, torch 2.x), without its
# import of torch._dynamo and Triton, which `import monarchrt_ops` must not do (tests/test_ops.py). If
# torch stops reading it, the fullgraph test of MonarchLinear's table choice fails.
_linear_path_const._dynamo_marked_constant = True
