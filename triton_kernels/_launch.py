"""Kernel launches without Triton's per-call argument binding (docs/design.md, Host overhead).

``kernel[grid](*args)`` binds every argument through Triton's generated binder and specialises it
(type, alignment, divisibility: ``native_specialize_impl`` per argument), builds the compile-cache key
and checks the kernel's globals: ~40 us of host time per launch on the H200 machine, half of an eager
attention call. :func:`launch` keys its own cache on values at least as fine as what that specialisation can depend
on (:func:`_key`): ints, strings and None by value, floats and bools by type and value, a tensor by
dtype and 16-byte alignment, keyword arguments (constexprs, num_warps, num_stages) by name and value,
the device and Triton's instrumentation mode.
That key is at least as fine as Triton's, so one entry always maps to the one compiled kernel
Triton would pick. A miss (and anything unusual: a kernel that is not a plain ``JITFunction``, the
interpreter, launch hooks set) goes through ``kernel[grid]``, which compiles if needed and returns the
compiled kernel that the cache then keeps; so does a grid given as a function of the meta-parameters.
Not checked on a hit: that a global a kernel reads changed since it compiled (ours read none that change).

On by default; ``MONARCHRT_TRITON_FAST_LAUNCH=0`` takes Triton's own path for every launch.
tests/test_launch.py checks on a GPU that cached launches equal Triton's own bit for bit and that a
repeated launch skips ``JITFunction.run``.
"""

from __future__ import annotations

import os

import torch

_cache: dict = {}
_plans: dict = {}  # JITFunction -> (name, default) of each parameter
_MAX_CACHED = 4096  # distinct (kernel, specialisation) pairs before the cache starts over


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for grids. ``triton.cdiv`` is a ``constexpr_function`` in Triton 3.6, which unwraps
    its arguments on every host call: ~6 us against ~0.3 us for this on the CI machine."""
    return -(-a // b)


def _plan(kernel):
    """Per parameter of ``kernel``, in order: (name, default)."""
    plan = _plans.get(kernel)
    if plan is None:
        defaults = [p.default for p in kernel.signature.parameters.values()]
        plan = _plans[kernel] = [(p.name, d) for p, d in zip(kernel.params, defaults, strict=True)]
    return plan


def _key(kernel, device, instrumentation, args, kwargs) -> tuple:
    """The cache key of one call, at least as fine as Triton's specialisation: an int, string or None
    by value (finer than Triton's classes of ints: == 1, % 16 == 0, 32 or 64 bits), a float or bool
    by type and value (1, 1.0 and True compare equal), a tensor by dtype and whether its address is
    16-byte aligned, anything else by type and value; keyword arguments by name and the same rule;
    then the device and Triton's instrumentation mode. One inline loop: this runs on every launch
    (a function call per argument cost ~20 us for a 31-argument kernel on the CI machine)."""
    key = [kernel, device, instrumentation, tuple(kwargs)]  # the names fix where each value sits
    for a in (*args, *kwargs.values()):
        kind = type(a)
        if kind is int or kind is str or a is None:
            key.append(a)
        elif isinstance(a, torch.Tensor):
            key.append((a.dtype, a.data_ptr() % 16 == 0))
        else:
            key.append((kind, a))
    return tuple(key)


def _no_hooks(hook) -> bool:
    """Whether a launch hook knob holds nothing to call: None, or (Triton 3.6) an empty ``HookChain``."""
    return hook is None or getattr(hook, "calls", None) == []


def _enabled(kernel, knobs) -> bool:
    from triton.runtime.jit import JITFunction

    return (
        type(kernel) is JITFunction
        and not kernel.pre_run_hooks
        and _no_hooks(knobs.runtime.launch_enter_hook)
        and _no_hooks(knobs.runtime.launch_exit_hook)
        and not knobs.runtime.debug
        and os.environ.get("MONARCHRT_TRITON_FAST_LAUNCH", "1") != "0"
    )


def launch(kernel, grid: tuple, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``, through the cache above once the kernel has run with the same
    specialisation."""
    from triton import knobs
    from triton.runtime.driver import driver

    if callable(grid) or not _enabled(kernel, knobs):  # a grid of the meta-parameters: Triton's path
        return kernel[grid](*args, **kwargs)
    device = driver.active.get_current_device()
    key = _key(kernel, device, knobs.compilation.instrumentation_mode, args, kwargs)
    compiled = _cache.get(key)
    if compiled is None:
        compiled = kernel[grid](*args, **kwargs)
        if hasattr(compiled, "result"):  # an asynchronous compile's future
            compiled = compiled.result()
        if len(_cache) >= _MAX_CACHED:
            _cache.clear()
        _cache[key] = compiled
        return compiled
    full = list(args)
    for name, default in _plan(kernel)[len(args) :]:
        full.append(kwargs.get(name, default))
    g = (*grid, 1, 1)
    stream = driver.active.get_current_stream(device)
    compiled.run(g[0], g[1], g[2], stream, compiled.function, compiled.packed_metadata, None, None, None,
                 *full)  # no launch metadata and no hooks (_enabled checked there are none)  # fmt: skip
    return compiled
