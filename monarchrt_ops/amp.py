"""Autocast policy of the ops (docs/design.md, "Autocast"), stated once.

- ``attention`` and ``monarch_matmul`` are matmul-like: under ``torch.autocast`` they run in the
  autocast dtype, as ``torch.matmul``, ``nn.Linear`` and ``scaled_dot_product_attention`` do. Floating
  inputs other than float64 on the autocast device are cast to ``torch.get_autocast_dtype(device)``
  (the dtype of the enclosing region, not a fixed one), the op runs with autocast off, and its
  outputs are in that dtype (attention's lse stays float32, as for any half input).
- Every other op (``attention_backward``, ``hadamard``, ``hadamard_``, ``kv_cache_write``) ignores
  autocast: it runs in its inputs' dtypes with autocast off inside, so its documented precision holds
  (the Hadamard reference used to pick up bf16 einsums from an enclosing region).

Both are registered as the ops' Autocast kernels (ops.py), so a direct ``torch.ops`` call, an eager
call and a compiled graph (which traces through the same kernels) agree. The public functions apply
:func:`autocast_inputs` before validating, so their dtype checks see the dtypes the op will run in.
"""

from __future__ import annotations

import torch

LOWER_PRECISION_OPS = ("attention", "monarch_matmul")
DEVICE_TYPES = ("cpu", "cuda")


def _enabled(device_type: str) -> bool:
    return device_type in DEVICE_TYPES and torch.is_autocast_enabled(device_type)


def autocast_dtype_of(x: torch.Tensor) -> torch.dtype:
    """The dtype ``x`` has inside a lower-precision op: the autocast dtype when autocast is on for
    its device and ``x`` is floating and not float64, else its own."""
    device_type = x.device.type
    if x.is_floating_point() and x.dtype != torch.float64 and _enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def cast_for(device_type: str, x):
    """``x`` as the Autocast kernel of a lower-precision op on ``device_type`` passes it on."""
    eligible = isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float64
    return x.to(torch.get_autocast_dtype(device_type)) if eligible and x.device.type == device_type else x


def autocast_inputs(*xs):
    """The public functions' view of their inputs: each tensor cast as a lower-precision op would
    cast it (non-tensors untouched, for the validation to name them)."""
    if not torch._C._is_any_autocast_enabled():  # the common case, one call instead of a cast per input
        return xs if len(xs) != 1 else xs[0]
    out = tuple(x.to(autocast_dtype_of(x)) if isinstance(x, torch.Tensor) else x for x in xs)
    return out if len(out) != 1 else out[0]


def register(lib, name: str, op) -> None:
    """Autocast kernels of one op for every device type of DEVICE_TYPES (both dispatchers: the C++
    one for eager calls, the Python one that tracing uses), as ``torch.library.register_autocast``
    does, but reading the region's dtype at call time and with the neutral policy for the others."""
    cast = name in LOWER_PRECISION_OPS
    overload = op.default
    for device_type in DEVICE_TYPES:
        key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        key = getattr(torch._C.DispatchKey, key_name)

        def kernel(*args, key=key, device_type=device_type):
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
                return overload(*(cast_for(device_type, a) for a in args) if cast else args)

        if overload.has_kernel_for_dispatch_key(key):
            overload.py_kernels.pop(key)
        overload.py_impl(key)(kernel)
        lib.impl(name, lambda _keyset, *args, kernel=kernel: kernel(*args), key_name, with_keyset=True)
