"""Hadamard transform: float64 construction, inverse, isometry, gradients, in place, padding, FP8, and
every backend the registry knows (reference, Triton, the CUDA kernel) against the float64 reference by
the one tolerance rule (conftest.assert_close_to_float64, docs/testing.md)."""

import math

import pytest
import torch
from conftest import FLOOR, assert_close_to_float64, rel_err, skip_unless_supported

import monarchrt_ops as m
from monarchrt_ops import ops, registry
from monarchrt_ops.hadamard_matrices import SPECIAL_ORDERS, hadamard_matrix, special, sylvester

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
POW2 = [2**k for k in range(1, 16)]
SPECIAL = [12 * 4, 20 * 2, 28 * 64, 40 * 16, 12 * 4096, 20, 40 * 4096]


@pytest.mark.parametrize("order", SPECIAL_ORDERS)
def test_special_matrices_are_hadamard(order):
    h = special(order)
    assert h.abs().eq(1).all()
    torch.testing.assert_close(h @ h.T, order * torch.eye(order, dtype=torch.float64), rtol=0, atol=0)


@pytest.mark.parametrize("n", POW2 + SPECIAL)
def test_reference_equals_dense_product(n):
    x = torch.randn(3, n, dtype=torch.float64)
    y = m.hadamard(x, backend="reference")
    if n <= 8192:
        torch.testing.assert_close(y, x @ hadamard_matrix(n).T / n**0.5, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))  # isometry with the default scale
    back = ops.hadamard(y, n**-0.5, True, False, "reference")  # transpose undoes it
    torch.testing.assert_close(back, x)


@pytest.mark.parametrize("n", [256, 4096])
def test_sylvester_is_its_own_inverse(n):
    x = torch.randn(2, 3, n, dtype=torch.float64)
    torch.testing.assert_close(m.hadamard(m.hadamard(x)), x)


@pytest.mark.parametrize("n", [16, 24, 40, 28 * 2])
def test_gradcheck_including_non_symmetric_h(n):
    x = torch.randn(2, n, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m.hadamard(x, 0.3), (x,))


def test_in_place_returns_nothing_and_matches():
    x = torch.randn(4, 512)
    expect = m.hadamard(x)
    assert m.hadamard_(x) is None
    torch.testing.assert_close(x, expect)


@pytest.mark.parametrize(
    "fn, exc, msg",
    [
        (lambda: m.hadamard(torch.randn(2, 24 * 3)), ValueError, "n=72 is not supported"),
        (lambda: m.hadamard(torch.randn(2, 2**17)), ValueError, "n=131072 is not supported"),
        (lambda: m.hadamard(torch.randn(2, 12 * 8192)), ValueError, "n=98304 is not supported"),
        (lambda: m.hadamard(torch.randn(2, 8).long()), TypeError, "torch.int64 is not supported"),
        (lambda: m.hadamard_(torch.randn(2, 8, requires_grad=True)), ValueError, "requires grad"),
        (lambda: m.hadamard_(torch.randn(8, 2).T), ValueError, "contiguous"),
        (lambda: m.hadamard(torch.randn(2, 8), backend="cudnn"), ValueError, "backend='cudnn' is not one of"),
    ],
    ids=["size", "too-large", "special-too-large", "dtype", "inplace-grad", "inplace-strided", "backend"],
)
def test_bad_input(fn, exc, msg):
    with pytest.raises(exc, match=msg):
        fn()


def test_opcheck_and_compile():
    x = torch.randn(3, 40, requires_grad=True)
    torch.library.opcheck(ops.hadamard, (x, 0.5, False, False, "reference"))
    torch.library.opcheck(ops.hadamard_, (torch.randn(3, 64), 0.5, False, False, "reference"))
    fn = torch.compile(lambda x: m.hadamard(x) * 2, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(x), m.hadamard(x) * 2)


