"""Plain-PyTorch references for the Hadamard transform and the Monarch matmul (docs/math.md).

The oracles of the kernels and the CPU path; float32 math for half inputs, float64 kept.
"""

from __future__ import annotations

import torch

from .hadamard_matrices import special


def reference_hadamard(x: torch.Tensor, m: int, n2: int, scale: float, transpose: bool) -> torch.Tensor:
    """Plain PyTorch: Sylvester butterflies over the 2^k factor, then H_m; float32 (float64) math."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = x.to(dtype).reshape(-1, m, n2)
    h = 1
    while h < n2:  # butterfly: pairs (a, b) at distance h -> (a + b, a - b)
        y = y.reshape(-1, m, n2 // (2 * h), 2, h)
        y = torch.stack((y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]), dim=-2)
        h *= 2
    y = y.reshape(-1, m, n2)
    if m > 1:
        hm = special(m).to(dtype=dtype, device=x.device)
        y = torch.einsum("ab,rbn->ran", hm.T if transpose else hm, y)
    return (y * scale).reshape(x.shape).to(x.dtype)


def reference_monarch_matmul(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """x (..., k*p) -> block-multiply by w1 (k, q, p) -> reorder (r l) -> (l r) -> block-multiply by
    w2 (l, s, r) -> reorder (l s) -> (s l) -> (..., s*l). Differentiable plain PyTorch."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    y = torch.einsum("bkp,kqp->bkq", x.reshape(-1, k, p), w1)  # [rows, k, q] = (r l) order
    y = y.reshape(-1, r, l).transpose(1, 2)  # [rows, l, r]
    z = torch.einsum("blr,lsr->bls", y, w2)  # [rows, l, s]
    return z.transpose(1, 2).reshape(*x.shape[:-1], s * l)


def reference_monarch_matmul_backward(dout, x, w1, w2):
    """Gradients of reference_monarch_matmul in closed form (einsums; no autograd inside, so a
    compiled graph traces it): returns (dx, dw1, dw2)."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    xb = x.reshape(-1, k, p)
    y1t = torch.einsum("bkp,kqp->bkq", xb, w1).reshape(-1, r, l).transpose(1, 2)  # [rows, l, r]
    dz = dout.reshape(-1, s, l).transpose(1, 2)  # [rows, l, s]
    dw2 = torch.einsum("bls,blr->lsr", dz, y1t)
    dy1 = torch.einsum("bls,lsr->blr", dz, w2).transpose(1, 2).reshape(-1, k, q)
    dw1 = torch.einsum("bkq,bkp->kqp", dy1, xb)
    dx = torch.einsum("bkq,kqp->bkp", dy1, w1).reshape(x.shape)
    return dx, dw1, dw2
