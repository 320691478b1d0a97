"""A KV cache that owns its buffers together with their tiling, so a write and a read cannot disagree.

:class:`MonarchKVCache` is the object layer over :func:`~monarchrt_ops.write_kv_cache` and
:func:`~monarchrt_ops.monarch_attention_kv_cache` (which stay as the low-level functions). The
buffers store tokens in tile order (``docs/integrations.md``, "KV cache"); the object records the
frame shape, ``f_tied``/``h_reduce``/``w_reduce``, batch, heads, head_dim, dtype, device and how many
frames are filled, and checks every write and read against them.

Self-Forcing patterns:

- appending chunks of frames (``write``/``append``), and rewriting the chunk just written (a
  denoising step, or the clean-context pass at t = 0, writes the same frames again);
- a sliding window of the last ``local_attn_size`` frames, with ``sink_size`` frames kept at the
  front (Self-Forcing's ``local_attn_size``/``sink_size``): when a new chunk does not fit, the oldest
  frames after the sinks are evicted;
- gradients reach the K/V of the last write only; the cache contents never require grad.

Monarch attention over a set of key frames does not depend on their order (stage L is one softmax
over every visible key row of every key tile; stage R works inside one key tile), so evicting
frames from the middle and shifting the rest down gives the same result as attending to the kept
frames in their original order.
"""

from __future__ import annotations

import math

import torch

from .amp import autocast_dtype_of
from .attention import (
    FLOAT_DTYPES,
    MAX_HEAD_DIM,
    _check_frame_shape,
    _check_int,
    make_tiling,
    monarch_attention_kv_cache,
    write_kv_cache,
)
from .layout import Tiling, from_tile_sequence
from .limits import MAX_TENSOR_ELEMENTS
from .ops import traceable_errors

_kv_attention = monarch_attention_kv_cache.__wrapped__  # (see MonarchKVCache.attend)