# --- every backend against the float64 reference --------------------------------------------------
# Each case runs on every backend the registry knows, skipped with the registry's reason where that
# backend cannot run it: on the CPU Triton runs under TRITON_INTERPRET=1 (fp32/fp16: the interpreter has
# no bf16 tl.dot); the CUDA kernel (fp16/bf16; n = m * 2^k, m in 1, 12, 20, 28) needs the built extension
# and a GPU. Every case is also held at its dtype's floor (at_most=FLOOR[dtype]): the bound these cases
# had before the rule. The rule alone is never tighter (its floors are those bounds) and is looser wherever
# twice the error of the same math in PyTorch passes the floor, so the floor is the stricter of the two.
GPU_TIER = pytest.mark.skipif(not GPU, reason="GPU tier")
BACKENDS = registry.backend_names("hadamard")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (rows, n). Every machine: sizes the interpreter runs in about a second each.
SIZES = [(5, n) for n in (2, 8, 16, 24, 64, 160, 256, 768, 1024, 4096, 5120, 8192, 12 * 1024, 2**16, 40 * 4096)]
# GPU tier: every pass of the CUDA kernel: the contiguous fields alone (n <= 16) and chained (n <= 256, and
# rows sharing a field below 256), each strided field and each top-bits factor; m * 2^k on tensor cores
# (2^k >= 8, one and two k-tiles) and on CUDA cores (2^k < 8); 37 rows leave a partial last chunk
GPU_SIZES = [(5, 2**15)] + [
    (37, n) for n in [2**k for k in range(1, 17)] + [12, 24, 20 * 2, 28 * 4, 12 * 8, 20 * 64, 28 * 512, 12 * 4096]
]
SIZE_PARAMS = [pytest.param(r, n, id=f"{r}x{n}") for r, n in SIZES]
SIZE_PARAMS += [pytest.param(r, n, id=f"{r}x{n}", marks=GPU_TIER) for r, n in GPU_SIZES]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows, n", SIZE_PARAMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(backend, rows, n, dtype, poison_empty):
    x = torch.randn(rows, n, dtype=torch.float64)
    y = x.to(DEVICE, dtype)
    with skip_unless_supported(backend):
        out = m.hadamard(x.to(DEVICE, dtype), backend=backend)
        m.hadamard_(y, backend=backend)
    ref = m.hadamard(x, backend="reference")
    same = out if backend == "reference" else m.hadamard(x.to(DEVICE, dtype), backend="reference")
    assert out.dtype == y.dtype == dtype
    assert_close_to_float64(out, ref, same, dtype, at_most=FLOOR[dtype], what="hadamard")
    assert_close_to_float64(y, ref, same, dtype, at_most=FLOOR[dtype], what="hadamard_")


