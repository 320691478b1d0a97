"""Monarch matmul equals the dense product of its factors; gradients; MonarchLinear; Triton."""

import pytest
import torch
from conftest import FLOOR, assert_close_to_float64, skip_unless_supported

import monarchrt_ops as m
from monarchrt_ops import ops, registry
from monarchrt_ops.arch import arch_of

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"


def dense_monarch(w1, w2):
    """M (s*l, k*p) built independently: block-diagonal matrices and permutation matrices."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    b1 = torch.block_diag(*w1)  # (k*q, k*p)
    b2 = torch.block_diag(*w2)  # (l*s, l*r)
    p1 = torch.zeros(k * q, k * q, dtype=w1.dtype, device=w1.device)  # (r l) -> (l r)
    for ri in range(r):
        for li in range(l):
            p1[li * r + ri, ri * l + li] = 1
    p2 = torch.zeros(s * l, l * s, dtype=w1.dtype, device=w1.device)  # (l s) -> (s l)
    for li in range(l):
        for si in range(s):
            p2[si * l + li, li * s + si] = 1
    return p2 @ b2 @ p1 @ b1


BACKENDS = registry.backend_names("monarch_matmul")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (w1 shape, w2 shape, rows, GPU only). The CPU cases run everywhere (Triton under the interpreter);
# the GPU-only ones are every kernel-2 variant of the CUDA kernels (csrc/monarch_matmul/launch.cu,
# stage2_shape: 32 or 16 columns s per CTA, 16 or 8 consecutive l), several column tiles, K longer than
# one 64-wide chunk in both kernels (p = 96, 128; r = 128) and partial last row tiles, run on every backend.
CASES = {
    "square-16": ((4, 4, 4), (4, 4, 4), 37, False),
    "square-1024": ((32, 32, 32), (32, 32, 32), 37, False),
    "rect-768-to-384": ((8, 192, 96), (24, 16, 64), 37, False),
    "few-large-blocks": ((4, 32, 48), (4, 40, 32), 37, False),  # l = 4 < 16: Triton's strided second product
    "square-1024-197": ((32, 32, 32), (32, 32, 32), 197, True),
    "square-4096": ((64, 64, 64), (64, 64, 64), 4096 + 17, True),
    "square-4096-16k-rows": ((64, 64, 64), (64, 64, 64), 16384, True),  # issue 19's shape
    "rect-768-to-384-130": ((8, 192, 96), (24, 16, 64), 130, True),
    "l32-s16": ((16, 32, 16), (32, 16, 16), 64, True),
    "l24-s32": ((8, 48, 32), (24, 32, 16), 1, True),
    "l8-s48-r128": ((8, 128, 128), (8, 48, 128), 100, True),
    "l8-s128": ((4, 32, 16), (8, 128, 16), 70, True),
    "l48-s32": ((16, 48, 16), (48, 32, 16), 65, True),
    "l48-s16": ((16, 48, 16), (48, 16, 16), 64, True),
}
CPU_CASES = [name for name, case in CASES.items() if not case[3]]
# The backward's GPU tier: issue 19's shapes (n = 4096 with 64 blocks at 16K rows and a partial tile,
# 1024 with 32 blocks, 768 -> 384) and both forms of each kernel (l >= 16 batched, l < 16 strided).
BACKWARD_GPU_CASES = ["square-4096-16k-rows", "square-4096", "square-1024-197", "rect-768-to-384-130",
                      "l8-s48-r128", "l48-s32", "l24-s32"]  # fmt: skip


def _weights(s1, s2, g):
    w1 = torch.randn(*s1, dtype=torch.float64, generator=g) / s1[2] ** 0.5
    w2 = torch.randn(*s2, dtype=torch.float64, generator=g) / s2[2] ** 0.5
    return w1, w2


@pytest.mark.parametrize("name", [*CPU_CASES, "square-4096"])
def test_equals_dense_product_with_gradients(name):
    s1, s2, _, _ = CASES[name]
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(*s1, dtype=torch.float64, generator=g, requires_grad=True)
    w2 = torch.randn(*s2, dtype=torch.float64, generator=g, requires_grad=True)
    x = torch.randn(3, 5, s1[0] * s1[2], dtype=torch.float64, generator=g, requires_grad=True)
    out = m.monarch_matmul(x, w1, w2, backend="reference")
    dense = dense_monarch(w1, w2)
    torch.testing.assert_close(out, x @ dense.T)
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, w1, w2), dout)
    want = torch.autograd.grad(x @ dense.T, (x, w1, w2), dout)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_gradcheck_and_opcheck():
    w1 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: m.monarch_matmul(x, a, b), (x, w1, w2))
    torch.library.opcheck(ops.monarch_matmul, (x.float(), w1.float(), w2.float(), "reference"))
    dout = torch.randn(4, 15)
    plain = [t.detach().float() for t in (x, w1, w2)]  # the backward op has no derivative of its own
    torch.library.opcheck(ops.monarch_matmul_backward, (dout, *plain, "reference"))


@pytest.mark.filterwarnings("ignore:Input #.* is not a double precision")
def test_gradcheck_and_opcheck_of_the_triton_backward():
    """The kernels' backward (Triton takes no float64: fp32, its dots in 3-pass tf32, against central
    differences, exact up to fp32 rounding for a product linear in each input) and the op's schema
    through it. The full Jacobian: fast_mode's one projection passed dw2 scaled by 1.01."""
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(0)
    x, w1, w2 = (torch.randn(*s, generator=g).to(DEVICE).requires_grad_() for s in ((2, 4), (2, 2, 2), (2, 2, 2)))
    with skip_unless_supported("triton"):
        assert torch.autograd.gradcheck(lambda *t: m.monarch_matmul(*t, backend="triton"), (x, w1, w2),
                                        eps=1e-2, atol=1e-3, rtol=1e-3)  # fmt: skip
    plain = [t.detach() for t in (x, w1, w2)]
    dout = torch.randn(2, 4, generator=g).to(DEVICE)
    torch.library.opcheck(ops.monarch_matmul_backward, (dout, *plain, "triton"))


