"""Monarch (block-diagonal butterfly) matmul of Dao et al. 2022 (docs/math.md), and MonarchLinear."""

from __future__ import annotations

import math

import torch

from . import ops
from .amp import autocast_inputs
from .limits import check_monarch_matmul
from .registry import backend_names


def _check(x, w1, w2, backend) -> str:
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
    return ops.call_monarch_matmul(x, w1, w2, _check(x, w1, w2, backend))


class MonarchLinear(torch.nn.Module):
    """``y = monarch_matmul(x, w1, w2) + bias``: a Monarch-structured ``nn.Linear``.

    ``nblocks`` blocks: w1 ``(nblocks, width, in/nblocks)``, w2 ``(nblocks, out/nblocks, width)`` with
    ``width = max(in, out) / nblocks``; in and out must divide by nblocks. Parameters:
    ``nblocks * width * (in + out) / nblocks`` against ``in * out`` for nn.Linear. Under
    ``torch.autocast`` it behaves as nn.Linear does: input, weights and bias in the autocast dtype,
    output in that dtype, gradients of the fp32 parameters in fp32.
    """

    def __init__(self, in_features: int, out_features: int, nblocks: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features), ("nblocks", nblocks)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        if in_features % nblocks or out_features % nblocks:
            raise ValueError(
                f"in_features={in_features} and out_features={out_features} must divide by nblocks={nblocks}"
            )
        self.in_features, self.out_features, self.nblocks = in_features, out_features, nblocks
        width = max(in_features, out_features) // nblocks
        kw = {"device": device, "dtype": dtype}
        self.w1 = torch.nn.Parameter(torch.empty(nblocks, width, in_features // nblocks, **kw))
        self.w2 = torch.nn.Parameter(torch.empty(nblocks, out_features // nblocks, width, **kw))
        self.bias = torch.nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = monarch_matmul(x, self.w1, self.w2)
        # in y's dtype, as nn.Linear's addmm: under autocast y is in the autocast dtype, and an fp32
        # bias would promote the sum back to fp32
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nblocks={self.nblocks}"