class MonarchKVCache:
    """K/V buffers for autoregressive Monarch attention, with their tiling and fill state.

    Args:
        batch_size, num_heads, head_dim: the K/V tensors' ``B``, ``nh``, ``d``.
        frame_shape: ``(H, W)`` tokens per frame after patchify.
        max_frames: frames the buffers hold: the most frames one attention call sees.
        f_tied, h_reduce, w_reduce: the tiling used for every write and read.
        local_attn_size: ``None`` (default): global attention; writing past ``max_frames`` raises.
            An int ``N <= max_frames``: a sliding window of ``N`` frames (sinks included); a write
            that does not fit evicts the oldest non-sink frames. The buffers then hold ``N`` frames.
        sink_size: frames at the front that are never evicted (needs ``local_attn_size``).
        dtype, device: of the buffers; every K/V/query passed in must match (no silent cast).

    All frame counts must be multiples of ``f_tied``. The cache is a plain Python object (not an
    ``nn.Module``); keep one per attention layer.

    Example:
        >>> cache = MonarchKVCache(1, 2, 16, (6, 10), max_frames=4, dtype=torch.float32)
        >>> k = v = q = torch.randn(1, 2 * 60, 2, 16)
        >>> cache.append(k, v)
        >>> cache.attend(q).shape
        torch.Size([1, 120, 2, 16])
    """

    def __init__(
        self,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        frame_shape: tuple[int, int],
        max_frames: int,
        *,
        f_tied: int = 1,
        h_reduce: int = 1,
        w_reduce: int = 1,
        local_attn_size: int | None = None,
        sink_size: int = 0,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
    ) -> None:
        self.batch_size = _check_int("batch_size", batch_size)
        self.num_heads = _check_int("num_heads", num_heads)
        self.head_dim = _check_int("head_dim", head_dim)
        if head_dim > MAX_HEAD_DIM:
            raise ValueError(f"head_dim={head_dim} is not supported; use 1..{MAX_HEAD_DIM}")
        self.frame_shape = _check_frame_shape(frame_shape)
        self.tiling: Tiling = make_tiling(self.frame_shape, f_tied, h_reduce, w_reduce)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype={dtype} is not supported; use one of {FLOAT_DTYPES}")
        self.dtype = dtype
        try:
            self.device = torch.device(device) if device is not None else torch.device("cpu")
        except (RuntimeError, TypeError):
            raise ValueError(f"device={device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:0')") from None
        max_frames = _check_int("max_frames", max_frames)
        self._check_multiple("max_frames", max_frames)
        self.sink_size = sink_size = _check_int("sink_size", sink_size, minimum=0)
        self._check_multiple("sink_size", sink_size)
        if local_attn_size is None or local_attn_size == -1:  # -1: Self-Forcing's spelling of "global"
            if sink_size:
                raise ValueError("sink_size needs a sliding window: pass local_attn_size as well")
            self.local_attn_size = None
            capacity = max_frames
        else:
            local_attn_size = _check_int("local_attn_size", local_attn_size)
            self._check_multiple("local_attn_size", local_attn_size)
            if local_attn_size > max_frames:
                raise ValueError(f"local_attn_size={local_attn_size} exceeds max_frames={max_frames}")
            if sink_size >= local_attn_size:
                raise ValueError(
                    f"sink_size={sink_size} must be smaller than local_attn_size={local_attn_size} "
                    "(the window needs room for the new chunk)"
                )
            self.local_attn_size = local_attn_size
            capacity = local_attn_size
        self.capacity = capacity
        shape = (self.batch_size, capacity * self.tiling.tokens_per_frame, self.num_heads, self.head_dim)
        if math.prod(shape) > MAX_TENSOR_ELEMENTS:
            raise ValueError(
                f"max_frames={max_frames} (local_attn_size={local_attn_size}): buffers of shape {shape} have more "
                f"elements than a tensor can hold ({MAX_TENSOR_ELEMENTS})"
            )
        self.k_buffer = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v_buffer = torch.zeros(shape, dtype=dtype, device=self.device)
        # the buffers' device is the one every input is compared with: "cuda" names "cuda:<current>"
        self.device = self.k_buffer.device
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Empty the cache (buffers are kept; their contents become unreachable)."""
        self._filled = 0  # frames in the buffers
        self._frames_seen = 0  # frames ever appended (global index of the next chunk)
        self._last: tuple[int, int, torch.Tensor, torch.Tensor] | None = None  # (global start, frames, k, v)
        self._queries: set = set()  # query keys that passed attend's checks (see attend)

    @property
    def num_frames(self) -> int:
        """Frames an :meth:`attend` call sees now."""
        return self._filled

    @property
    def next_frame(self) -> int:
        """Global index of the next appended frame (the RoPE frame offset of the next chunk)."""
        return self._frames_seen

    @property
    def last_write(self) -> tuple[int, int] | None:
        """``(global start frame, frames)`` of the last write, or None."""
        return None if self._last is None else self._last[:2]

    def __repr__(self) -> str:
        t = self.tiling
        return (
            f"MonarchKVCache(B={self.batch_size}, nh={self.num_heads}, d={self.head_dim}, "
            f"frame_shape={self.frame_shape}, f_tied={t.f_tied}, h_reduce={t.h_reduce}, w_reduce={t.w_reduce}, "
            f"capacity={self.capacity} frames, filled={self._filled}, next_frame={self._frames_seen}, "
            f"local_attn_size={self.local_attn_size}, sink_size={self.sink_size}, dtype={self.dtype}, "
            f"device={self.device})"
        )

    # ------------------------------------------------------------------ checks
    def _check_multiple(self, name: str, frames: int) -> None:
        if frames % self.tiling.f_tied:
            raise ValueError(f"{name}={frames} must be a multiple of f_tied={self.tiling.f_tied}")

    def _frames_of(self, name: str, x, autocast: bool = False) -> int:
        """Validate a ``(B, S, nh, d)`` tensor against the cache; return its frame count.
        ``autocast``: a query, compared in the dtype attention runs in (amp.py)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be (B, S, nh, d), got shape {tuple(x.shape)}")
        want = {"batch": self.batch_size, "heads": self.num_heads, "head_dim": self.head_dim}
        for (what, expected), got in zip(want.items(), (x.shape[0], x.shape[2], x.shape[3]), strict=True):
            if got != expected:
                raise ValueError(f"{name} has {what}={got}, but this cache was made for {what}={expected}")
        dtype_of = autocast_dtype_of if autocast else (lambda t: t.dtype)
        if dtype_of(x) != dtype_of(self.k_buffer):
            raise TypeError(f"{name}.dtype={x.dtype}, but this cache holds {self.dtype} (no silent cast)")
        if x.device != self.device:
            raise ValueError(f"{name} is on {x.device}, but this cache is on {self.device}")
        hw = self.tiling.tokens_per_frame
        seq = x.shape[1]
        if seq == 0 or seq % hw:
            raise ValueError(
                f"{name}: S={seq} is not a positive multiple of H*W={hw} (frame_shape={self.frame_shape}); "
                "a cache write and read must use the frame shape the cache was made with"
            )
        frames = seq // hw
        if frames % self.tiling.f_tied:
            raise ValueError(f"{name}: {frames} frames are not divisible by f_tied={self.tiling.f_tied}")
        return frames

    # ------------------------------------------------------------------ writes
    @traceable_errors
    def write(self, new_k: torch.Tensor, new_v: torch.Tensor, start_frame: int | None = None) -> None:
        """Write a chunk of keys/values (natural order, ``(B, n*H*W, nh, d)``).

        ``start_frame`` is the chunk's global frame index (Self-Forcing's ``current_start`` in
        frames): :attr:`next_frame` (or None) appends; the start of the last write, with the same
        frame count, rewrites that chunk in place. Anything else raises ValueError.
        Appending evicts the oldest non-sink frames when a sliding window is full; without a
        window, a chunk that does not fit raises ValueError.
        """
        n_new = self._frames_of("new_k", new_k)
        if self._frames_of("new_v", new_v) != n_new or new_v.shape != new_k.shape:
            raise ValueError(f"new_k and new_v differ in shape: {tuple(new_k.shape)} vs {tuple(new_v.shape)}")
        if start_frame is None:
            start_frame = self._frames_seen
        _check_int("start_frame", start_frame, minimum=0)
        if start_frame == self._frames_seen:
            local = self._make_room(n_new)
            self._frames_seen += n_new
            self._filled = local + n_new
        elif self._last is not None and start_frame == self._last[0]:
            if n_new != self._last[1]:
                raise ValueError(
                    f"rewriting the chunk at frame {start_frame} needs {self._last[1]} frames, got {n_new}"
                )
            local = self._filled - n_new
        else:
            last = "nothing written yet" if self._last is None else f"the last write started at {self._last[0]}"
            raise ValueError(
                f"start_frame={start_frame}: a write appends at frame {self._frames_seen} or rewrites the last "
                f"chunk ({last}); other positions are not supported"
            )
        t = self.tiling
        write_kv_cache(
            self.k_buffer, self.v_buffer, new_k, new_v, local, self.frame_shape,
            f_tied=t.f_tied, h_reduce=t.h_reduce, w_reduce=t.w_reduce,
        )  # fmt: skip
        self._last = (start_frame, n_new, new_k, new_v)

    def append(self, new_k: torch.Tensor, new_v: torch.Tensor) -> None:
        """:meth:`write` at :attr:`next_frame`."""
        self.write(new_k, new_v, self._frames_seen)

    def _make_room(self, n_new: int) -> int:
        """Buffer frame where an appended chunk of ``n_new`` frames goes (evicting if windowed)."""
        if self.local_attn_size is not None and n_new > self.capacity - self.sink_size:
            # Checked on every append (not only when evicting), so a chunk size that cannot stream fails at once.
            raise ValueError(
                f"a chunk of {n_new} frames does not fit a window of local_attn_size={self.local_attn_size} "
                f"with sink_size={self.sink_size}"
            )
        if self._filled + n_new <= self.capacity:
            return self._filled
        if self.local_attn_size is None:
            raise ValueError(
                f"appending {n_new} frames to {self._filled} overflows the cache of max_frames={self.capacity}; "
                "make the cache larger or pass local_attn_size for a sliding window"
            )
        evict = self._filled + n_new - self.capacity
        hw = self.tiling.tokens_per_frame
        lo, hi, end = self.sink_size * hw, (self.sink_size + evict) * hw, self._filled * hw
        # Whole f_tied groups move, so the tile order inside each group is kept. Overlapping ranges:
        # copy through a clone.
        with torch.no_grad():
            for buf in (self.k_buffer, self.v_buffer):
                buf[:, lo : end - (hi - lo)].copy_(buf[:, hi:end].clone())
        return self._filled - evict

    # ------------------------------------------------------------------ reads
    @traceable_errors
    def attend(
        self,
        q: torch.Tensor,
        *,
        sm_scale: float | None = None,
        num_iters: int = 1,
        backend: str | None = None,
    ) -> torch.Tensor:
        """Monarch attention of the query chunk ``q`` (natural order) over every filled frame.

        No mask: the chunk sees all cached frames, including its own when it was written first
        (Self-Forcing). Gradients flow to ``q`` and to the K/V of the last write (when they require
        grad), never into the buffers. Under ``torch.autocast``, q and the filled slice are cast to
        the autocast dtype (:func:`~monarchrt_ops.monarch_attention_kv_cache`); writes never cast.
        """
        if self._filled == 0:
            raise ValueError("the cache is empty: write keys/values before attending")
        # the query's checks read only its exact type, shape, dtype and device against the cache's fixed
        # attributes: remembered per that key, not under autocast (the dtype compared is the region's) nor
        # while torch.compile traces (Dynamo would guard on the set)
        key = None
        if not torch.compiler.is_compiling() and not torch._C._is_any_autocast_enabled():
            key = (type(q), q.shape, q.dtype, q.device) if isinstance(q, torch.Tensor) else None
        if key is None or key not in self._queries:
            self._frames_of("q", q, autocast=True)
            if key is not None:
                if len(self._queries) >= 64:  # (query shapes: a handful in practice)
                    self._queries.clear()
                self._queries.add(key)
        new_k = new_v = None
        if self._last is not None:
            _, _, lk, lv = self._last
            if lk.requires_grad or lv.requires_grad:
                new_k, new_v = lk, lv
        t = self.tiling
        # the function without its traceable_errors wrapper: this method's own handles its errors
        return _kv_attention(
            q, self.k_buffer, self.v_buffer, self._filled, self.frame_shape,
            new_k=new_k, new_v=new_v, f_tied=t.f_tied, h_reduce=t.h_reduce, w_reduce=t.w_reduce,
            sm_scale=sm_scale, num_iters=num_iters, backend=backend,
        )  # fmt: skip

    def update_and_attend(
        self,
        q: torch.Tensor,
        new_k: torch.Tensor,
        new_v: torch.Tensor,
        start_frame: int | None = None,
        **attend_kwargs,
    ) -> torch.Tensor:
        """:meth:`write` then :meth:`attend`: one Self-Forcing self-attention call."""
        self.write(new_k, new_v, start_frame)
        return self.attend(q, **attend_kwargs)

    def keys(self) -> torch.Tensor:
        """The filled keys in natural order (a copy, detached)."""
        return self._natural(self.k_buffer)

    def values(self) -> torch.Tensor:
        """The filled values in natural order (a copy, detached)."""
        return self._natural(self.v_buffer)

    def _natural(self, buf: torch.Tensor) -> torch.Tensor:
        if self._filled == 0:
            raise ValueError("the cache is empty")
        seq = self._filled * self.tiling.tokens_per_frame
        return from_tile_sequence(buf[:, :seq].detach(), self.tiling).clone()