def test_monarch_linear():
    layer = m.MonarchLinear(64, 32, nblocks=4).double()
    x = torch.randn(7, 64, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ layer.dense_weight().T + layer.bias)
    layer(x).sum().backward()
    assert layer.w1.grad is not None and layer.w2.grad is not None and layer.bias.grad is not None
    with pytest.raises(ValueError, match="must divide by nblocks=5"):
        m.MonarchLinear(64, 32, nblocks=5)


@pytest.mark.parametrize(
    "args, exc, msg",
    [
        ((torch.randn(2, 10), torch.randn(2, 3, 4), torch.randn(3, 5, 2)), ValueError, "last dim 10 != k\\*p"),
        ((torch.randn(2, 8), torch.randn(2, 3, 4), torch.randn(4, 5, 2)), ValueError, "l\\*r = k\\*q = 6"),
        ((torch.randn(2, 8), torch.randn(2, 3), torch.randn(3, 5, 2)), ValueError, "w1 must be 3-D"),
        ((torch.randn(2, 8), torch.randn(2, 3, 4).double(), torch.randn(3, 5, 2)), TypeError, "share a float dtype"),
    ],
    ids=["k*p", "l*r", "rank", "dtype"],
)
def test_bad_input(args, exc, msg):
    with pytest.raises(exc, match=msg):
        m.monarch_matmul(*args)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_matches_float64(backend, name, dtype, poison_empty):
    """Every backend against float64 by the one rule (docs/testing.md), held at the floor as before it, and
    every row on its own: a wrong row inside a right-norm matrix must not pass."""
    s1, s2, rows, gpu_only = CASES[name]
    if gpu_only and not GPU:
        pytest.skip("GPU tier: a CUDA kernel variant at its row count")
    g = torch.Generator().manual_seed(0)
    w1, w2 = _weights(s1, s2, g)
    x = torch.randn(rows, s1[0] * s1[2], dtype=torch.float64, generator=g)
    ref = m.monarch_matmul(x, w1, w2, backend="reference")
    dev = [t.to(DEVICE, dtype) for t in (x, w1, w2)]
    with skip_unless_supported(backend):
        out = m.monarch_matmul(*dev, backend=backend)
    assert out.shape == ref.shape and out.dtype == dtype
    same = m.monarch_matmul(*dev, backend="reference")
    assert_close_to_float64(out, ref, same, dtype, at_most=FLOOR[dtype])
    row_err = ((out.double().cpu() - ref).norm(dim=1) / ref.norm(dim=1)).max().item()
    assert row_err < 4 * FLOOR[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", [*CPU_CASES, *BACKWARD_GPU_CASES])
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_matches_float64(backend, name, dtype, poison_empty, monkeypatch):
    """dx, dw1, dw2 against float64 autograd, by the one rule (held at the floor): the CPU cases with batch
    dims against the dense product, the GPU cases at their row counts against the reference backend in
    float64 on the GPU (the dense product of their factors is test_equals_dense_product_with_gradients').
    'triton' named runs its kernels (counted: not the closed form); 'cuda' runs the forward and leaves
    the backward to automatic selection (forward only)."""
    from monarchrt_ops.backends.triton import TritonMonarchMatmul

    launched = []
    launch_backward = TritonMonarchMatmul.launch_backward
    monkeypatch.setattr(TritonMonarchMatmul, "launch_backward", lambda *a: launched.append(1) or launch_backward(*a))
    s1, s2, rows, gpu_only = CASES[name]
    if gpu_only and not GPU:
        pytest.skip("GPU tier: the backward at a realistic row count")
    g = torch.Generator().manual_seed(1)
    w1, w2 = _weights(s1, s2, g)
    lead = (rows,) if gpu_only else (2, 19)
    x = torch.randn(*lead, s1[0] * s1[2], dtype=torch.float64, generator=g)
    dout = torch.randn(*lead, s2[0] * s2[1], dtype=torch.float64, generator=g)
    if gpu_only:
        x, w1, w2, dout = (t.to(DEVICE) for t in (x, w1, w2, dout))
        ref = [t.clone().requires_grad_() for t in (x, w1, w2)]
        want = torch.autograd.grad(m.monarch_matmul(*ref, backend="reference"), ref, dout)
    else:
        ref = [t.clone().requires_grad_() for t in (x, w1, w2)]
        want = torch.autograd.grad(ref[0] @ dense_monarch(ref[1], ref[2]).T, ref, dout)

    def grads(name_):
        ins = [t.to(DEVICE, dtype).requires_grad_() for t in (x, w1, w2)]
        return torch.autograd.grad(m.monarch_matmul(*ins, backend=name_), ins, dout.to(DEVICE, dtype))

    with skip_unless_supported(backend):
        got = grads(backend)
    # 'triton' runs its kernels; 'cuda' (forward only) runs the backward the selection picks for this
    # shape, which may be Triton's where a table measured it faster (h200.json at 64 blocks of 64)
    x2 = x.reshape(-1, x.shape[-1]).to(DEVICE, dtype)
    chosen = ops._monarch_matmul_selection(x2, w1.to(dtype), w2.to(dtype), backend, backward=True).backend.name
    assert launched == ([1] if chosen == "triton" else [])
    assert backend != "triton" or chosen == "triton"
    same = grads("reference")
    for what, a, b, c in zip(("dx", "dw1", "dw2"), got, want, same, strict=True):
        assert a.dtype == dtype and a.shape == b.shape, what
        assert_close_to_float64(a, b, c, dtype, at_most=FLOOR[dtype], what=what)


def _many_chunks(monkeypatch):
    """Chunks of the weight gradients' rows as small as the kernels' row step allows (64 or 16 rows)."""
    from monarchrt_ops.triton_kernels import monarch_matmul as launch

    monkeypatch.setattr(launch, "_MIN_CHUNK_ROWS", 1)
    monkeypatch.setattr(launch, "_ROWS_PER_PARTIAL", 0)
    monkeypatch.setattr(launch, "_TARGET_PROGRAMS", 10**6)
    return launch


@pytest.mark.parametrize("rows", [1, 300, 512], ids=["one-chunk", "remainder", "even-chunks"])
@pytest.mark.parametrize("batched", [False, True], ids=["per-block", "16-blocks"])
def test_weight_gradient_sums_row_chunks_in_order(rows, batched, monkeypatch):
    """_weight_grad's per-chunk fp32 partials (_row_sum_partials) and their sum (_sum_chunks), with a
    partial last chunk, equal the float64 sum over all rows: columns g*M + m (w1's gradient reads them
    so) or m*G + g, 16 consecutive g at once (w2's; 18 blocks: a partial group)."""
    pytest.importorskip("triton")
    launch = _many_chunks(monkeypatch)
    dtype = torch.bfloat16 if GPU else torch.float32
    G, M, N = (18, 5, 3) if batched else (3, 20, 17)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(rows, M * G, dtype=torch.float64, generator=g)
    b = torch.randn(rows, N * G, dtype=torch.float64, generator=g)
    if batched:
        strides = {"a_group": 1, "a_elem": G, "b_group": 1, "b_elem": G}
        blocks = lambda t: t.view(rows, -1, G).transpose(1, 2)  # noqa: E731  [rows, G, M]
    else:
        strides = {"a_group": M, "a_elem": 1, "b_group": N, "b_elem": 1}
        blocks = lambda t: t.view(rows, G, -1)  # noqa: E731
    want = torch.einsum("igm,ign->gmn", blocks(a), blocks(b))
    same = torch.einsum("igm,ign->gmn", *(blocks(t.to(dtype).float()) for t in (a, b))).to(dtype)
    got = launch._weight_grad(a.to(DEVICE, dtype), b.to(DEVICE, dtype), G, M, N, batched=batched, **strides)
    assert got.dtype == dtype and got.shape == (G, M, N)
    assert_close_to_float64(got, want, same, dtype, at_most=FLOOR[dtype])


@pytest.mark.parametrize("name", ["square-16", "rect-768-to-384", "few-large-blocks", "square-4096-16k-rows"])
def test_backward_kernels_launch_seven_kernels_and_repeat_bit_for_bit(name, monkeypatch):
    """Seven launches (y1, dy1, dx, and partials + ordered sum for each weight gradient; no copies), and
    the same gradients bit for bit on a repeat: no atomics, a fixed order of every sum."""
    pytest.importorskip("triton")
    from monarchrt_ops.triton_kernels import monarch_matmul as launch

    s1, s2, rows, gpu_only = CASES[name]
    if gpu_only and not GPU:
        pytest.skip("GPU tier: the backward at issue 19's shape")
    if not gpu_only:  # several chunks and a partial last one at 300 rows
        rows = 300
        _many_chunks(monkeypatch)
    dtype = torch.bfloat16 if GPU else torch.float32
    g = torch.Generator().manual_seed(2)
    w1, w2 = (t.to(DEVICE, dtype) for t in _weights(s1, s2, g))
    x = torch.randn(rows, s1[0] * s1[2], generator=g).to(DEVICE, dtype)
    dout = torch.randn(rows, s2[0] * s2[1], generator=g).to(DEVICE, dtype)
    names, real = [], launch.launch
    monkeypatch.setattr(
        launch, "launch", lambda kernel, *a, **kw: names.append(kernel.__name__) or real(kernel, *a, **kw)
    )
    with skip_unless_supported("triton"):
        first = ops.monarch_matmul_backward(dout, x, w1, w2, "triton")
    second = ops.monarch_matmul_backward(dout, x, w1, w2, "triton")
    step = ["_block_product", "_reordered_block_matmul" if s2[0] >= 16 else "_block_product", "_block_product"]
    assert names == [*step, *["_row_sum_partials", "_sum_chunks"] * 2] * 2
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_backward_kernels_are_chosen_where_the_h200_table_measured_them_faster(monkeypatch):
    """Triton's backward is measured-only: automatically taken at the shapes tuned_configs/h200.json
    measured it faster (64 and 32 blocks of 64 and 32, 16K rows), the closed form where it measured it
    slower (16 blocks of 256) and where nothing was measured; the forward always Triton (or the measured
    cuda kernels, here absent)."""
    pytest.importorskip("triton")
    from monarchrt_ops import registry
    from monarchrt_ops.arch import Arch
    from monarchrt_ops.backends import cuda
    from monarchrt_ops.problem import MonarchMatmulProblem

    monkeypatch.setattr(cuda.CudaMonarchMatmul, "supports", lambda self, problem, arch: "not built here")
    h200 = Arch("sm90", (9, 0), "NVIDIA H200", 132, 232448)

    def chosen(rows, w, backward):
        sel = registry.select("monarch_matmul", MonarchMatmulProblem(rows, w, w, torch.bfloat16, backward), h200)
        return sel.backend.name, dict(sel.rejected).get("triton", "")

    assert chosen(16384, (64, 64, 64), True) == ("triton", "")
    assert chosen(16384, (32, 32, 32), True) == ("triton", "")
    name, why = chosen(16384, (16, 256, 256), True)
    assert name == "reference" and "with the closed form" in why and "(h200.json)" in why
    assert chosen(16384, (8, 8, 8), True)[0] == "reference"  # never measured: the closed form
    assert chosen(16384, (32, 32, 32), False) == ("triton", "")


def test_backward_kernels_take_the_forwards_tuned_config_also_under_strict_mode(monkeypatch):
    """The tuner times forwards only; the backward's kernels are the forward's, so they take its table
    entry, and MONARCHRT_STRICT=1 asks for that entry instead of failing on a key no table can have."""
    pytest.importorskip("triton")
    from monarchrt_ops import registry
    from monarchrt_ops.arch import Arch
    from monarchrt_ops.problem import MonarchMatmulProblem

    h100 = Arch("sm90", (9, 0), "NVIDIA H100 80GB HBM3", 132, 232448)
    w = (64, 64, 64)  # a shape tuned_configs/h100.json has a Triton entry for (16K rows)
    forward = registry.select("monarch_matmul", MonarchMatmulProblem(16384, w, w, torch.bfloat16), h100, "triton")
    assert forward.config_source.startswith("tuned table h100.json")
    monkeypatch.setenv("MONARCHRT_STRICT", "1")
    backward = registry.select(
        "monarch_matmul", MonarchMatmulProblem(16384, w, w, torch.bfloat16, True), h100, "triton"
    )
    assert backward.config == forward.config and backward.config_source == forward.config_source
    with pytest.raises(RuntimeError, match="MONARCHRT_STRICT=1: no tuned triton config"):  # untuned: as the forward
        registry.select("monarch_matmul", MonarchMatmulProblem(16384, (8, 8, 8), (8, 8, 8), torch.bfloat16, True),
                        h100, "triton")  # fmt: skip


def test_backward_op_names_a_bad_dout():
    x, w1, w2 = torch.randn(4, 8), torch.randn(2, 3, 4), torch.randn(3, 5, 2)
    for dout in (torch.randn(4, 10), torch.randn(4, 15).double()):
        with pytest.raises(ValueError, match=r"dout must be the output's shape \(4, 15\)"):
            ops.monarch_matmul_backward(dout, x, w1, w2, "")


def test_second_derivative_takes_the_closed_form():
    """The kernels' backward has no derivative of its own: double backward goes through the einsums."""
    w1 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, a, b: m.monarch_matmul(x, a, b), (x, w1, w2))


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((16, 16, 0), ValueError, "nblocks=0 must be >= 1"),
        ((0, 16, 4), ValueError, "in_features=0 must be >= 1"),
        ((16, 16, -4), ValueError, "nblocks=-4 must be >= 1"),
        ((16, 16, 2.0), TypeError, "nblocks must be an int"),
        # sizes beyond int64 elements failed inside torch.empty (an overflow RuntimeError/TypeError)
        ((2**40, 2**40, 1), ValueError, "more elements than a tensor can hold"),
        ((2**63, 1, 1), ValueError, "more elements than a tensor can hold"),
    ],
    ids=["zero-blocks", "zero-in", "negative-blocks", "float-blocks", "too-large", "beyond-int64"],
)
def test_monarch_linear_rejects_bad_sizes(args, exc, match):
    with pytest.raises(exc, match=match):
        m.MonarchLinear(*args)


