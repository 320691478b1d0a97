"""triton_kernels/_launch.py: the launch cache's key is at least as fine as Triton's specialisation
(CPU), and launches through it equal Triton's own on aligned and misaligned tensors and on ints that
specialise differently (GPU)."""

import itertools

import pytest
import torch

pytest.importorskip("triton")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from monarchrt_ops.triton_kernels import _launch  # noqa: E402

GPU = torch.cuda.is_available()


def _one_arg_key(a):
    return _launch._key(None, 0, "", (a,), {})


def test_key_separates_what_triton_specialises():
    x = torch.zeros(64)
    key = _one_arg_key
    assert key(x) != key(x[1:])  # 16-byte aligned or not
    assert key(x) != key(x.half())
    assert key(x) == key(x.clone())  # a tensor by kind, not identity
    assert len({key(v) for v in (1, 2, 16, 2**31, 2**63)}) == 5  # 1, other, divisible by 16, i64, u64
    assert key(True) != key(1) and key(True) != key(False) and key(1.0) != key(1)  # 1 == 1.0 == True in Python
    assert key(None) != key("a") and key(0.5) != key(2.0)  # finer than Triton (floats by value): safe


def test_the_cache_is_taken_under_tritons_default_knobs(monkeypatch):
    """Triton 3.6 holds its launch hooks as empty ``HookChain`` objects, not None: an empty chain is no
    hook (a check for None alone turned the cache off everywhere without a sign), one with a hook is."""
    from triton import knobs
    from triton.runtime.jit import JITFunction

    monkeypatch.delenv("MONARCHRT_TRITON_FAST_LAUNCH", raising=False)
    monkeypatch.setattr(knobs.runtime, "debug", False)
    kernel = JITFunction(_axpb.fn)
    assert _launch._enabled(kernel, knobs)  # Triton's defaults: empty chains
    chain = knobs.HookChain()
    chain.add(print)
    for name in ("launch_enter_hook", "launch_exit_hook"):
        with monkeypatch.context() as patched:
            patched.setattr(knobs.runtime, name, None)
            assert _launch._enabled(kernel, knobs)
            for hook in (chain, print):
                patched.setattr(knobs.runtime, name, hook)
                assert not _launch._enabled(kernel, knobs)
    assert _launch._enabled(kernel, knobs)
    monkeypatch.setenv("MONARCHRT_TRITON_FAST_LAUNCH", "0")
    assert not _launch._enabled(kernel, knobs)


def test_launch_falls_back_for_anything_but_a_jit_function():
    seen = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *a, **kw: seen.append((grid, a, kw)) or "ran"

    assert _launch.launch(Recorder(), (2, 1), 1, BLOCK=4) == "ran"
    assert seen == [((2, 1), (1,), {"BLOCK": 4})]


@triton.jit
def _axpb(X, Y, n, a, B: tl.constexpr, ADD_ONE: tl.constexpr = False):
    offs = tl.program_id(0) * B + tl.arange(0, B)
    mask = offs < n
    y = tl.load(X + offs, mask=mask) * a + n
    if ADD_ONE:
        y += 1
    tl.store(Y + offs, y, mask=mask)


def test_key_takes_constexprs_by_value_wherever_they_are_passed():
    """A constexpr is compiled per value: by position or by keyword, two values are two entries; a
    tensor passed by keyword is keyed by its kind (dtype, alignment), not held by identity."""
    from triton.runtime.jit import JITFunction

    kernel = JITFunction(_axpb.fn)  # a compiled-kind kernel object (the key never launches it)
    x = torch.zeros(64)

    def key(kernel, device, args, kwargs):
        return _launch._key(kernel, device, "", args, kwargs)

    assert key(kernel, 0, (x, x, 5, 1.0, 128), {}) != key(kernel, 0, (x, x, 5, 1.0, 256), {})
    assert key(kernel, 0, (x, x, 5, 1.0), {"B": 128}) != key(kernel, 0, (x, x, 5, 1.0), {"B": 256})
    assert key(kernel, 0, (x, x, 5, 1.0, 128), {}) == key(kernel, 0, (x.clone(), x.clone(), 5, 1.0, 128), {})
    assert key(kernel, 0, (x, x, 5, 1.0, 128), {}) != key(kernel, 0, (x, x, 7, 1.0, 128), {})  # ints by value
    assert key(kernel, 0, (x,), {"Y": x}) == key(kernel, 0, (x,), {"Y": x.clone()})
    assert key(kernel, 0, (x,), {"Y": x}) != key(kernel, 0, (x,), {"Y": x[1:]})
    assert key(kernel, 0, (x, x, 5, 1.0, 128), {}) != key(kernel, 1, (x, x, 5, 1.0, 128), {})  # the device


