"""The vendoring recipe (docs/vendoring.md): a copy under another name and op namespace loads side by
side with the original in one process, with its own ops, registry and tables."""

import os
import subprocess
import sys

import pytest

from monarchrt_ops.vendor import vendor

SIDE_BY_SIDE = """
import sys, torch
sys.path.insert(0, {dest!r})
import monarchrt_ops, acme_monarch
assert acme_monarch.__file__.startswith({dest!r}), acme_monarch.__file__
assert acme_monarch.ops.NAMESPACE == "acme" and monarchrt_ops.ops.NAMESPACE == "monarchrt"
assert acme_monarch.ops.attention is torch.ops.acme.attention
assert monarchrt_ops.ops.attention is torch.ops.monarchrt.attention
assert acme_monarch.registry is not monarchrt_ops.registry
# the copy reads its own tables and hashes its own kernels (tables.py resolves them relative to itself)
assert str(acme_monarch.tables.tables_dir()).startswith({dest!r})
assert str(acme_monarch.tables.packaged_dir()).startswith({dest!r})
assert acme_monarch.tables.source_hash("attention") == monarchrt_ops.tables.source_hash("attention")
import acme_monarch.autotune.tables
assert acme_monarch.autotune.tables.lookup is acme_monarch.tables.lookup
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, 2 * 24, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
a = monarchrt_ops.monarch_attention(q, k, v, (4, 6), w_reduce=2)
b = acme_monarch.monarch_attention(q, k, v, (4, 6), w_reduce=2)
assert torch.equal(a, b)
fn = torch.compile(lambda q: acme_monarch.monarch_attention(q, k, v, (4, 6)), fullgraph=True, backend="aot_eager")
assert torch.equal(fn(q), monarchrt_ops.monarch_attention(q, k, v, (4, 6)))
cache = acme_monarch.MonarchKVCache(1, 2, 8, (4, 6), 2, dtype=torch.float64)
cache.append(k, v)
assert torch.equal(cache.attend(q), a.new_tensor(monarchrt_ops.monarch_attention(q, k, v, (4, 6))))
import importlib.util
if importlib.util.find_spec("monarchrt_ops._C") is not None:  # built where nvcc is: both extensions load
    import monarchrt_ops._C, acme_monarch._C
    assert acme_monarch._C is not monarchrt_ops._C
print("ok")
"""

SAME_NAMESPACE = """
import sys
sys.path.insert(0, {dest!r})
import monarchrt_ops, first_copy
assert first_copy.ops.NAMESPACE == "shared"
import importlib
importlib.reload(first_copy.ops)  # the same package registering again reuses its ops
try:
    import second_copy
except RuntimeError as e:
    print(e)
else:
    print("no error")
"""


def test_vendored_copy_loads_side_by_side(tmp_path):
    target = vendor(tmp_path, "acme_monarch", "acme")
    assert (target / "triton_kernels").is_dir() and list((target / "tuned_configs").glob("*.json"))
    assert not any("monarchrt_ops" in p.read_text() for p in target.rglob("*.py"))
    env = {k: v for k, v in os.environ.items() if k != "MONARCHRT_OPS_NAMESPACE"}
    code = SIDE_BY_SIDE.format(dest=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


def test_two_copies_in_one_namespace_is_a_clear_error(tmp_path):
    vendor(tmp_path, "first_copy", "shared")
    vendor(tmp_path, "second_copy", "shared")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OPS_NAMESPACE")}
    code = SAME_NAMESPACE.format(dest=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == (
        "second_copy: the op namespace 'shared' is already registered by first_copy; two packages cannot share one "
        "namespace. Give this copy a namespace of its own (the vendoring tool's --namespace, or its *_OPS_NAMESPACE "
        "environment variable before the import; docs/vendoring.md)"
    )


def test_vendor_refuses_bad_names(tmp_path):
    with pytest.raises(ValueError, match="identifier"):
        vendor(tmp_path, "my-pkg", "ns")
    with pytest.raises(ValueError, match="of its own"):
        vendor(tmp_path, "pkg", "monarchrt")
    vendor(tmp_path, "pkg", "ns_a")
    with pytest.raises(ValueError, match="exists"):
        vendor(tmp_path, "pkg", "ns_a")