def test_monarch_linear_takes_numpy_integer_sizes():
    np = pytest.importorskip("numpy")
    layer = m.MonarchLinear(np.int64(16), np.int32(8), np.int64(4), dtype=torch.float64)
    assert (layer.in_features, layer.out_features, layer.nblocks) == (16, 8, 4)
    assert type(layer.in_features) is int  # stored as Python ints: shapes, repr and table keys as before
    x = torch.randn(3, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ layer.dense_weight().T + layer.bias)


# Autocast (issue 18): monarch_matmul runs in the autocast dtype like torch.matmul, eagerly and compiled,
# and MonarchLinear is a drop-in nn.Linear inside an autocast region.
def _compiled(fn, backend):
    return fn if backend is None else torch.compile(fn, fullgraph=True, backend=backend)


@pytest.mark.parametrize("backend", [None, "eager", "aot_eager"], ids=["eager-call", "compile-eager", "aot_eager"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_runs_in_the_region_dtype_eager_and_compiled(dtype, backend):
    g = torch.Generator().manual_seed(0)
    x, w1, w2 = (torch.randn(*s, generator=g) for s in ((6, 16), (4, 4, 4), (4, 4, 4)))
    want = m.monarch_matmul(x.to(dtype), w1.to(dtype), w2.to(dtype))  # no autocast: the op on cast inputs
    fn = _compiled(lambda x: m.monarch_matmul(x, w1, w2), backend)
    with torch.autocast("cpu", dtype=dtype):
        got = fn(x)
        direct = _compiled(lambda x: ops.monarch_matmul(x, w1, w2, ""), backend)(x)  # the op itself
    assert got.dtype == direct.dtype == dtype
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(direct, want, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=dtype):  # float64 is never cast, as for torch.matmul
        assert m.monarch_matmul(x.double(), w1.double(), w2.double()).dtype == torch.float64


@pytest.mark.parametrize("backend", [None, "aot_eager"], ids=["eager-call", "aot_eager"])
def test_monarch_linear_after_an_autocast_linear_is_a_drop_in(backend):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), m.MonarchLinear(32, 16, nblocks=4))
    x = torch.randn(5, 16)
    fn = _compiled(model, backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fn(x)
        h = model[0](x)
        dense = torch.nn.Linear(32, 16)(h)  # what nn.Linear does in its place
    assert y.dtype == dense.dtype == torch.bfloat16
    mon = model[1]
    want = m.monarch_matmul(h, mon.w1.bfloat16(), mon.w2.bfloat16()) + mon.bias.bfloat16()
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    y.float().square().sum().backward()
    assert mon.w1.grad.dtype == mon.w2.grad.dtype == mon.bias.grad.dtype == torch.float32
    assert mon.w1.grad.abs().sum() > 0 and mon.bias.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "shapes, match",
    [
        (((2, 0), (0, 3, 4), (3, 0, 2)), r"w1 \(k, q, p\) = \(0, 3, 4\) has a zero block size"),  # failed in reshape
        (((2, 8), (2, 3, 4), (3, 0, 2)), r"w2 \(l, s, r\) = \(3, 0, 2\) has a zero block size"),
        (((2, 10), (2, 3, 4), (3, 5, 2)), "last dim 10 != k\\*p"),
    ],
    ids=["zero-k", "zero-s", "k*p"],
)
@pytest.mark.parametrize("call", ["public", "op", "op-compiled"])
def test_bad_shapes_name_the_argument_through_every_entry(shapes, match, call):
    """The op checks its own inputs (a direct torch.ops call failed in reshape with no name), and under
    torch.compile(fullgraph=True) the message reaches the user through the fake impl."""
    x, w1, w2 = (torch.randn(*s) for s in shapes)
    torch._dynamo.reset()  # static shapes: after recompiles the message would show symbolic sizes
    fn = {
        "public": lambda: m.monarch_matmul(x, w1, w2),
        "op": lambda: ops.monarch_matmul(x, w1, w2, ""),
        "op-compiled": lambda: torch.compile(
            lambda x: ops.monarch_matmul(x, w1, w2, ""), fullgraph=True, backend="eager"
        )(x),  # fmt: skip
    }[call]
    with pytest.raises((ValueError, torch._dynamo.exc.TorchRuntimeError), match=match):
        fn()


