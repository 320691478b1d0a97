"""Public Monarch attention functions: validation, then one call of the torch op."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch.utils.weak import WeakIdKeyDictionary

from . import ops
from .amp import autocast_dtype_of, autocast_inputs
from .layout import Tiling, causal_block_tiles, from_tiles, tile_shape, to_tile_sequence, to_tiles
from .limits import MAX_HEAD_DIM, MAX_NUM_ITERS, SM_SCALE_RANGE, check_cache_buffers
from .registry import _state as _registry_state
from .registry import backend_names

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, numbers.Integral)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = value if isinstance(value, int) else int(value)  # numpy integers
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value} must be <= {maximum}")
    return value


def _check_tensor(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be (B, S, nh, d), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}.dtype={x.dtype} is not supported; use one of {FLOAT_DTYPES}")
    return x


def _check_frame_shape(frame_shape) -> tuple[int, int]:
    if not (isinstance(frame_shape, (tuple, list)) and len(frame_shape) == 2):
        raise TypeError(f"frame_shape must be a pair (H, W) of ints, got {frame_shape!r}")
    h, w = frame_shape
    return _check_int("frame_shape[0] (H)", h), _check_int("frame_shape[1] (W)", w)


@ops.traceable_errors
def make_tiling(frame_shape, f_tied: int = 1, h_reduce: int = 1, w_reduce: int = 1) -> Tiling:
    """Validated :class:`Tiling` (raises ValueError/TypeError naming the bad value)."""
    h, w = _check_frame_shape(frame_shape)
    f_tied, h_reduce, w_reduce = (
        _check_int("f_tied", f_tied),
        _check_int("h_reduce", h_reduce),
        _check_int("w_reduce", w_reduce),
    )
    return Tiling(h, w, f_tied, h_reduce, w_reduce)  # checks H % h_reduce and W % w_reduce


def _check_seq(name: str, seq: int, tiling: Tiling) -> int:
    hw = tiling.tokens_per_frame
    if seq == 0 or seq % hw:
        raise ValueError(f"{name}: S={seq} is not a positive multiple of H*W={hw} ({tiling.frame_h}x{tiling.frame_w})")
    frames = seq // hw
    if frames % tiling.f_tied:
        raise ValueError(f"{name}: {frames} frames are not divisible by f_tied={tiling.f_tied}")
    return frames


def _check_qkv(q, k, v, names=("q", "k", "v"), autocast: bool = False) -> None:
    """``autocast``: compare the dtypes the tensors have inside the attention op (amp.py), for a
    cache that is cast slice by slice."""
    nq, nk, nv = names
    q, k, v = (_check_tensor(n, x) for n, x in zip(names, (q, k, v), strict=True))
    if k.shape != v.shape:
        raise ValueError(f"{nk} and {nv} must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    for what, i in (("batch", 0), ("heads", 2), ("head_dim", 3)):
        if q.shape[i] != k.shape[i]:
            raise ValueError(f"{nq} and {nk} differ in {what}: {q.shape[i]} vs {k.shape[i]}")
    dtypes = [autocast_dtype_of(x) if autocast else x.dtype for x in (q, k, v)]
    if len(set(dtypes)) != 1:
        raise TypeError(f"{nq}, {nk}, {nv} must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{nq}, {nk}, {nv} must be on one device, got {q.device}, {k.device}, {v.device}")
    d = q.shape[3]
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim={d} is not supported; use 1..{MAX_HEAD_DIM}")


def _check_scale(sm_scale, head_dim: int, dtype: torch.dtype) -> float:
    if sm_scale is None:
        return head_dim**-0.5
    if isinstance(sm_scale, bool) or not isinstance(sm_scale, numbers.Real):
        raise TypeError(f"sm_scale must be a float or None, got {type(sm_scale).__name__}")
    sm_scale = float(sm_scale)  # numpy scalars
    lo, hi = SM_SCALE_RANGE[dtype]
    if not (math.isfinite(sm_scale) and lo <= sm_scale <= hi):
        raise ValueError(f"sm_scale={sm_scale} must be a positive finite number in [{lo:g}, {hi:g}] for {dtype} inputs")
    return sm_scale


def _check_backend(backend) -> str:
    if backend is None:
        return ""
    names = backend_names("attention")
    if backend not in names:
        raise ValueError(f"backend={backend!r} is not one of {names} (or None for automatic)")
    return backend


@ops.traceable_errors
def monarch_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    frame_shape: tuple[int, int],
    *,
    f_tied: int = 1,
    h_reduce: int = 1,
    w_reduce: int = 1,
    sm_scale: float | None = None,
    causal_block_frames: int | None = None,
    num_iters: int = 1,
    backend: str | None = None,
) -> torch.Tensor:
    """Monarch attention (MonarchRT / VMonarch) on video tokens in natural order.

    Args:
        q: ``(B, Sq, nh, d)``; ``Sq`` a multiple of ``H*W`` (and of ``f_tied`` frames).
        k, v: ``(B, Skv, nh, d)``; ``Skv`` may differ from ``Sq`` (attention over a KV slice).
        frame_shape: ``(H, W)`` tokens per frame after patchify, e.g. ``(30, 52)``.
        f_tied, h_reduce, w_reduce: tiling (docs/math.md): a tile has ``f_tied*H/h_reduce`` rows and
            ``W/w_reduce`` columns. H must divide by h_reduce, W by w_reduce.
        sm_scale: softmax scale, default ``d ** -0.5``; kept in full precision.
        causal_block_frames: block-causal mask in frames (``Sq == Skv`` required, a multiple of
            f_tied): query frame block ``t // c`` sees key frames of blocks ``<= t // c``.
        num_iters: alternating updates (1 = MonarchRT; > 1 = VMonarch/MonarchAttention style).
        backend: 'reference', 'triton', 'cuda' or None (automatic; see ``python -m monarchrt_ops info``).

    Returns:
        ``(B, Sq, nh, d)`` in q's dtype; under ``torch.autocast`` in the autocast dtype (q, k, v are
        cast as for ``scaled_dot_product_attention``; float64 is kept), eagerly and compiled.

    Inputs must be finite: NaN/inf are not checked (that would need a device sync) and propagate.
    Non-contiguous inputs are accepted. Raises TypeError/ValueError for bad input before any kernel
    runs, and ValueError when an explicit ``backend`` cannot run the call.

    Example:
        >>> q = k = v = torch.randn(1, 2 * 6 * 10, 2, 16)
        >>> monarch_attention(q, k, v, (6, 10)).shape
        torch.Size([1, 120, 2, 16])
    """
    return _attention_call(
        q, k, v, frame_shape, f_tied, h_reduce, w_reduce, sm_scale, causal_block_frames, num_iters, backend,
        out_only=True,
    )[0]  # fmt: skip


@ops.traceable_errors
def monarch_attention_with_lse(
    q,
    k,
    v,
    frame_shape,
    *,
    f_tied=1,
    h_reduce=1,
    w_reduce=1,
    sm_scale=None,
    causal_block_frames=None,
    num_iters=1,
    backend=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`monarch_attention` that also returns the stage-L log-normaliser ``(B, Sq, nh)``
    (natural log, float32; float64 for float64 inputs). Both outputs are differentiable."""
    out, lse, tiling = _attention_call(
        q, k, v, frame_shape, f_tied, h_reduce, w_reduce, sm_scale, causal_block_frames, num_iters, backend
    )
    return out, from_tiles(lse.unsqueeze(-1), tiling).squeeze(-1)