def test_a_grid_function_takes_tritons_path(monkeypatch):
    """``kernel[grid]`` accepts a grid of the meta-parameters; the cache's hit path takes tuples only."""
    seen = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *a, **kw: seen.append(grid) or "ran"

    monkeypatch.setattr(_launch, "_enabled", lambda kernel, knobs: True)
    grid = lambda meta: (1,)  # noqa: E731
    assert _launch.launch(Kernel(), grid, 1) == "ran" and seen == [grid]


def _stub_compiles(monkeypatch):
    """``kernel[grid](...)`` of a compiled-kind kernel records the call and returns a compiled kernel
    whose launcher records its arguments (no GPU); Triton's driver says device 0, stream 0."""
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    compiles, runs = [], []

    class Compiled:
        function = packed_metadata = None

        def run(self, *args):
            runs.append(args)

    class Driver:
        def get_current_device(self):
            return 0

        def get_current_stream(self, device):
            return 0

    def getitem(kernel, grid):
        return lambda *a, **kw: compiles.append((grid, a, kw)) or Compiled()

    monkeypatch.setattr(JITFunction, "__getitem__", getitem)
    monkeypatch.setattr(driver, "_active", Driver())
    monkeypatch.delenv("MONARCHRT_TRITON_FAST_LAUNCH", raising=False)
    return JITFunction(_axpb.fn), compiles, runs


def test_a_prepared_launch_passes_what_launch_passes(monkeypatch):
    """``Prepared(kernel, grid, rest, kwargs)(*tensors)``: the compiled launcher gets the arguments
    :func:`_launch.launch`'s hit path gives it; a tensor of another alignment or dtype misses (Triton's
    path), and the fast launch turned off takes Triton's path every time."""
    kernel, compiles, runs = _stub_compiles(monkeypatch)
    x, y = torch.zeros(64), torch.zeros(64)
    for _ in range(2):
        _launch.launch(kernel, (2,), x, y, 64, 2.5, B=32)
    assert len(compiles) == 1 and len(runs) == 1
    prepared = _launch.Prepared(kernel, (2,), (64, 2.5), {"B": 32})
    for _ in range(2):
        prepared(x, y)
    assert len(compiles) == 1 and len(runs) == 3  # its miss took launch(), which hit; then its own hit
    assert runs[2] == runs[1] == runs[0] == (2, 1, 1, 0, None, None, None, None, None, x, y, 64, 2.5, 32, False)
    prepared(x[1:], y[1:])  # misaligned: a miss
    prepared(x.half(), y.half())  # another dtype: a miss
    assert len(compiles) == 3 and compiles[-1][1][0].dtype == torch.half
    monkeypatch.setenv("MONARCHRT_TRITON_FAST_LAUNCH", "0")
    prepared(x, y)
    assert len(compiles) == 4 and len(runs) == 3 and compiles[-1] == ((2,), (x, y, 64, 2.5), {"B": 32})


@pytest.mark.skipif(not GPU, reason="GPU tier: the fast path runs only compiled kernels")
def test_cached_launches_equal_tritons_own(monkeypatch):
    base = torch.randn(1000, device="cuda")
    cases = [(base, 1000), (base[1:], 999), (base[3:], 16), (base, 1), (base[1:], 1), (base, 32)]
    for fast in ("1", "0", "1"):  # the cache filled, Triton's own path, the cache hit
        monkeypatch.setenv("MONARCHRT_TRITON_FAST_LAUNCH", fast)
        for (x, n), add_one, block in itertools.product(cases, (False, True), (128, 64, 32)):
            y = torch.full_like(x, float("nan"))
            extra = {"ADD_ONE": True} if add_one else {}
            if block < 128:  # the constexpr by position (64, then 32): its value, not its kind, picks the kernel
                _launch.launch(_axpb, (triton.cdiv(n, block),), x, y, n, 2.5, block, **extra)
            else:
                _launch.launch(_axpb, (triton.cdiv(n, block),), x, y, n, 2.5, B=block, **extra)
            want = torch.full_like(x, float("nan"))  # Triton's own launch (it fuses x * a + n into an FMA)
            _axpb[(triton.cdiv(n, block),)](x, want, n, 2.5, B=block, ADD_ONE=add_one)
            torch.testing.assert_close(y[:n], want[:n], rtol=0, atol=0)
            torch.testing.assert_close(y[:n], x[:n] * 2.5 + n + add_one)  # and it computed the right thing
            assert torch.isnan(y[n:]).all()


