"""Run by tests/test_fast_path.py in a process of its own (the Triton kernels compiled for a GPU, not
interpreted; the GPU stubbed as bench/host_overhead.py --cpu-host-path stubs it): the public functions'
eager fast path (the launches prepared per argument key, ``ops.prepare_<op>``) launches exactly what the
op launches on the same tensors, allocates only its output, and gives way to the op's path where it
cannot run. Prints one line per case; any mismatch raises."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import monarchrt_ops as m
from monarchrt_ops import ops, registry
from monarchrt_ops.backends import triton as triton_backend
from monarchrt_ops.bench import host_overhead

records: list = []
counts = {"op": 0, "empty": 0}
# the op's work (what the dispatcher and ops.call_<op> run) and the allocations, counted during a call
_COUNTED = {(ops, "_attention_run"): "op", (ops, "_hadamard_run"): "op", (ops, "_monarch_matmul_run"): "op",
            (torch, "empty"): "empty", (torch, "empty_like"): "empty"}  # fmt: skip
_REAL = {where: getattr(*where) for where in _COUNTED}


def _recorder(*args):
    records.append(args)


def _counter(where):
    real, what = _REAL[where], _COUNTED[where]

    def counted(*args, **kwargs):
        counts[what] += 1
        return real(*args, **kwargs)

    return counted


_COUNTERS = {where: _counter(where) for where in _COUNTED}


def normalised(calls, inputs: dict) -> list:
    """Each launch's arguments with tensors and raw pointers named: an input by its name, any other buffer
    by its order of first appearance (outputs and scratch are at other addresses on the two paths)."""
    names, out = {x.data_ptr(): n for n, x in inputs.items()}, []
    for args in calls:
        row = []
        for a in args:
            ptr = a.data_ptr() if isinstance(a, torch.Tensor) else a if type(a) is int and a > 1 << 20 else None
            if ptr is None:
                row.append(tuple(a) if isinstance(a, list) else a)
                continue
            names.setdefault(ptr, f"buffer {len(names)}")
            row.append((names[ptr], a.dtype) if isinstance(a, torch.Tensor) else names[ptr])
        out.append(tuple(row))
    return out


def launches(fn, inputs: dict) -> tuple:
    records.clear()
    counts.update(op=0, empty=0)
    for (module, name), counted in _COUNTERS.items():
        setattr(module, name, counted)
    try:
        result = fn()
    finally:
        for (module, name), real in _REAL.items():
            setattr(module, name, real)
    return normalised(list(records), inputs), result, dict(counts)


def check(what: str, fast, op, inputs: dict, prepared: bool = True, launched: int = 2, op_allocates: int = 5) -> None:
    """``fast`` (a public function) and ``op`` (the op on the same tensors) launch the same, ``launched``
    launches; ``fast`` runs no op and allocates only its output where ``prepared`` (its scratch kept),
    else runs the op as ``op`` does (which allocates ``op_allocates`` tensors: its outputs and, never
    kept on the op's path, its scratch; attention's z, lse, aL, Y, cL by default)."""
    fast(), op()  # each path's first launches compile (Triton's path: not recorded)
    first, out1, _ = launches(fast, inputs)
    again, out2, seen = launches(fast, inputs)
    through_op, _, seen_op = launches(op, inputs)
    assert len(first) == launched and first == again == through_op, (what, first, again, through_op)
    assert out1.data_ptr() != out2.data_ptr(), f"{what}: the output must be a new tensor on every call"
    want = {"op": 0, "empty": 1} if prepared else seen_op
    assert seen == want and seen_op == {"op": 1, "empty": op_allocates}, (what, seen, seen_op)
    print(f"{what}: {len(first)} launches, {seen}")


class _PassThrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def gives_way(what: str, fast) -> None:
    """A call that must not take the prepared forward: its key's forward prepared, ``fast()`` runs the op."""
    _, _, seen = launches(fast, {})
    assert seen["op"] == 1, (what, seen)
    print(f"{what}: the op's path")