def _attention_call(
    q, k, v, frame_shape, f_tied, h_reduce, w_reduce, sm_scale, causal_block_frames, num_iters, backend, out_only=False
):
    """Validate a natural-order call and run it -> ``(out, lse in tile order, tiling)``.

    The outcome of the checks is cached per argument key (shapes, strides, dtypes, devices, the Python
    arguments and their exact types), so a repeated call costs a dict lookup, not the checks.
    ``out_only``: the caller returns ``out`` alone, so an eager call may take the key's prepared forward
    (:func:`_prepare`; lse and tiling are then None)."""
    args = (frame_shape, f_tied, h_reduce, w_reduce, sm_scale, causal_block_frames, num_iters, backend)
    key = None if torch.compiler.is_compiling() else _call_key(q, k, v, *args)
    call = _VALIDATED["call"].get(key) if key is not None else None
    if out_only and call is not None and ops.ready(call, q, k, v):  # the eager fast path: the prepared forward
        out = call.run(q, k, v)
        if out is not None:  # (None: these tensors' addresses refuse it, prepare_fwd)
            return out[0], None, None
    q, k, v = autocast_inputs(q, k, v)  # under autocast: the dtype the op runs in (amp.py)
    checked = _validate_call(q, k, v, *args) if call is None else call.checked
    if call is None and key is not None:
        call = _remember("call", key, checked)
    tiling, scale, cbt, num_iters, backend, shapes = checked
    if shapes is None:  # tile order is a copy
        qt, kt, vt = to_tiles(q, tiling), to_tiles(k, tiling), to_tiles(v, tiling)
    else:  # the identity tiling: to_tiles of the checked tensors is one reshape each
        # (shapes as separate ints: ~0.4 us less a reshape than a tuple, the argument parser's)
        qt, kt, vt = q.reshape(*shapes[0]), k.reshape(*shapes[1]), v.reshape(*shapes[1])
        if out_only and call is not None:
            out = _prepare(call, (q, k, v), (qt, kt, vt), scale, cbt, num_iters, backend)
            if out is not None:
                return out, None, None
    out, lse = _attention_tiles(qt, kt, vt, tiling, scale, cbt, num_iters, backend, shapes is not None)
    return out, lse, tiling