def test_compiled_fullgraph_argument_error_names_the_argument():
    torch._dynamo.reset()
    fn = torch.compile(lambda x: m.monarch_matmul(x, torch.randn(2, 3, 4), torch.randn(3, 5, 2)), fullgraph=True)
    with pytest.raises(torch._dynamo.exc.TorchRuntimeError, match=r"got ValueError\(.monarch_matmul: x's last dim 10"):
        fn(torch.randn(2, 10))


# --- MonarchLinear: structured kernel or the dense product of its materialised weight (issue 19) ----
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(64, 32, 4), (32, 64, 4), (48, 48, 1), (16, 16, 16)])
def test_monarch_linear_dense_and_structured_paths_agree_with_gradients(shape, bias):
    torch.manual_seed(0)
    layer = m.MonarchLinear(*shape, bias=bias, dtype=torch.float64)
    x = torch.randn(2, 5, shape[0], dtype=torch.float64)
    dy = torch.randn(2, 5, shape[1], dtype=torch.float64)
    oracle = x @ dense_monarch(layer.w1.detach(), layer.w2.detach()).T + (layer.bias.detach() if bias else 0)
    params = [p for p in (layer.w1, layer.w2, layer.bias) if p is not None]
    results = {}
    for path in ("structured", "dense"):
        layer.matmul = path
        xg = x.clone().requires_grad_()
        y = layer(xg)
        results[path] = (y, *torch.autograd.grad(y, [xg, *params], dy))
        torch.testing.assert_close(y, oracle, rtol=1e-12, atol=1e-12)
    for a, b in zip(results["structured"], results["dense"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", ["dense", "structured"])
def test_monarch_linear_gradcheck_both_paths(path):
    layer = m.MonarchLinear(8, 12, nblocks=2, dtype=torch.float64, matmul=path)
    args = (torch.randn(3, 8, dtype=torch.float64, requires_grad=True),
            *(p.detach().clone().requires_grad_() for p in (layer.w1, layer.w2, layer.bias)))  # fmt: skip

    def fn(x, w1, w2, bias):
        return torch.func.functional_call(layer, {"w1": w1, "w2": w2, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(fn, args)


@pytest.fixture
def linear_table(tmp_path, monkeypatch):
    """A table for DEVICE's family (the layers below run there) whose measured choice takes the dense path
    from 8 rows of 16 -> 16 with 4 blocks, and says why it does not below."""
    from monarchrt_ops import tables

    family = arch_of(DEVICE).family
    where = {"in_features": 16, "out_features": 16, "nblocks": 4, "dtype": "float64"}
    choices = [
        {"op": "monarch_linear", "backend": "dense", "auto": True, "where": {**where, "rows": {"min": 8}},
         "why": "dense GEMM measured faster from 8 rows"},
        {"op": "monarch_linear", "backend": "dense", "auto": False, "where": where,
         "why": "structured measured faster below 8 rows"},
    ]  # fmt: skip
    data = {"schema": 1, "gpu": "test-linear", "provenance": {"family": family, "gpu_name": "test"},
            "entries": [], "choices": choices}  # fmt: skip
    (tmp_path / "test-linear.json").write_text(__import__("json").dumps(data))
    monkeypatch.setenv("MONARCHRT_TUNED_CONFIGS", str(tmp_path))
    tables.clear_cache()
    yield
    tables.clear_cache()


def test_monarch_linear_path_comes_from_the_tables(linear_table):
    from monarchrt_ops.monarch_matmul import linear_path

    layer = m.MonarchLinear(16, 16, nblocks=4, dtype=torch.float64, device=DEVICE)
    assert layer.path_for(torch.randn(8, 16, dtype=torch.float64, device=DEVICE)) == "dense"
    assert (
        layer.path_for(torch.randn(2, 4, 16, dtype=torch.float64, device=DEVICE)) == "dense"
    )  # rows = 8 over the leading dims
    assert layer.path_for(torch.randn(7, 16, dtype=torch.float64, device=DEVICE)) == "structured"
    assert layer.path_for(torch.randn(8, 16, device=DEVICE)) == "structured"  # float32: no choice matches, the default
    path, why = linear_path(4, 16, 16, 4, torch.float64, torch.device(DEVICE))
    assert path == "structured" and "structured measured faster below 8 rows (test-linear.json)" in why
    path, why = linear_path(8, 16, 32, 4, torch.float64, torch.device(DEVICE))
    assert path == "structured" and "no table has a monarch_linear choice" in why
    layer.matmul = "structured"  # the override wins over the table
    assert layer.path_for(torch.randn(8, 16, dtype=torch.float64, device=DEVICE)) == "structured"
    small = m.MonarchLinear(16, 16, nblocks=4, dtype=torch.float64, device=DEVICE, matmul="dense")
    assert small.path_for(
        torch.randn(1, 16, dtype=torch.float64, device=DEVICE)
    ) == "dense" and "matmul='dense'" in repr(small)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "aot_eager"])
def test_monarch_linear_table_choice_runs_the_dense_path_eager_and_compiled(linear_table, monkeypatch, compiled):
    layer = m.MonarchLinear(16, 16, nblocks=4, dtype=torch.float64, device=DEVICE)
    x = torch.randn(8, 16, dtype=torch.float64, device=DEVICE, requires_grad=True)
    want = x.detach() @ dense_monarch(layer.w1.detach(), layer.w2.detach()).T + layer.bias.detach()
    calls = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a: calls.append(1) or linear(*a))
    torch._dynamo.reset()
    fn = torch.compile(layer, fullgraph=True, backend="aot_eager") if compiled else layer
    y = fn(x)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    y.sum().backward()
    assert calls and layer.w1.grad is not None and x.grad is not None


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: m.MonarchLinear(16, 16, 4, matmul="fast"), ValueError, r"matmul='fast' is not one of \('structured'"),
        (lambda: m.MonarchLinear(16, 16, 4, matmul=1), TypeError, "matmul must be a str or None"),
        (lambda: setattr(m.MonarchLinear(16, 16, 4), "matmul", "Dense"), ValueError, "matmul='Dense'"),
        (lambda: m.MonarchLinear(16, 16, 4, matmul="dense")(torch.randn(2, 8)), ValueError, "x's last dim 8"),
        (lambda: m.MonarchLinear(16, 16, 4, matmul="dense")([1.0]), TypeError, "x must be a torch.Tensor"),
        (lambda: m.MonarchLinear(16, 16, 4, matmul="dense")(torch.randn(2, 16).double()), TypeError, "share a"),
    ],
    ids=["value", "type", "setter", "dense-shape", "dense-not-tensor", "dense-dtype"],
)
def test_monarch_linear_matmul_argument_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bench_linear_rows_suggest_valid_table_choices(tmp_path, monkeypatch):
    """The GPU bench (bench_monarch_matmul --linear) turns its timings into a monarch_linear choice that the
    tables accept and that linear_path then follows: dense only when faster by the margin both ways."""
    pytest.importorskip("triton")
    import json

    from monarchrt_ops import tables
    from monarchrt_ops.bench.bench_monarch_matmul import suggested_choice
    from monarchrt_ops.monarch_matmul import linear_path

    def row(dense_fwd, dense_all, rows):
        return {"shape": "t", "rows": rows, "in_features": 16, "out_features": 16, "nblocks": 4, "dtype": torch.float64,
                "gpu": "test", "structured_fwd_graph_ms": 1.0, "structured_fwd_bwd_ms": 3.0,
                "dense_fwd_graph_ms": dense_fwd, "dense_fwd_bwd_ms": dense_all}  # fmt: skip

    choices = [
        suggested_choice(row(0.5, 2.0, 8)),
        suggested_choice(row(0.5, 2.9, 16)),
        suggested_choice(row(0.97, 1, 32)),
    ]
    assert [c["auto"] for c in choices] == [True, False, False]  # 2.9 / 3.0 and 0.97 / 1.0: within the margin
    assert all(tables.choice_problems(c) == [] for c in choices)
    family = arch_of(DEVICE).family
    data = {"schema": 1, "gpu": "bench", "provenance": {"family": family}, "entries": [], "choices": choices}
    (tmp_path / "bench.json").write_text(json.dumps(data))
    monkeypatch.setenv("MONARCHRT_TUNED_CONFIGS", str(tmp_path))
    tables.clear_cache()
    try:
        paths = [linear_path(rows, 16, 16, 4, torch.float64, torch.device(DEVICE))[0] for rows in (8, 16, 32, 64)]
    finally:
        tables.clear_cache()
    assert paths == ["dense", "structured", "structured", "structured"]
