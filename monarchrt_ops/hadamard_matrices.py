"""Hadamard matrices: Sylvester H_{2^k} and the documented H_m, m in {12, 20, 28, 40}.

- H_12: Paley construction I with q = 11 (q = 3 mod 4): H = I + [[0, 1^T], [-1, Q]], Q the
  Jacobsthal matrix Q[i, j] = chi(j - i) of the quadratic character mod q. Not symmetric.
- H_20: Paley construction I with q = 19. Not symmetric.
- H_28: Paley construction II with q = 13 (q = 1 mod 4): the symmetric conference matrix
  C = [[0, 1^T], [1, Q]] expanded as C (x) [[1, -1], [-1, -1]] + I (x) [[1, 1], [1, -1]]. Symmetric.
- H_40: H_2 (x) H_20 (Sylvester doubling of H_12's sibling H_20). Not symmetric.

Every H_m satisfies H H^T = m I. A size n = m * 2^k uses H_n = H_m (x) H_{2^k}, the first
factor on the slow index: ``x.view(m, 2^k)`` -> ``H_m X H_{2^k}^T``, with the smallest m of
SPECIAL_ORDERS that fits (``factor``): 40 * 2^k is 20 * 2^(k+1), so n = 40 * 2^k uses
H_20 (x) H_{2^(k+1)}, not H_40 (x) H_{2^k}; H_40 is defined for completeness and no size selects it.
"""

from __future__ import annotations

import functools

import torch

SPECIAL_ORDERS = (12, 20, 28, 40)


def _quadratic_character(q: int) -> list[int]:
    squares = {(x * x) % q for x in range(1, q)}
    return [0] + [1 if a in squares else -1 for a in range(1, q)]


def _jacobsthal(q: int) -> torch.Tensor:
    chi = _quadratic_character(q)
    return torch.tensor([[chi[(j - i) % q] for j in range(q)] for i in range(q)], dtype=torch.float64)


def _paley_1(q: int) -> torch.Tensor:
    n = q + 1
    s = torch.zeros(n, n, dtype=torch.float64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = _jacobsthal(q)
    return torch.eye(n, dtype=torch.float64) + s


def _paley_2(q: int) -> torch.Tensor:
    n = q + 1
    c = torch.zeros(n, n, dtype=torch.float64)
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = _jacobsthal(q)
    a = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    return torch.kron(c, a) + torch.kron(torch.eye(n, dtype=torch.float64), b)


@functools.cache
def sylvester(n: int) -> torch.Tensor:
    """Sylvester H_n (n a power of two), float64, symmetric."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@functools.cache
def special(m: int) -> torch.Tensor:
    """The documented H_m for m in SPECIAL_ORDERS, float64."""
    if m == 12:
        return _paley_1(11)
    if m == 20:
        return _paley_1(19)
    if m == 28:
        return _paley_2(13)
    if m == 40:
        return torch.kron(sylvester(2), special(20))
    raise ValueError(f"no H_{m}; special orders are {SPECIAL_ORDERS}")


def factor(n: int) -> tuple[int, int] | None:
    """n -> (m, 2^k) with m in (1,) + SPECIAL_ORDERS, or None if n has no supported Hadamard."""
    if n >= 1 and n & (n - 1) == 0:
        return 1, n
    for m in SPECIAL_ORDERS:
        if n % m == 0 and (n // m) & (n // m - 1) == 0:
            return m, n // m
    return None


MAX_POW2 = 1 << 16
MAX_SPECIAL_POW2 = 1 << 12  # n = m * 2^k with k <= 12


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def supported_size(n: int) -> tuple[int, int]:
    """n -> (m, 2^k) as ``factor`` splits it, or ValueError naming what is accepted. The limit on 2^k
    applies to the documented form m * 2^k: 40 * 4096 is accepted though ``factor`` splits it as 20 * 8192."""
    f = factor(n) if isinstance(n, int) and n >= 2 else None
    special_ok = any(n % m == 0 and _is_pow2(n // m) and n // m <= MAX_SPECIAL_POW2 for m in SPECIAL_ORDERS)
    if f is None or (f[0] == 1 and n > MAX_POW2) or (f[0] > 1 and not special_ok):
        pad = ""
        if isinstance(n, int) and 1 <= n <= MAX_POW2:
            pad = (
                f", or pass hadamard(x, pad=True) to zero-pad the last dim to {padded_size(n)}, transform and "
                f"keep the first {n} outputs (the convention of fast-hadamard-transform)"
            )
        raise ValueError(
            f"hadamard: last dim n={n} is not supported; use 2^k (2 <= n <= {MAX_POW2}) or m*2^k with "
            f"m in {SPECIAL_ORDERS} and 2^k <= {MAX_SPECIAL_POW2}{pad}"
        )
    return f


def padded_size(n: int) -> int:
    """N = 2^ceil(log2 n), the size ``hadamard(x, pad=True)`` pads n to (fast-hadamard-transform's
    convention; N = n for a power of two, 1 for n = 1)."""
    return 1 << (n - 1).bit_length()


def hadamard_matrix(n: int) -> torch.Tensor:
    """Dense H_n = H_m (x) H_{2^k}, float64 (for tests and small references)."""
    m, p = factor(n)
    return torch.kron(special(m) if m > 1 else torch.ones(1, 1, dtype=torch.float64), sylvester(p))


@functools.cache
def padded_matrix(kind: str, size: int, pad: int, transpose: bool, dtype: torch.dtype, device: str) -> torch.Tensor:
    """``special(size)`` or ``sylvester(size)`` (kind 'special' / 'sylvester'), transposed if asked, zero-padded
    to ``pad x pad`` and cached on ``device`` in ``dtype``: the operand tables the kernels read."""
    h = special(size) if kind == "special" else sylvester(size)
    out = torch.zeros(pad, pad, dtype=torch.float64)
    out[:size, :size] = h.T if transpose else h
    return out.to(dtype=dtype, device=device).contiguous()