# per public function: the entry of each argument key (see _call_key, _remember): the validate function's
# tuple, and the eager fast path's prepared forward (ops.CallEntry, ops.prepare_attention)
_VALIDATED: dict[str, dict[tuple, ops.CallEntry]] = {"call": {}, "kv": {}}
_EXACT = (int, float, str, type(None))
_EXACT_TYPES = frozenset(_EXACT)
_MAX_CACHED_CALLS = 4096  # many distinct shapes: start over rather than grow


def _remember(which: str, key: tuple, checked: tuple) -> ops.CallEntry:
    """The entry of a call whose checks passed, kept in ``_VALIDATED[which]`` under ``key``. Callers have
    a key only when torch.compile is not tracing (nothing here runs under it: Dynamo guards on the
    size of a dict the trace reads, so every eager call that added an entry would recompile the graph;
    torch 2.11 did so at every new KV length)."""
    call = ops.CallEntry(checked)
    cache = _VALIDATED[which]
    if len(cache) >= _MAX_CACHED_CALLS:
        cache.clear()
    cache[key] = call
    return call


def _prepare(call: ops.CallEntry, tensors: tuple, tiles: tuple, scale, cbt, num_iters, backend):
    """Ask once per registry state for the prepared forward of an eager call on ``tiles``, the tile-order
    views of ``tensors`` (natural order with the identity tiling, or a KV cache from its first row: the
    same data pointers), and run it on ``tensors``: its output, or None (not eager, ``tiles`` not views
    of ``tensors``' memory, nothing prepared, or these tensors' addresses refuse it)."""
    state = _registry_state()
    if call.state == state or not ops.eager(*tiles):
        return None
    if any(t.data_ptr() != x.data_ptr() for t, x in zip(tiles, tensors, strict=True)):  # (a reshape that copied)
        call.state, call.run = state, None
        return None
    call.state, call.run = ops.prepare_attention(*tiles, scale, cbt, num_iters, backend, tensors[0].shape)
    out = call.run(*tensors) if ops.ready(call, *tensors) else None
    return None if out is None else out[0]


