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

:class:`Prepared` is the same cache for a launcher that builds a launch's non-tensor arguments once per
problem: a call then keys only the device, the instrumentation mode and its tensors' dtypes and
alignment, and the argument list after the tensors is kept with the compiled kernel.

On by default; ``MONARCHRT_TRITON_FAST_LAUNCH=0`` takes Triton's own path for every launch (read per
launch through ``registry.env_get``).
tests/test_launch.py checks on a GPU that cached launches equal Triton's own bit for bit and that a
repeated launch skips ``JITFunction.run``.
"""

from __future__ import annotations

import operator
from functools import reduce

import torch

from ..registry import env_get

_cache: dict = {}  # _key -> (kernel, compiled, *_tail(kernel, positional arguments))
_splits: dict = {}  # (keyword names, argument types) -> (getter of the tensors, getter of the other values)
_MAX_CACHED = 4096  # distinct (kernel, specialisation) pairs before the cache starts over
_triton: tuple = ()  # (knobs, driver, JITFunction), imported by the first launch (importing this never needs Triton)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for grids. ``triton.cdiv`` is a ``constexpr_function`` in Triton 3.6, which unwraps
    its arguments on every host call: ~6 us against ~0.3 us for this on the CI machine."""
    return -(-a // b)


def _imports() -> tuple:
    global _triton
    if not _triton:
        from triton import knobs
        from triton.runtime.driver import driver
        from triton.runtime.jit import JITFunction

        _triton = (knobs, driver, JITFunction)
    return _triton


def _getter(positions: list):
    """``values -> tuple of values[i] for i in positions`` at C speed (itemgetter of one returns a scalar);
    positions are indices of a tuple or keys of a dict."""
    if not positions:
        return lambda values: ()
    if len(positions) == 1:
        i = positions[0]
        return lambda values: (values[i],)
    return operator.itemgetter(*positions)


def _split(names: tuple, types: tuple) -> tuple:
    """Where the tensors sit among a call's values and where the rest, per argument types (cached)."""
    split = _splits.get((names, types))
    if split is None:
        tensors = [i for i, kind in enumerate(types) if issubclass(kind, torch.Tensor)]
        others = [i for i in range(len(types)) if i not in tensors]
        split = _splits[(names, types)] = (_getter(tensors), _getter(others))
    return split


def _key(kernel, device, instrumentation, args, kwargs) -> tuple:
    """The cache key of one call, at least as fine as Triton's specialisation: every value's type
    (1, 1.0 and True compare equal: a float or bool is thereby keyed by type and value), a tensor by
    dtype and whether its address is 16-byte aligned, anything else by value (an int by value is
    finer than Triton's classes of ints: == 1, % 16 == 0, 32 or 64 bits); keyword arguments by name
    and the same rule; then the device and Triton's instrumentation mode. The kernel by ``id``:
    its ``__hash__`` is Python (a lock and a string hash), and the cache's entry holds the kernel, so
    the id cannot pass to another object while the entry lives. Its loops run per argument types,
    once (:func:`_split`); per call, one loop over the tensors (this runs on every launch)."""
    values = (*args, *kwargs.values())
    names = tuple(kwargs)  # the names fix where each value sits
    types = tuple(map(type, values))
    tensors, others = _split(names, types)
    key = [id(kernel), device, instrumentation, names, types, others(values)]
    for t in tensors(values):
        key.append(t.dtype)
        key.append(t.data_ptr() % 16 == 0)
    return tuple(key)


def _enabled(kernel, knobs) -> bool:
    """Whether a launch may take the cache: checked on every launch (the knobs and the environment
    can change at any time); ~0.3 us. A launch hook knob holds nothing to call when it is None or
    (Triton 3.6) an empty ``HookChain`` (tested inline: a function per hook was two Python calls a launch)."""
    runtime = knobs.runtime
    enter, exit_ = runtime.launch_enter_hook, runtime.launch_exit_hook
    return (
        type(kernel) is (_triton or _imports())[2]
        and not kernel.pre_run_hooks
        and not runtime.debug
        and (enter is None or getattr(enter, "calls", None) == [])
        and (exit_ is None or getattr(exit_, "calls", None) == [])
        and env_get("MONARCHRT_TRITON_FAST_LAUNCH") != "0"
    )


def current() -> tuple:
    """``(device, stream)``: Triton's active driver's current device and its current stream, where
    :func:`launch` and :class:`Prepared` launch (for a launcher with several launches per call, to ask
    once). Triton's CUDA driver asks ``torch.cuda.current_device``, whose Python (``_lazy_init`` and
    ``is_initialized``: three calls) ends in ``torch._C._cuda_getDevice``, which initialises CUDA lazily
    itself: asked directly where the driver's function is that one. ``(None, None)`` where Triton has no
    active driver (no GPU: the interpreter, a compile-only run): no launch takes the fast path there."""
    try:
        active = (_triton or _imports())[1].active
    except RuntimeError:  # Triton's "0 active drivers"; a launch that needs one raises it again
        return None, None
    get_device = active.get_current_device
    device = torch._C._cuda_getDevice() if get_device is torch.cuda.current_device else get_device()
    return device, active.get_current_stream(device)


def _tail(kernel, positional: int) -> tuple:
    """``kernel``'s parameters after the first ``positional``: a getter of their values from a dict by
    name (None if there are none), and their defaults by name."""
    params = list(kernel.signature.parameters.values())[positional:]
    return (_getter([p.name for p in params]) if params else None), {p.name: p.default for p in params}


def launch(kernel, grid: tuple, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``, through the cache above once the kernel has run with the same
    specialisation."""
    knobs, driver, _ = _triton or _imports()
    if callable(grid) or not _enabled(kernel, knobs):  # a grid of the meta-parameters: Triton's path
        return kernel[grid](*args, **kwargs)
    device = driver.active.get_current_device()
    key = _key(kernel, device, knobs.compilation.instrumentation_mode, args, kwargs)
    hit = _cache.get(key)
    if hit is None:
        compiled = kernel[grid](*args, **kwargs)
        if hasattr(compiled, "result"):  # an asynchronous compile's future
            compiled = compiled.result()
        if len(_cache) >= _MAX_CACHED:
            _cache.clear()
        _cache[key] = (kernel, compiled, *_tail(kernel, len(args)))
        return compiled
    _, compiled, tail, defaults = hit
    if tail is not None:  # the parameters after the positional ones: given by keyword, else their defaults
        args = (*args, *tail({**defaults, **kwargs}))
    g = (*grid, 1, 1)
    stream = driver.active.get_current_stream(device)
    compiled.run(g[0], g[1], g[2], stream, compiled.function, compiled.packed_metadata, None, None, None,
                 *args)  # no launch metadata and no hooks (_enabled checked there are none)  # fmt: skip
    return compiled


_dtype = operator.attrgetter("dtype")
_data_ptr = torch.Tensor.data_ptr
_residue16 = (15).__and__  # an address's offset from 16-byte alignment


class Prepared:
    """One launch of ``kernel`` on a fixed ``grid`` whose arguments are some tensors followed by fixed
    values: ``Prepared(kernel, grid, rest, kwargs)(*tensors)`` is ``launch(kernel, grid, *tensors,
    *rest, **kwargs)``. For launchers that cache their launches per problem (the non-tensor values
    built once): a call keys only what can still vary, the device, Triton's instrumentation mode and
    each tensor's dtype and address modulo 16 (finer than its 16-byte alignment; one value where every
    address is aligned), and on a hit calls the compiled launcher with the argument list built once.
    Anything :func:`_enabled` refuses (checked on every call: the environment and Triton's knobs are not
    cached) takes Triton's ``kernel[grid]``; a miss takes :func:`launch`, so the compiled kernel is
    always the one :func:`launch` (and Triton) would pick: the tensors come first in ``kernel``'s
    parameters, and ``rest`` and ``kwargs`` are fixed."""

    __slots__ = ("kernel", "grid", "rest", "kwargs", "_grid3", "_hits")

    def __init__(self, kernel, grid: tuple, rest: tuple, kwargs: dict):
        self.kernel, self.grid, self.rest, self.kwargs = kernel, tuple(grid), tuple(rest), dict(kwargs)
        self._grid3 = (*self.grid, 1, 1)[:3]
        # (device, instrumentation, residues, *dtypes) -> (compiled, its launcher, function, packed metadata,
        # arguments after the tensors); the launcher and function read once the first launch loaded them
        # (``CompiledKernel.run`` is a property: a Python call a launch)
        self._hits: dict = {}

    def __call__(self, *tensors):
        device, stream = current()
        return self.on(device, stream, *tensors)

    def on(self, device, stream, *tensors):
        """The launch on ``device`` and ``stream``, Triton's current ones (:func:`current`), asked once
        by a caller with several launches."""
        knobs = (_triton or _imports())[0]
        kernel = self.kernel
        if not _enabled(kernel, knobs):
            return kernel[self.grid](*tensors, *self.rest, **self.kwargs)
        # every address 16-byte aligned (their OR is), the common case: one value; else each one's residue
        aligned = not reduce(operator.or_, map(_data_ptr, tensors)) & 15
        residues = None if aligned else tuple(map(_residue16, map(_data_ptr, tensors)))
        key = (device, knobs.compilation.instrumentation_mode, residues, *map(_dtype, tensors))
        hit = self._hits.get(key)
        if hit is None:
            compiled = launch(kernel, self.grid, *tensors, *self.rest, **self.kwargs)
            positional = len(tensors) + len(self.rest)
            tail, defaults = _tail(kernel, positional)
            after = (*self.rest, *(tail({**defaults, **self.kwargs}) if tail is not None else ()))
            if len(self._hits) >= 64:  # (devices x dtypes x alignments: a handful in practice)
                self._hits.clear()
            self._hits[key] = (compiled, compiled.run, compiled.function, compiled.packed_metadata, after)
            return compiled
        compiled, run, function, packed_metadata, after = hit
        g = self._grid3
        run(g[0], g[1], g[2], stream, function, packed_metadata, None, None, None, *tensors, *after)
        return compiled


# --- scratch kept between calls --------------------------------------------------------------------
# Internal buffers that a launcher's kernels overwrite wherever they are read on every call, and that
# it never returns (the attention forward's stage-R intermediates; its lse where the caller discards
# it; the Monarch matmul's y1), kept between calls instead of allocated on each one. The rule that
# makes reuse safe without a synchronisation: a set of buffers is used only on the stream it was
# first used on (the key: what the buffers are, Triton's current device and stream), so the stream
# orders every use after the previous one, as the caching allocator orders a freed block's next use;
# it is checked out for the length of a call (another thread on the same stream meanwhile gets buffers
# of its own); never during a CUDA graph capture (allocated as before, from the graph's pool: kept
# buffers would live outside it and a replay could run on another stream); and the process keeps at
# most MONARCHRT_SCRATCH_MB (default 64) MiB of it over every problem and stream, 0 keeping none
# (read when buffers are allocated). torch.cuda.empty_cache() does not free it: release_scratch() does.
_scratch: dict = {}  # (what, device, stream) -> the buffers
_scratch_held = [0, 0]  # [bytes kept (or checked out to be kept), generation: release_scratch() bumps it]
SCRATCH_MB_DEFAULT = 64


_capturing: list = []  # [whether the current stream is capturing a CUDA graph: torch's C query], on first use


def _capture_query() -> list:
    """torch's query (a torch built without CUDA has only a stand-in that raises: it never captures)."""
    _capturing[:] = [torch._C._cuda_isCurrentStreamCapturing if torch._C._has_cuda else bool]  # bool() is False
    return _capturing


def _nbytes(buffers) -> int:
    return sum(t.numel() * t.element_size() for t in buffers)


def _scratch_budget() -> int:
    value = env_get("MONARCHRT_SCRATCH_MB")
    if value is None or not value.strip():
        return SCRATCH_MB_DEFAULT << 20
    try:
        mb = float(value)
    except ValueError:
        mb = -1.0
    if not mb >= 0:
        raise ValueError(f"MONARCHRT_SCRATCH_MB={value!r}: use a number of MiB >= 0 (0 keeps no scratch)")
    return int(mb * (1 << 20))


def take_scratch(what, device, stream, make) -> tuple:
    """``(buffers, ticket)``: the kept buffers ``what`` (a hashable statement of their shapes, dtypes and
    device) for ``stream`` of ``device``, or ``make()``'s new ones, kept where the budget allows. Give
    them back with :func:`keep_scratch` after the call's last launch; ``ticket`` None: not kept."""
    if (_capturing or _capture_query())[0]():
        return make(), None
    key = (what, device, stream)
    buffers = _scratch.pop(key, None)
    if buffers is None:
        buffers = make()
        nbytes = _nbytes(buffers)
        if _scratch_held[0] + nbytes > _scratch_budget():
            return buffers, None
        _scratch_held[0] += nbytes
    return buffers, (key, _scratch_held[1])


def keep_scratch(ticket, buffers) -> None:
    """Give back what :func:`take_scratch` lent, for the next call on the same stream."""
    if ticket is not None and ticket[1] == _scratch_held[1]:
        if _scratch.setdefault(ticket[0], buffers) is not buffers:  # another thread's set came first
            _scratch_held[0] -= _nbytes(buffers)


def release_scratch() -> None:
    """Drop every kept buffer (the caching allocator frees them once no call holds them)."""
    _scratch.clear()
    _scratch_held[0] = 0
    _scratch_held[1] += 1