def cases(stage_r: str, mk) -> None:
    """Every case with ``stage_r`` named by the triton backend's default config."""
    frame, hw, heads, d = (6, 10), 60, 2, 128
    tiling = m.make_tiling(frame)

    def tiles(*xs):
        return [m.to_tiles(x, tiling) for x in xs]

    for fq, fk in ((1, 1), (3, 3)):
        q, k, v = mk(1, fq * hw, heads, d), mk(1, fk * hw, heads, d), mk(1, fk * hw, heads, d)
        check(f"stage R {stage_r}, attention {fq} vs {fk} frames",
              lambda q=q, k=k, v=v: m.monarch_attention(q, k, v, frame, backend="triton"),
              lambda q=q, k=k, v=v: ops.attention(*tiles(q, k, v), d**-0.5, 0, 1, "triton")[0],
              {"q": q, "k": k, "v": v})  # fmt: skip
    with torch.enable_grad():  # autograd must record the op
        gives_way("q requiring grad", lambda: m.monarch_attention(q.requires_grad_(), k, v, frame, backend="triton"))
    q.requires_grad_(False)
    with _PassThrough():  # a mode must see the op
        gives_way("a dispatch mode", lambda: m.monarch_attention(q, k, v, frame, backend="triton"))
    # the registry state changed: the forward prepared again, once, on the next eager call
    prepared, real = [], ops.prepare_attention
    ops.prepare_attention = lambda *a: prepared.append(1) or real(*a)
    try:
        registry.invalidate()
        for _ in range(3):
            assert launches(lambda: m.monarch_attention(q, k, v, frame, backend="triton"), {})[2]["op"] == 0
    finally:
        ops.prepare_attention = real
    assert prepared == [1], prepared
    print("after registry.invalidate(): prepared again once")
    # the KV cache: the prepared forward reads the buffers themselves, the op their slice
    q3, kv = mk(1, 3 * hw, heads, d), mk(1, 21 * hw, heads, d)
    kc, vc = torch.zeros_like(kv), torch.zeros_like(kv)
    m.write_kv_cache(kc, vc, kv, kv, 0, frame)
    kt, vt = (x[:, : 12 * hw].reshape(1, 12, *frame, heads, d) for x in (kc, vc))
    check(f"stage R {stage_r}, kv cache 3 vs 12 of 21 frames",
          lambda: m.monarch_attention_kv_cache(q3, kc, vc, 12, frame, backend="triton"),
          lambda: ops.attention(*tiles(q3), kt, vt, d**-0.5, 0, 1, "triton")[0],
          {"q": q3, "k": kc, "v": vc})  # fmt: skip
    # a base 2 bytes off 16-byte alignment: the wgmma stage R copies it, so the fast path gives way
    qm, k1, v1 = mk(hw * heads * d + 1)[1:].view(1, hw, heads, d), mk(1, hw, heads, d), mk(1, hw, heads, d)
    assert qm.data_ptr() % 16
    check(f"stage R {stage_r}, misaligned q",
          lambda: m.monarch_attention(qm, k1, v1, frame, backend="triton"),
          lambda: ops.attention(*tiles(qm, k1, v1), d**-0.5, 0, 1, "triton")[0],
          {"q": qm, "k": k1, "v": v1}, prepared=stage_r == "triton")  # fmt: skip


def small_op_cases(mk) -> None:
    """Hadamard (one launch; the op allocates its output) and the Monarch matmul forward (two; the op
    allocates its output, y1 kept), on contiguous and on strided rows (the op copies those: no fast path)."""
    x = mk(4, 4, 256)
    check("hadamard 16 x 256", lambda: m.hadamard(x, backend="triton"),
          lambda: ops.hadamard(x, 256**-0.5, False, False, "triton"), {"x": x}, launched=1, op_allocates=1)  # fmt: skip
    xs = mk(16, 512)[:, :256]
    check("hadamard of strided rows", lambda: m.hadamard(xs, backend="triton"),
          lambda: ops.hadamard(xs, 256**-0.5, False, False, "triton"), {"x": xs}, launched=1, op_allocates=1,
          prepared=False)  # fmt: skip
    w1, w2 = mk(16, 16, 16), mk(16, 16, 16)
    check("monarch_matmul 16 x 256", lambda: m.monarch_matmul(x, w1, w2, backend="triton"),
          lambda: ops.monarch_matmul(x, w1, w2, "triton"), {"x": x, "w1": w1, "w2": w2}, op_allocates=2)  # fmt: skip
    check("monarch_matmul of strided rows", lambda: m.monarch_matmul(xs, w1, w2, backend="triton"),
          lambda: ops.monarch_matmul(xs, w1, w2, "triton"), {"x": xs, "w1": w1, "w2": w2}, op_allocates=2,
          prepared=False)  # fmt: skip


def main() -> None:
    gen = torch.Generator().manual_seed(0)

    def mk(*shape):
        return torch.randn(*shape, dtype=torch.bfloat16, generator=gen)

    default = triton_backend.TritonAttention.default_config
    try:
        with host_overhead.stubbed_gpu(), torch.no_grad():
            host_overhead._NoLaunch.run = staticmethod(_recorder)
            host_overhead._ExtensionNoLaunch.monarch_stage_r = staticmethod(_recorder)
            for stage_r in ("wgmma", "triton"):
                triton_backend.TritonAttention.default_config = lambda self, p, a, r=stage_r: {
                    **default(self, p, a), "stage_r": r}  # fmt: skip
                registry.invalidate()
                cases(stage_r, mk)
            small_op_cases(mk)
    finally:
        triton_backend.TritonAttention.default_config = default
        registry.invalidate()


if __name__ == "__main__":
    main()
