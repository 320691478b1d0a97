"""Copy this package into another project under another import name and op namespace.

    python -m monarchrt_ops.vendor DEST --package myproj_monarch --namespace myproj_monarch

writes ``DEST/myproj_monarch/``: the installed ``monarchrt_ops`` with its ``triton_kernels``,
``autotune`` and ``tuned_configs`` subpackages (and the CUDA extension ``_C`` when it is built),
with every ``monarchrt_ops`` name in the Python sources replaced by the new package name and the
default op namespace set to ``--namespace`` (read from ``<PACKAGE>_OPS_NAMESPACE``, so it can still
be overridden, without touching the original's ``MONARCHRT_OPS_NAMESPACE``). The copy and the
original load side by side in one process: ``torch.ops.monarchrt`` and ``torch.ops.<namespace>``
are separate ops with separate registries. Recipe and caveats: ``docs/vendoring.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
from pathlib import Path

SUBPACKAGES = ("backends", "integrations", "triton_kernels", "autotune", "tuned_configs")
_NAMESPACE_LINE = 'NAMESPACE = os.environ.get("MONARCHRT_OPS_NAMESPACE", "monarchrt")'
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "bench", "vendor.py")  # the copy does not re-vendor


def _source_dirs() -> dict[str, Path]:
    """Folder of the package and of each subpackage, wherever the install put them (editable or not)."""
    root = Path(importlib.util.find_spec("monarchrt_ops").origin).parent
    dirs = {"": root}
    for sub in SUBPACKAGES:
        spec = importlib.util.find_spec(f"monarchrt_ops.{sub}")
        if spec is None or spec.origin is None:
            raise RuntimeError(f"monarchrt_ops.{sub} is not importable; reinstall the package")
        dirs[sub] = Path(spec.origin).parent
    return dirs


def vendor(dest: str | Path, package: str, namespace: str) -> Path:
    """Write the copy to ``dest/package`` (which must not exist) and return its path."""
    for what, name in (("package", package), ("namespace", namespace)):
        if not name.isidentifier():
            raise ValueError(f"{what}={name!r} must be a Python identifier")
    if package == "monarchrt_ops" or namespace == "monarchrt":
        raise ValueError("a vendored copy needs a package name and a namespace of its own")
    target = Path(dest) / package
    if target.exists():
        raise ValueError(f"{target} exists; remove it first")
    dirs = _source_dirs()
    shutil.copytree(dirs[""], target, ignore=_IGNORE)
    for sub in SUBPACKAGES:
        if dirs[sub] != dirs[""] / sub:  # installed from another folder (setup.py package_dir)
            shutil.copytree(dirs[sub], target / sub, ignore=_IGNORE, dirs_exist_ok=True)
    word = re.compile(r"\bmonarchrt_ops\b")
    for path in target.rglob("*.py"):
        text = path.read_text()
        if path == target / "ops.py":
            if _NAMESPACE_LINE not in text:
                raise RuntimeError(f"ops.py no longer has the line {_NAMESPACE_LINE!r}; update vendor.py")
            text = text.replace(
                _NAMESPACE_LINE, f'NAMESPACE = os.environ.get("{package.upper()}_OPS_NAMESPACE", "{namespace}")'
            )
        path.write_text(word.sub(package, text))
    (target / "VENDORED.txt").write_text(
        f"Vendored copy of monarchrt_ops (python -m monarchrt_ops.vendor) as {package}, op namespace {namespace}.\n"
    )
    return target


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", help="folder to write the copy into (e.g. your project's third_party/)")
    p.add_argument("--package", required=True, help="import name of the copy")
    p.add_argument("--namespace", required=True, help="torch.ops namespace of the copy's ops")
    args = p.parse_args(argv)
    print(vendor(args.dest, args.package, args.namespace))


if __name__ == "__main__":
    main()
