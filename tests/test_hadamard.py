"""Hadamard transform: float64 construction, inverse, isometry, gradients, in place, Triton."""

import pytest
import torch
from conftest import TOL, rel_err

import monarchrt_ops as m
from monarchrt_ops import ops
from monarchrt_ops.hadamard_matrices import SPECIAL_ORDERS, hadamard_matrix, special

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


TRITON_SIZES = [2, 8, 16, 24, 64, 160, 256, 768, 1024, 4096, 5120, 8192, 12 * 1024, 2**16, 40 * 4096]
TRITON_SIZES += [2**15] if GPU else []
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if GPU else [])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", TRITON_SIZES)
def test_triton_matches_reference(n, dtype, poison_empty):
    pytest.importorskip("triton")
    x = torch.randn(5, n, dtype=torch.float64)
    ref = m.hadamard(x, backend="reference")
    out = m.hadamard(x.to(DEVICE, dtype), backend="triton")
    assert out.dtype == dtype
    assert rel_err(out, ref) < TOL[dtype]
    y = x.to(DEVICE, dtype)
    m.hadamard_(y, backend="triton")
    assert rel_err(y, ref) < TOL[dtype]


def test_triton_gradient_applies_the_transpose():
    pytest.importorskip("triton")
    x = torch.randn(3, 40 * 4, dtype=torch.float64, requires_grad=True)
    dy = torch.randn_like(x)
    (ref,) = torch.autograd.grad(m.hadamard(x, backend="reference"), x, dy)
    x32 = x.detach().to(DEVICE, torch.float32).requires_grad_()
    (got,) = torch.autograd.grad(m.hadamard(x32, backend="triton"), x32, dy.to(DEVICE, torch.float32))
    assert rel_err(got, ref) < TOL[torch.float32]


@pytest.mark.parametrize("n", [1024, 20 * 64, 40 * 512])
def test_fp32_intermediate_rounds_once(n, poison_empty):
    """Half inputs kept in fp32 between factors: no worse than rounding after every factor, and the
    only error left is the input/output rounding."""
    pytest.importorskip("triton")
    x = torch.randn(6, n, dtype=torch.float64).to(torch.float16).double()  # exactly representable input
    ref = m.hadamard(x, backend="reference")
    xh = x.to(DEVICE, torch.float16)
    per_factor = rel_err(m.hadamard(xh, backend="triton"), ref)
    once = rel_err(m.hadamard(xh, fp32_intermediate=True, backend="triton"), ref)
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

    def run(i):
        if i % 2:
            return rel_err(m.hadamard(x.float(), backend="triton"), ref)
        return rel_err(m.monarch_matmul(x[:, :16].float(), w1.float(), w2.float(), backend="triton"), mm_ref)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        errors = list(pool.map(run, range(16)))
    assert max(errors) < TOL[torch.float32]


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
    ],
    ids=["op-size", "op-inplace-strided", "op-dtype", "n=1", "scale-nan"],
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