@pytest.mark.skipif(not GPU, reason="GPU tier: the fast path runs only compiled kernels")
def test_a_repeated_launch_skips_tritons_binding(monkeypatch):
    """The point of the cache: the second launch with the same specialisation does not enter
    ``JITFunction.run`` (Triton's binder), for a plain kernel and for every attention launch."""
    from triton.runtime.jit import JITFunction

    import monarchrt_ops as m

    monkeypatch.setenv("MONARCHRT_TRITON_FAST_LAUNCH", "1")
    runs = []
    real_run = JITFunction.run
    monkeypatch.setattr(JITFunction, "run", lambda self, *a, **kw: runs.append(self) or real_run(self, *a, **kw))
    x = torch.randn(256, device="cuda")
    y = torch.empty_like(x)
    _launch.launch(_axpb, (2,), x, y, 256, 2.0, B=128)
    runs.clear()
    _launch.launch(_axpb, (2,), x, y, 256, 2.0, B=128)
    assert runs == [], "the cached launch went through Triton's binder"
    q, k, v = (torch.randn(1, 2 * 12 * 20, 4, 64, device="cuda").bfloat16() for _ in range(3))
    m.monarch_attention(q, k, v, (12, 20))
    runs.clear()
    m.monarch_attention(q, k, v, (12, 20))
    assert runs == [], f"attention launches that missed the cache: {[r.fn.__name__ for r in runs]}"


@pytest.mark.skipif(not GPU, reason="GPU tier: the fast path runs only compiled kernels")
def test_attention_forward_and_backward_are_the_same_through_the_cache(monkeypatch):
    import monarchrt_ops as m

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 3 * 12 * 20, 4, 64, device="cuda", generator=g).bfloat16() for _ in range(3))
    results = []
    for fast in ("1", "1", "0"):  # the cache filled, hit, bypassed
        monkeypatch.setenv("MONARCHRT_TRITON_FAST_LAUNCH", fast)
        ins = [t.clone().requires_grad_() for t in (q, k, v)]
        out = m.monarch_attention(*ins, (12, 20), causal_block_frames=1, backend="triton")
        grads = torch.autograd.grad(out, ins, torch.ones_like(out))
        results.append((out, *grads))
    for again in results[1:]:
        for a, b in zip(results[0], again, strict=True):
            assert torch.equal(a, b)


def test_scratch_is_kept_per_stream_outside_captures_and_within_its_budget(monkeypatch):
    """``take_scratch``/``keep_scratch``: the same buffers again on the same device and stream once given
    back; other ones on another stream, while a set is checked out (another thread), during a CUDA graph
    capture (never kept), over MONARCHRT_SCRATCH_MB, and after ``release_scratch``."""
    monkeypatch.delenv("MONARCHRT_SCRATCH_MB", raising=False)
    _launch.release_scratch()
    made = []

    def make():
        made.append((torch.empty(1024), torch.empty(16)))  # 4160 bytes
        return made[-1]

    what = ("test", 1024)
    a, ticket = _launch.take_scratch(what, 0, 7, make)
    _launch.keep_scratch(ticket, a)
    b, ticket = _launch.take_scratch(what, 0, 7, make)
    assert b is a and len(made) == 1
    c, ticket_c = _launch.take_scratch(what, 0, 7, make)  # a is checked out: a set of its own
    assert c is not a
    _launch.keep_scratch(ticket, b)
    _launch.keep_scratch(ticket_c, c)  # a came back first: c is dropped, and uncounted
    assert _launch._scratch_held[0] == 4160
    assert _launch.take_scratch(what, 0, 8, make)[0] is not a  # another stream
    assert _launch.take_scratch(what, 1, 7, make)[0] is not a  # another device
    _launch.release_scratch()
    d, ticket = _launch.take_scratch(what, 0, 7, make)
    assert d is not a and ticket is not None
    _launch.keep_scratch(ticket, d)
    monkeypatch.setattr(_launch, "_capturing", [lambda: True])
    e, ticket = _launch.take_scratch(what, 0, 7, make)
    assert e is not d and ticket is None  # a capture: new buffers from the graph's pool, never kept
    monkeypatch.undo()
    monkeypatch.setenv("MONARCHRT_SCRATCH_MB", "0.005")  # 5242 bytes: one set of 4160, not two
    _launch.keep_scratch(ticket, e)
    assert _launch.take_scratch(what, 0, 7, make)[0] is d
    f, ticket = _launch.take_scratch(("other",), 0, 7, make)
    assert ticket is None
    monkeypatch.setenv("MONARCHRT_SCRATCH_MB", "lots")
    with pytest.raises(ValueError, match="MONARCHRT_SCRATCH_MB='lots'"):
        _launch.take_scratch(("other",), 0, 7, make)
    _launch.release_scratch()
    assert not _launch._scratch and _launch._scratch_held[0] == 0