@pytest.mark.parametrize("n", [12, 2048])
@pytest.mark.parametrize("backend", BACKENDS)
def test_misaligned_rows(backend, n, poison_empty):
    """Rows starting 2 bytes past a 16-byte boundary (the CUDA launcher copies to aligned buffers and back)."""
    dtype = torch.float16
    x = torch.randn(9, n, dtype=torch.float64)
    flat = torch.empty(9 * n + 1, dtype=dtype, device=DEVICE)
    y = flat[1:].view(9, n)
    y.copy_(x)
    assert y.data_ptr() % 16 != 0
    with skip_unless_supported(backend):
        out = m.hadamard(y, backend=backend)
        m.hadamard_(y, backend=backend)
    ref = m.hadamard(x, backend="reference")
    same = m.hadamard(x.to(DEVICE, dtype), backend="reference")
    assert_close_to_float64(out, ref, same, dtype, at_most=FLOOR[dtype], what="hadamard")
    assert_close_to_float64(y, ref, same, dtype, at_most=FLOOR[dtype], what="hadamard_")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows, n", [(3, 40 * 4), (5, 20 * 2), (5, 28 * 64)], ids=["3x160", "5x40", "5x1792"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_applies_the_transpose(backend, rows, n, dtype, poison_empty):
    """H_20 and H_28 (so H_40 = H_20 (x) H_2 too) are not symmetric: the backward must use the transposed table."""
    x = torch.randn(rows, n, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(rows, n, dtype=torch.float64)

    def grad(backend):
        xd = x.detach().to(DEVICE, dtype).requires_grad_()
        return torch.autograd.grad(m.hadamard(xd, backend=backend), xd, dy.to(DEVICE, dtype))[0]

    with skip_unless_supported(backend):
        got = grad(backend)
    (ref,) = torch.autograd.grad(m.hadamard(x, backend="reference"), x, dy)
    assert_close_to_float64(got, ref, grad("reference"), dtype, at_most=FLOOR[dtype], what="dx")


@pytest.mark.parametrize("n", [1024, 20 * 64, 40 * 512])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_intermediate_rounds_once(backend, n, poison_empty):
    """Half inputs kept in fp32 between factors: no worse than rounding after every factor, and the
    only error left is the input/output rounding."""
    x = torch.randn(6, n, dtype=torch.float64).to(torch.float16).double()  # exactly representable input
    ref = m.hadamard(x, backend="reference")
    xh = x.to(DEVICE, torch.float16)
    with skip_unless_supported(backend):
        per_factor = rel_err(m.hadamard(xh, backend=backend), ref)
        once = rel_err(m.hadamard(xh, fp32_intermediate=True, backend=backend), ref)
    assert once <= per_factor
    assert once < 2**-11  # one fp16 rounding of the output: relative error below half an ulp, ~4.9e-4


@pytest.mark.parametrize("backend", [None, "eager", "aot_eager"], ids=["eager-call", "compile-eager", "aot_eager"])
@pytest.mark.parametrize("n", [64, 40])  # 40: the H_20 factor, an einsum an autocast region used to run in bf16
def test_autocast_is_ignored_eager_and_compiled(n, backend):
    """Hadamard ignores autocast (monarchrt_ops/amp.py): fp32 in, fp32 computed, fp32 out, as without it."""
    x = torch.randn(3, n)
    want = m.hadamard(x)
    fn = (lambda x: m.hadamard(x)) if backend is None else torch.compile(m.hadamard, fullgraph=True, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(x)
        y = x.clone()
        m.hadamard_(y)
    assert got.dtype == y.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(y, want, rtol=0, atol=0)


def test_triton_interpreter_from_several_threads(poison_empty):
    """The interpreter keeps launch state in globals: concurrent launches used to fail with an
    InterpreterError ("Did you forget to add @triton.jit ?"); launchers now serialise under it."""
    pytest.importorskip("triton")
    if GPU:
        pytest.skip("the interpreter tier (CPU)")
    import concurrent.futures

    x = torch.randn(4, 64, dtype=torch.float64)
    ref = m.hadamard(x, backend="reference")
    w1, w2 = torch.randn(4, 4, 4, dtype=torch.float64), torch.randn(4, 4, 4, dtype=torch.float64)
    mm_ref = m.monarch_matmul(x[:, :16], w1, w2, backend="reference")

    def run(i, backend="triton"):
        if i % 2:
            return m.hadamard(x.float(), backend=backend)
        return m.monarch_matmul(x[:, :16].float(), w1.float(), w2.float(), backend=backend)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(run, range(16)))
    fp32 = torch.float32
    for i, out in enumerate(outs):  # held at the fp32 floor as before the rule (see test_matches_reference)
        assert_close_to_float64(out, (mm_ref, ref)[i % 2], run(i, "reference"), fp32, at_most=FLOOR[fp32])


def test_triton_interpret_set_after_the_kernels_were_imported_is_named():
    import subprocess
    import sys

    code = (
        "import os, torch, monarchrt_ops as m\n"
        "import monarchrt_ops.triton_kernels.hadamard\n"  # kernels defined for the GPU
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "try:\n    m.hadamard(torch.randn(4, 64), backend='triton')\n"
        "except RuntimeError as e:\n    print(e)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "TRITON_INTERPRET is set now, but monarchrt_ops's Triton kernels were compiled for a GPU" in run.stdout


@pytest.mark.parametrize(
    "fn, exc, match",
    [
        (lambda: ops.hadamard(torch.randn(2, 72), 1.0, False, False, ""), ValueError, "n=72 is not supported"),
        (lambda: ops.hadamard_(torch.randn(8, 2).T, 1.0, False, False, ""), ValueError, "must be contiguous"),
        (lambda: ops.hadamard(torch.randn(2, 8).long(), 1.0, False, False, ""), TypeError, "torch.int64"),
        (lambda: m.hadamard(torch.randn(2, 1)), ValueError, "n=1 is not supported"),  # documented: 2 <= n
        (lambda: m.hadamard(torch.randn(2, 8), float("nan")), ValueError, "scale=nan must be finite"),
        # the op's own scale check: a direct call with scale=inf returned an all-inf/NaN tensor
        (lambda: ops.hadamard(torch.randn(2, 8), float("inf"), False, False, ""), ValueError, "scale=inf must be"),
        (lambda: ops.hadamard_(torch.randn(2, 8), float("nan"), False, False, ""), ValueError, "scale=nan must be"),
    ],
    ids=["op-size", "op-inplace-strided", "op-dtype", "n=1", "scale-nan", "op-scale-inf", "op-inplace-scale-nan"],
)
def test_op_checks_its_own_input(fn, exc, match):
    """A direct torch.ops call used to fail inside the launcher (n=72: 'cannot unpack NoneType')."""
    with pytest.raises(exc, match=match):
        fn()


@pytest.mark.parametrize("direct", [False, True], ids=["public", "op"])
def test_compiled_fullgraph_argument_error_names_the_argument(direct):
    torch._dynamo.reset()
    call = (lambda x: ops.hadamard(x, 1.0, False, False, "")) if direct else m.hadamard
    with pytest.raises(torch._dynamo.exc.TorchRuntimeError, match=r"got ValueError\('hadamard: last dim n=72"):
        torch.compile(call, fullgraph=True, backend="eager")(torch.randn(2, 72))


# --- pad=True: fast-hadamard-transform's zero padding to the next power of two (issue 19) -----------
def padded_reference(x, scale=None):
    """fast-hadamard-transform's hadamard_transform_ref in float64: pad to N = 2^ceil(log2 n), apply
    the Sylvester H_N, keep the first n (scale: ours by default, 1/sqrt(N))."""
    n = x.shape[-1]
    big = 1 << (n - 1).bit_length()
    scale = big**-0.5 if scale is None else scale
    xp = torch.nn.functional.pad(x.double(), (0, big - n))
    return (xp @ sylvester(big).T * scale)[..., :n]


@pytest.mark.parametrize("n", [1, 3, 24, 40, 64, 72, 100, 1000])
def test_pad_equals_the_padded_dense_transform(n):
    x = torch.randn(2, 3, n, dtype=torch.float64)
    y = m.hadamard(x, pad=True)
    assert y.shape == x.shape and y.is_contiguous()
    torch.testing.assert_close(y, padded_reference(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.hadamard(x, 1.0, pad=True), padded_reference(x, 1.0), rtol=1e-12, atol=1e-12)


def test_pad_takes_numpy_bools():
    """pad=np.True_ / np.False_ (what a comparison of numpy values gives) act as True / False."""
    np = pytest.importorskip("numpy")
    x = torch.randn(3, 40, dtype=torch.float64)
    assert torch.equal(m.hadamard(x, pad=np.True_), m.hadamard(x, pad=True))
    assert torch.equal(m.hadamard(x, pad=np.array(3) > 5), m.hadamard(x, pad=False))


def test_pad_uses_the_power_of_two_also_for_supported_sizes():
    """n = 40 is supported (H_20 (x) H_2), but pad=True is fast-hadamard-transform's map: H_64's corner."""
    x = torch.randn(3, 40, dtype=torch.float64)
    torch.testing.assert_close(m.hadamard(x, pad=True), x @ sylvester(64)[:40, :40].T / 8, rtol=1e-12, atol=1e-12)
    assert (m.hadamard(x, pad=True) - m.hadamard(x)).abs().max() > 0.1


def test_pad_largest_size():
    x = torch.randn(2, 2**16 - 1, dtype=torch.float64)
    y = m.hadamard(x, pad=True)
    # the padded transform is an isometry of R^N restricted to the first n coordinates: norms never grow
    assert (y.norm(dim=-1) <= x.norm(dim=-1) * (1 + 1e-12)).all()
    i, j = torch.arange(100)[:, None], torch.arange(2**16)[None, :]
    parity = sum(((i & j) >> b) & 1 for b in range(16)) % 2
    h_rows = 1 - 2 * parity.double()  # Sylvester: H[i, j] = (-1)^popcount(i & j)
    row = torch.nn.functional.pad(x[0], (0, 1)) @ h_rows.T / 2**8  # first 100 outputs, float64
    torch.testing.assert_close(y[0, :100], row, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1, 3, 24, 72])
def test_pad_gradcheck(n):
    x = torch.randn(2, n, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m.hadamard(x, 0.3, pad=True), (x,))
    dy = torch.randn(2, n, dtype=torch.float64)
    (dx,) = torch.autograd.grad(m.hadamard(x, pad=True), x, dy)
    torch.testing.assert_close(dx, padded_reference(dy), rtol=1e-12, atol=1e-12)  # H_N symmetric: the same map


def test_pad_compiled_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    x = torch.randn(3, 72, dtype=torch.float64, requires_grad=True)
    fn = torch.compile(lambda x: m.hadamard(x, pad=True), fullgraph=True, backend="aot_eager")
    y = fn(x)
    torch.testing.assert_close(y, padded_reference(x), rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    torch.testing.assert_close(dx, padded_reference(dy), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_pad_matches_the_float64_reference(backend, dtype, poison_empty):
    """Against the float64 transform of the rounded input; held at the floor as before the rule (see
    test_matches_reference)."""
    x = torch.randn(4, 72, dtype=torch.float64)
    dy = torch.randn(4, 72, dtype=torch.float64)

    def run(backend):
        xt = x.to(DEVICE, dtype).requires_grad_()
        y = m.hadamard(xt, pad=True, backend=backend)
        return y, torch.autograd.grad(y, xt, dy.to(DEVICE, dtype))[0]

    with skip_unless_supported(backend):
        y, dx = run(backend)
    same_y, same_dx = run("reference")
    assert y.dtype == dtype
    assert_close_to_float64(y, padded_reference(x.to(dtype)), same_y, dtype, at_most=FLOOR[dtype], what="y")
    assert_close_to_float64(dx, padded_reference(dy.to(dtype)), same_dx, dtype, at_most=FLOOR[dtype], what="dx")


@pytest.mark.parametrize(
    "fn, exc, msg",
    [
        (lambda: m.hadamard(torch.randn(2, 72)), ValueError, r"n=72 is not supported.*hadamard\(x, pad=True\).*to 128"),
        (lambda: m.hadamard(torch.randn(2, 2**16 + 1), pad=True), ValueError, "pad=True takes a last dim n in 1"),
        (lambda: m.hadamard(torch.randn(2, 8), pad=1), TypeError, "pad must be a bool"),
        (lambda: m.hadamard(torch.randn(2, 8).long(), pad=True), TypeError, "torch.int64 is not supported"),
        (lambda: m.hadamard(torch.tensor(1.0), pad=True), ValueError, "at least one dimension"),
    ],
    ids=["names-pad", "pad-too-large", "pad-type", "pad-dtype", "pad-0d"],
)
def test_pad_bad_input(fn, exc, msg):
    with pytest.raises(exc, match=msg):
        fn()


def test_unsupported_size_too_large_for_padding_does_not_suggest_it():
    with pytest.raises(ValueError, match="n=131073 is not supported") as e:
        m.hadamard(torch.randn(1, 2**17 + 1))
    assert "pad=True" not in str(e.value)


# --- out_dtype: FP8 output with per-row scales (issue 19; monarchrt_ops/fp8.py) ---------------------
# e4m3: 3 mantissa bits (half an ulp: 2^-4 relative), subnormal spacing 2^-9; e5m2: 2 bits, 2^-16
FP8 = {torch.float8_e4m3fn: (448.0, 2**-4, 2**-10), torch.float8_e5m2: (57344.0, 2**-3, 2**-17)}


def check_fp8(q, s, y, ref, out_dtype):
    """q, s against the fp32 transform y (the definition) and the float64 transform ref."""
    fmax, half_ulp, half_sub = FP8[out_dtype]
    assert q.dtype == out_dtype and q.shape == y.shape and s.shape == (*y.shape[:-1], 1) and s.dtype == y.dtype
    deq = q.double() * s.double()  # exact: 4 (3) significant bits times 24
    y64 = y.double()
    # one rounding to fp8 of fl(y / s): half an ulp of the value, or half the subnormal spacing
    bound = (half_ulp + 2**-23) * y64.abs() + half_sub * s.double()
    assert ((deq - y64).abs() <= bound).all()
    # and against float64: within fp8 rounding of the row's largest value
    rowmax = ref.abs().amax(-1, keepdim=True)
    assert ((deq - ref).abs() <= half_ulp * rowmax).all()


@pytest.mark.parametrize("out_dtype", list(FP8), ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("n, pad", [(64, False), (40, False), (72, True)])
def test_fp8_output_within_fp8_rounding_and_exact_scales(n, pad, dtype, out_dtype):
    x = (torch.randn(5, n, dtype=torch.float64) * torch.logspace(-3, 3, 5, dtype=torch.float64)[:, None]).to(dtype)
    x[2] = 0  # a zero row
    q, s = m.hadamard(x, pad=pad, out_dtype=out_dtype)
    ydtype = torch.float64 if dtype == torch.float64 else torch.float32
    y = m.hadamard(x.to(ydtype), pad=pad)  # the transform the definition quantises
    ref = padded_reference(x) if pad else x.double() @ hadamard_matrix(n).T / n**0.5
    check_fp8(q, s, y, ref, out_dtype)
    fmax = FP8[out_dtype][0]
    # scales exact: the correctly rounded amax / fp8_max of y, 1 for the zero row
    want = (y.double().abs().amax(-1, keepdim=True) / fmax).to(ydtype)
    want[2] = 1.0
    torch.testing.assert_close(s, want, rtol=0, atol=0)
    assert q[2].double().eq(0).all()
    # every non-zero row reaches the format's largest value, exactly
    assert q.double().abs().amax(-1)[[0, 1, 3, 4]].eq(fmax).all()


def test_fp8_underflowing_scale_falls_back_to_one():
    x = torch.zeros(2, 64)
    x[0, 0] = 1e-44  # amax / 448 underflows to 0 in fp32
    q, s = m.hadamard(x, 1.0, out_dtype=torch.float8_e4m3fn)
    assert s.flatten().tolist() == [1.0, 1.0] and q.double().eq(0).all()


@pytest.mark.parametrize("out_dtype", list(FP8), ids=str)
def test_fp8_fixed_scale_saturates(out_dtype):
    fmax = FP8[out_dtype][0]
    x = torch.randn(4, 256, dtype=torch.float64)
    y = m.hadamard(x.float())
    fixed = float(y.abs().max()) / fmax / 4  # a quarter of the range: the largest values saturate
    q, s = m.hadamard(x.float(), out_dtype=out_dtype, out_scale=fixed)
    assert s.shape == (4, 1) and s.eq(torch.tensor(fixed, dtype=torch.float32)).all()
    over = (y / s).abs() > fmax
    assert over.any() and (q.double()[over] == fmax * y[over].sign().double()).all()
    ok = ~over
    fmax, half_ulp, half_sub = FP8[out_dtype]
    deq = q.double() * s.double()
    bound = (half_ulp + 2**-23) * y.double().abs() + half_sub * s.double()
    assert ((deq - y.double()).abs() <= bound)[ok].all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp8_transform(backend, poison_empty):
    x = torch.randn(3, 256, dtype=torch.float64).half()
    with skip_unless_supported(backend):  # the transform runs in fp32 (hadamard's out_dtype)
        q, s = m.hadamard(x.to(DEVICE), out_dtype=torch.float8_e4m3fn, backend=backend)
    y = m.hadamard(x.float().to(DEVICE), backend=backend)
    check_fp8(q.cpu(), s.cpu(), y.cpu(), x.double() @ hadamard_matrix(256).T / 16, torch.float8_e4m3fn)


def test_fp8_is_not_differentiable_and_compiles():
    x = torch.randn(3, 64, requires_grad=True)
    with pytest.raises(ValueError, match="out_dtype=torch.float8_e4m3fn is not differentiable"):
        m.hadamard(x, out_dtype=torch.float8_e4m3fn)
    with torch.no_grad():
        q, s = m.hadamard(x, out_dtype=torch.float8_e4m3fn)
    torch._dynamo.reset()
    fn = torch.compile(lambda x: m.hadamard(x, out_dtype=torch.float8_e5m2), fullgraph=True, backend="aot_eager")
    q2, s2 = fn(x.detach())
    q1, s1 = m.hadamard(x.detach(), out_dtype=torch.float8_e5m2)
    assert q2.dtype == torch.float8_e5m2 and q1.view(torch.uint8).equal(q2.view(torch.uint8)) and s1.equal(s2)


@pytest.mark.parametrize(
    "kwargs, exc, msg",
    [
        ({"out_dtype": torch.float16}, ValueError, "out_dtype=torch.float16 is not supported"),
        ({"out_dtype": "float8_e4m3fn"}, TypeError, "out_dtype must be a torch.dtype"),
        ({"out_scale": 1.0}, ValueError, "out_scale=1.0 needs an FP8 out_dtype"),
        ({"out_dtype": torch.float8_e4m3fn, "out_scale": 0.0}, ValueError, "out_scale=0.0 must be positive"),
        ({"out_dtype": torch.float8_e4m3fn, "out_scale": math.inf}, ValueError, "out_scale=inf must be positive"),
        ({"out_dtype": torch.float8_e4m3fn, "out_scale": "1"}, TypeError, "out_scale must be a positive"),
        ({"out_dtype": torch.float8_e4m3fn, "out_scale": True}, TypeError, "out_scale must be a positive"),
    ],
    ids=["dtype", "dtype-type", "scale-without-dtype", "scale-zero", "scale-inf", "scale-type", "scale-bool"],
)
def test_fp8_bad_arguments(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        m.hadamard(torch.randn(2, 8), **kwargs)