def _call_key(q, k, v, frame_shape, *scalars) -> tuple | None:
    """The key of a call whose checks may be cached, or None (checked every time): tensors of type
    torch.Tensor, a tuple frame shape and scalars of builtin types. Strides are in it for the prepared
    forward (:func:`_prepare`), which reads the tensors' layout from the key.
    The key holds the scalars' types: True == 1.0 == 1 with one hash, but only 1 passes the checks."""
    if type(frame_shape) is not tuple or torch._C._is_any_autocast_enabled():
        return None  # (under autocast the dtype checks depend on the region: checked every time)
    values = (*frame_shape, *scalars)
    types = tuple(map(type, values))
    if not _EXACT_TYPES.issuperset(types) or type(q) is not torch.Tensor or type(k) is not torch.Tensor:
        return None
    if type(v) is not torch.Tensor:
        return None
    return (q.shape, k.shape, v.shape, q.stride(), k.stride(), v.stride(), q.dtype, k.dtype, v.dtype,
            q.device, k.device, v.device, values, types)  # fmt: skip


def _validate_call(
    q, k, v, frame_shape, f_tied, h_reduce, w_reduce, sm_scale, causal_block_frames, num_iters, backend
) -> tuple[Tiling, float, int, int, str, tuple | None]:
    """Every check of a natural-order call -> ``(tiling, sm_scale, causal_block_tiles, num_iters, backend,
    shapes)``; ``shapes``: q's and k's tile-order shapes where the tiling is the identity (to_tiles is
    then a reshape), else None."""
    _check_qkv(q, k, v)
    tiling = make_tiling(frame_shape, f_tied, h_reduce, w_reduce)
    num_iters, scale = _check_query_args(q, tiling, num_iters, sm_scale)
    _check_seq("k", k.shape[1], tiling)
    cbf = 0
    if causal_block_frames is not None:
        cbf = _check_int("causal_block_frames", causal_block_frames, maximum=q.shape[1] // tiling.tokens_per_frame)
        if q.shape[1] != k.shape[1]:
            raise ValueError(f"causal_block_frames needs Sq == Skv, got Sq={q.shape[1]}, Skv={k.shape[1]}")
        if cbf % f_tied:
            raise ValueError(f"causal_block_frames={cbf} must be a multiple of f_tied={f_tied}")
    shapes = (tile_shape(q.shape, tiling), tile_shape(k.shape, tiling)) if tiling.is_identity() else None
    return tiling, scale, causal_block_tiles(tiling, cbf), num_iters, _check_backend(backend), shapes


def _check_query_args(q, tiling: Tiling, num_iters, sm_scale) -> tuple[int, float]:
    """The checks every attention call shares once its tensors are known: q's length, num_iters, sm_scale."""
    _check_seq("q", q.shape[1], tiling)
    num_iters = _check_int("num_iters", num_iters, maximum=MAX_NUM_ITERS)
    return num_iters, _check_scale(sm_scale, q.shape[3], q.dtype)


def _attention_tiles(qt, kt, vt, tiling: Tiling, scale: float, cbt: int, num_iters: int, backend: str,
                     identity: bool):  # fmt: skip
    """The op on validated tile-order tensors (``cbt`` in tiles, ``backend`` checked) -> ``(out in
    natural order, lse in tile order)``; the callers that return lse convert it, the others never pay for it.
    ``identity``: the tiling is the identity, so from_tiles of the op's output is one reshape."""
    z, lse = ops.call_attention(qt, kt, vt, scale, cbt, num_iters, backend)
    if identity:
        bsz, tiles, b1, b2, nh, d = z.shape
        return z.reshape(bsz, tiles * b1 * b2, nh, d), lse
    return from_tiles(z, tiling), lse


@ops.traceable_errors
def write_kv_cache(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    new_k: torch.Tensor,
    new_v: torch.Tensor,
    start_frame: int,
    frame_shape: tuple[int, int],
    *,
    f_tied: int = 1,
    h_reduce: int = 1,
    w_reduce: int = 1,
) -> None:
    """Write new keys/values into KV-cache buffers, in place, in tile order. Returns nothing.

    Args:
        k_cache, v_cache: ``(B, max_frames*H*W, nh, d)`` buffers (tokens stored in tile order).
        new_k, new_v: ``(B, n_new_frames*H*W, nh, d)`` in natural order.
        start_frame: first frame to write; a multiple of f_tied, and the chunk must fit.

    This is the only way the package changes a cache: attention never writes it. The write is not
    differentiable; pass ``new_k``/``new_v`` to :func:`monarch_attention_kv_cache` for gradients.

    Example:
        >>> kc, vc = torch.zeros(1, 4 * 60, 2, 16), torch.zeros(1, 4 * 60, 2, 16)
        >>> nk = nv = torch.randn(1, 60, 2, 16)
        >>> write_kv_cache(kc, vc, nk, nv, 1, (6, 10))
    """
    _check_qkv(new_k, k_cache, v_cache, names=("new_k", "k_cache", "v_cache"))
    _check_qkv(new_v, k_cache, v_cache, names=("new_v", "k_cache", "v_cache"))
    if new_k.shape != new_v.shape:
        raise ValueError(f"new_k and new_v differ in shape: {tuple(new_k.shape)} vs {tuple(new_v.shape)}")
    check_cache_buffers(k_cache, v_cache, new_k, new_v)
    tiling = make_tiling(frame_shape, f_tied, h_reduce, w_reduce)
    max_frames = _check_seq("k_cache", k_cache.shape[1], tiling)
    n_new = _check_seq("new_k", new_k.shape[1], tiling)
    _check_int("start_frame", start_frame, minimum=0)
    if start_frame % f_tied:
        raise ValueError(f"start_frame={start_frame} must be a multiple of f_tied={f_tied}")
    if start_frame + n_new > max_frames:
        raise ValueError(f"frames [{start_frame}, {start_frame + n_new}) do not fit a cache of {max_frames} frames")
    start = start_frame * tiling.tokens_per_frame
    with torch.no_grad():
        ops.kv_cache_write(k_cache, v_cache, to_tile_sequence(new_k, tiling), to_tile_sequence(new_v, tiling), start)
    if not torch.compiler.is_compiling():
        _last_writes[k_cache] = _Write(start_frame, n_new, _memory(new_k), _memory(new_v), _memory(k_cache),
                                       _memory(v_cache))  # fmt: skip


def _memory(x: torch.Tensor) -> tuple:
    """Where ``x``'s elements are and which version of them: (storage, offset, shape, strides, dtype, version).
    A view or ``detach()`` of a tensor shares its storage and version counter; an in-place change bumps it."""
    return (x.untyped_storage().data_ptr(), x.storage_offset(), tuple(x.shape), x.stride(), x.dtype, x._version)


@dataclass(frozen=True)
class _Write:
    """The last :func:`write_kv_cache` into a cache: frames ``[start_frame, start_frame + frames)``
    from new K/V at ``new_k``/``new_v`` (:func:`_memory`), leaving the caches at ``k_cache``/``v_cache``."""

    start_frame: int
    frames: int
    new_k: tuple
    new_v: tuple
    k_cache: tuple
    v_cache: tuple


# k_cache -> its last write; weak, so a cache that is freed takes its record with it
_last_writes: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _is_frames_of(x: torch.Tensor, written: tuple, first: int, tokens_per_frame: int) -> bool:
    """Whether ``x`` is the slice from frame ``first`` on of the tensor at ``written`` (:func:`_memory`),
    unchanged since (a view of it or of a detached copy)."""
    ptr, offset, shape, stride, dtype, version = written
    n = x.shape[1]
    want = (ptr, offset + first * tokens_per_frame * stride[1], (shape[0], n, *shape[2:]), stride, dtype, version)
    return _memory(x) == want


def _check_new_kv_written(k_cache, v_cache, new_k, new_v, kv_frames: int, tiling: Tiling) -> None:
    """new_k/new_v stand for cache frames ``[kv_frames - n_new, kv_frames)``: their gradients are those
    rows' gradients, so they must be what those rows hold. Cheap when they are (part of) the last
    recorded write, unchanged; otherwise the rows are compared with them (a device sync). Not while
    torch.compile traces (memory cannot be compared there)."""
    if torch.compiler.is_compiling():
        return
    hw = tiling.tokens_per_frame
    n_new = new_k.shape[1] // hw
    lo = kv_frames - n_new
    rec = _last_writes.get(k_cache)
    if (
        rec is not None
        and rec.k_cache == _memory(k_cache)
        and rec.v_cache == _memory(v_cache)
        and rec.start_frame <= lo
        and kv_frames <= rec.start_frame + rec.frames
        and _is_frames_of(new_k, rec.new_k, lo - rec.start_frame, hw)
        and _is_frames_of(new_v, rec.new_v, lo - rec.start_frame, hw)
    ):
        return
    rows = slice(lo * hw, kv_frames * hw)
    with torch.no_grad():
        same = all(
            new.dtype == cache.dtype and torch.equal(cache[:, rows], to_tile_sequence(new, tiling))
            for new, cache in ((new_k, k_cache), (new_v, v_cache))
        )
    if not same:
        raise ValueError(
            f"new_k/new_v are not what frames [{lo}, {kv_frames}) of k_cache/v_cache hold: pass the tensors last "
            f"written there by write_kv_cache (their gradients are those rows' gradients)"
        )


class _NewKVGrad(torch.autograd.Function):
    """Identity on the cache slice whose backward sends the gradient of its last rows to new K/V."""

    @staticmethod
    def forward(ctx, k_slice, v_slice, new_k_seq, new_v_seq):
        ctx.n_new = new_k_seq.shape[1]
        return k_slice.view_as(k_slice), v_slice.view_as(v_slice)

    @staticmethod
    def backward(ctx, dk, dv):
        n = ctx.n_new
        return None, None, dk[:, -n:], dv[:, -n:]


@ops.traceable_errors
def monarch_attention_kv_cache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_frames: int,
    frame_shape: tuple[int, int],
    *,
    new_k: torch.Tensor | None = None,
    new_v: torch.Tensor | None = None,
    f_tied: int = 1,
    h_reduce: int = 1,
    w_reduce: int = 1,
    sm_scale: float | None = None,
    num_iters: int = 1,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention of a query chunk over the first ``kv_frames`` frames of a KV cache (no mask).

    Args:
        q: ``(B, Sq, nh, d)`` natural order (the new chunk's queries).
        k_cache, v_cache: ``(B, max_frames*H*W, nh, d)`` buffers in tile order, as written by
            :func:`write_kv_cache`. Only frames ``[0, kv_frames)`` are read; ``kv_frames`` is a
            runtime value (a new length neither recompiles nor re-tunes).
        new_k, new_v: optional, the natural-order tensors last written to frames
            ``[kv_frames - n_new, kv_frames)``. When given (and the cache does not require grad),
            the gradient of those cache rows flows to them: Self-Forcing training. They must be
            what those rows hold, else ValueError (their gradients would be other rows'): cheap when
            they are the tensors of the last :func:`write_kv_cache` (or views, detached copies or
            trailing frames of them) unchanged since; anything else is compared with the rows.

    Returns:
        ``(B, Sq, nh, d)``; under ``torch.autocast`` q and the visible cache slice are cast to the
        autocast dtype (the cache itself is not), as for :func:`monarch_attention`.

    Example:
        >>> kc, vc = torch.zeros(1, 4 * 60, 2, 16), torch.zeros(1, 4 * 60, 2, 16)
        >>> nk = nv = torch.randn(1, 60, 2, 16)
        >>> write_kv_cache(kc, vc, nk, nv, 0, (6, 10))
        >>> monarch_attention_kv_cache(torch.randn(1, 60, 2, 16), kc, vc, 1, (6, 10)).shape
        torch.Size([1, 60, 2, 16])
    """
    args = (frame_shape, f_tied, h_reduce, w_reduce, kv_frames, sm_scale, num_iters, backend)
    # the training call (new_k/new_v) checks them every time anyway: not cached
    key = None
    if new_k is None and new_v is None and not torch.compiler.is_compiling():
        key = _call_key(q, k_cache, v_cache, *args)
    call = _VALIDATED["kv"].get(key) if key is not None else None
    if call is not None and ops.ready(call, q, k_cache, v_cache):  # the eager fast path: the prepared forward
        out = call.run(q, k_cache, v_cache)  # the buffers themselves: the slice read is their first rows
        if out is not None:
            return out[0]
    q = autocast_inputs(q)
    checked = _validate_kv_call(q, k_cache, v_cache, *args) if call is None else call.checked
    if call is None and key is not None:
        call = _remember("kv", key, checked)
    tiling, scale, num_iters, backend, tokens, shapes = checked
    # under autocast only the visible slice is cast (amp.py), never the whole cache
    k_slice, v_slice = autocast_inputs(k_cache[:, :tokens], v_cache[:, :tokens])
    if (new_k is None) != (new_v is None):
        raise ValueError("pass both new_k and new_v, or neither")
    if new_k is not None:
        if k_cache.requires_grad or v_cache.requires_grad:
            raise ValueError("the cache requires grad, so gradients reach it directly; do not pass new_k/new_v")
        written_k, written_v = new_k, new_v  # as the caller passed them, before an autocast cast
        new_k, new_v = autocast_inputs(new_k, new_v)
        _check_qkv(q, new_k, new_v, names=("q", "new_k", "new_v"))
        n_new = _check_seq("new_k", new_k.shape[1], tiling)
        if n_new > kv_frames:
            raise ValueError(f"new_k has {n_new} frames, more than kv_frames={kv_frames}")
        _check_new_kv_written(k_cache, v_cache, written_k, written_v, kv_frames, tiling)
        k_slice, v_slice = _NewKVGrad.apply(
            k_slice, v_slice, to_tile_sequence(new_k, tiling), to_tile_sequence(new_v, tiling)
        )
    # The cache is stored in tile order: its slice goes to the op as it is (a view, no copy), as
    # tile_sequence_as_tiles would reshape it (its checks done by _validate_kv_call).
    q_shape, kv_shape = shapes
    kt, vt = k_slice.reshape(*kv_shape), v_slice.reshape(*kv_shape)
    qt = to_tiles(q, tiling) if q_shape is None else q.reshape(*q_shape)
    if call is not None and q_shape is not None:
        out = _prepare(call, (q, k_cache, v_cache), (qt, kt, vt), scale, 0, num_iters, backend)
        if out is not None:
            return out
    out, _ = _attention_tiles(qt, kt, vt, tiling, scale, 0, num_iters, backend, q_shape is not None)
    return out


def _validate_kv_call(q, k_cache, v_cache, frame_shape, f_tied, h_reduce, w_reduce, kv_frames, sm_scale, num_iters,
                      backend) -> tuple[Tiling, float, int, str, int, tuple]:  # fmt: skip
    """The checks of a KV-cache call that do not involve new_k/new_v -> ``(tiling, sm_scale, num_iters,
    backend, tokens read, shapes)``, cached per argument key like :func:`_attention_call`'s; ``shapes``:
    q's tile-order shape where the tiling is the identity (else None) and the cache slice's."""
    _check_qkv(q, k_cache, v_cache, names=("q", "k_cache", "v_cache"), autocast=True)
    tiling = make_tiling(frame_shape, f_tied, h_reduce, w_reduce)
    max_frames = _check_seq("k_cache", k_cache.shape[1], tiling)
    _check_int("kv_frames", kv_frames)
    if kv_frames > max_frames or kv_frames % f_tied:
        raise ValueError(
            f"kv_frames={kv_frames} must be <= {max_frames} (cache frames) and a multiple of f_tied={f_tied}"
        )
    num_iters, scale = _check_query_args(q, tiling, num_iters, sm_scale)
    tokens = kv_frames * tiling.tokens_per_frame
    shapes = (tile_shape(q.shape, tiling) if tiling.is_identity() else None,
              tile_shape((k_cache.shape[0], tokens, *k_cache.shape[2:]), tiling))  # fmt: skip
    return tiling, scale, num_iters, _check_backend(backend), tokens, shapes
