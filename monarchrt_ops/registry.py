"""Backend registry: which implementation runs an op on a device, with which config, and why.

Every backend of an op answers five questions (docs/design.md):
``supports(problem, arch) -> None | reason``, ``default_config(problem, arch)``,
``search_space(problem, arch)``, ``is_valid(config, problem, arch) -> None | reason`` (the single
statement of a config's constraints, used by the tuner and at run time) and ``launch``.

Selection: an explicit ``backend=`` runs that backend or raises; automatic selection walks the
architecture's preference order and logs each fallback once, with the reason. A backend with
``measured_only = True`` (or a function of the problem that returns True) is taken automatically only
where a table's measured choice says so
(``tables.choice``; docs/design.md, Config tables); an explicit ``backend=`` still runs it. The
backward is selected on its own (``problem.backward``): a backend with ``forward_only = True`` named
for the forward leaves the backward to automatic selection.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import tables
from .arch import Arch

logger = logging.getLogger("monarchrt_ops")

Config = dict[str, Any]


class Backend(Protocol):
    name: str

    def supports(self, problem: Any, arch: Arch) -> str | None: ...

    def default_config(self, problem: Any, arch: Arch) -> Config: ...

    def search_space(self, problem: Any, arch: Arch) -> dict[str, list]: ...

    def is_valid(self, config: Config, problem: Any, arch: Arch) -> str | None: ...


class NoConfig:
    """A backend with nothing to tune: an empty config is its only valid one."""

    def default_config(self, problem: Any, arch: Arch) -> Config:
        return {}

    def search_space(self, problem: Any, arch: Arch) -> dict[str, list]:
        return {}

    def is_valid(self, config: Config, problem: Any, arch: Arch) -> str | None:
        return None if not config else f"the {self.name} backend takes no config, got {config}"


# Automatic preference per device kind: fastest first; 'reference' always last and always able.
_PREFERENCE = {"cuda": ("cuda", "triton", "reference"), "cpu": ("reference",)}

_backends: dict[str, dict[str, Backend]] = {}
_logged_fallbacks: set[tuple[str, str, str]] = set()


def register_backend(op: str, backend: Backend) -> None:
    """Add (or replace) the backend ``backend.name`` for ``op``."""
    _backends.setdefault(op, {})[backend.name] = backend
    invalidate()


def backend_names(op: str) -> list[str]:
    return list(_backends.get(op, {}))


def get_backend(op: str, name: str) -> Backend:
    try:
        return _backends[op][name]
    except KeyError:
        raise ValueError(
            f"backend={name!r} is not a backend of {op!r}; known: {sorted(_backends.get(op, {}))}"
        ) from None


@dataclass
class Selection:
    """The outcome of :func:`select`: what runs, with which config, and what was rejected.

    A Selection returned by :func:`cached_select` is shared by every call of its problem: read it,
    never change its config."""

    op: str
    backend: Backend
    config: Config
    config_source: str
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (backend, reason)
    explicit: bool = False


def select(op: str, problem: Any, arch: Arch, backend: str | None = None) -> Selection:
    """Choose the backend and config for ``problem`` on ``arch``.

    Raises ValueError when an explicitly named backend cannot run the problem.
    """
    rejected: list[tuple[str, str]] = []
    if backend:
        chosen = get_backend(op, backend)
        if getattr(problem, "backward", False) and getattr(chosen, "forward_only", False):
            # the backend named the forward kernel; the backward is chosen like any automatic one
            rejected.append((backend, f"backend={backend!r} has no backward of its own"))
        else:
            reason = chosen.supports(problem, arch)
            if reason is not None:
                raise ValueError(f"backend={backend!r} cannot run {op} here: {reason}")
            config, source = _config_for(op, chosen, problem, arch)
            return Selection(op, chosen, config, source, explicit=True)

    kind = "cuda" if arch.is_cuda else "cpu"
    order = [n for n in _PREFERENCE.get(kind, ("reference",)) if n in _backends.get(op, {})]
    for name in order:
        if rejected and name == rejected[0][0]:
            continue  # the forward-only backend named for the forward
        candidate = _backends[op][name]
        reason = candidate.supports(problem, arch)
        if reason is None and _measured_only(candidate, problem):  # runs, but only when named
            reason = _unmeasured_reason(op, name, problem, arch)
        if reason is None:
            _log_fallbacks(op, rejected, name)
            config, source = _config_for(op, candidate, problem, arch)
            return Selection(op, candidate, config, source, rejected)
        rejected.append((name, reason))
    raise ValueError(f"no backend of {op} can run this call: {rejected}")


# Environment variables a selection depends on: a change of any of them starts the caches over.
_ENV = ("MONARCHRT_STRICT", "MONARCHRT_TUNED_CONFIGS", "TRITON_INTERPRET")
_generation = [0]  # bumped by invalidate(): a backend registered, or a test's stand-in extension
_selections: dict[tuple, tuple[tuple, Selection]] = {}
_config_cache: dict[tuple, tuple[Config, str]] = {}
_MAX_CACHED = 4096  # distinct problems (batch sizes, sequence lengths) before a cache starts over


def invalidate() -> None:
    """Forget every cached selection and config (the tables' own changes are noticed without it)."""
    _generation[0] += 1
    _selections.clear()
    _config_cache.clear()


# os.environ.get costs ~0.7 us a name (key encoding, decoding, the Mapping layers); CPython's
# os.environ keeps its encoded items in the dict ``_data``, which it updates on every change: read
# that when it is there. The one place the package's per-call environment reads go through
# (:func:`env_get`; :func:`_state` reads its names the same way in one map).
_env_data = getattr(os.environ, "_data", None)
_env_fast = isinstance(_env_data, dict) and hasattr(os.environ, "encodekey") and hasattr(os.environ, "decodevalue")
_env_keys = tuple(map(os.environ.encodekey, _ENV)) if _env_fast else None
_env_encoded: dict[str, Any] = {}  # name -> its key in os.environ._data


def env_get(name: str, default: str | None = None) -> str | None:
    """``os.environ.get(name, default)`` at the cost of a dict lookup (~0.1 us where the variable is
    unset), for reads on every call (launches, launchers). Sees every change made through
    ``os.environ`` (as ``os.environ.get`` does; ``os.putenv`` is seen by neither)."""
    if not _env_fast:
        return os.environ.get(name, default)
    key = _env_encoded.get(name)
    if key is None:
        key = _env_encoded[name] = os.environ.encodekey(name)
    value = _env_data.get(key)
    return default if value is None else os.environ.decodevalue(value)


def _state() -> tuple:
    """What a cached selection was made under: the tables' generation, the registry's, the environment."""
    env = tuple(map(_env_data.get, _env_keys)) if _env_keys is not None else tuple(map(os.environ.get, _ENV))
    return tables.generation(), _generation[0], env


def cached_select(op: str, key: tuple, make: Callable[[], tuple[Any, Arch]], backend: str = "") -> Selection:
    """:func:`select` memoised per ``(op, key, backend)``: ``key`` must determine the problem and the
    device (shapes, dtype, device, parameters), ``make()`` builds ``(problem, arch)`` on a miss.

    A hit costs two dict lookups and three environment reads; the entry is remade when the tables,
    the registered backends or ``MONARCHRT_STRICT`` / ``MONARCHRT_TUNED_CONFIGS`` / ``TRITON_INTERPRET``
    changed since. An explicit backend that cannot run the problem raises on every call (nothing is cached).
    """
    state = _state()
    hit = _selections.get((op, key, backend))
    if hit is not None and hit[0] == state:
        return hit[1]
    problem, arch = make()
    sel = select(op, problem, arch, backend or None)
    if len(_selections) >= _MAX_CACHED:
        _selections.clear()
    _selections[(op, key, backend)] = (state, sel)
    return sel


def _measured_only(backend: Backend, problem: Any) -> bool:
    """``measured_only``: True, or a function of the problem (a backend measured-only in one direction)."""
    flag = getattr(backend, "measured_only", False)
    return flag(problem) if callable(flag) else bool(flag)


def _unmeasured_reason(op: str, name: str, problem: Any, arch: Arch) -> str | None:
    """Why automatic selection passes a ``measured_only`` backend over for ``problem`` (None: take it):
    the measured choice of the tables (tables.choice: this GPU's, its family's, the shipped default)."""
    gpu = tables.gpu_table_name(arch.device_name) if arch.is_cuda else None
    found = tables.choice(op, name, problem.key(), gpu, arch.family)
    if found is None:
        return (
            f"not measured against Triton on {arch.family} ({arch.device_name}): no table has a choice for it; "
            f"explicit backend={name!r} only"
        )
    if not found.auto:
        return f"{found.why} ({found.table}.json); explicit backend={name!r} only"
    return None


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def strict_mode() -> bool:
    """``MONARCHRT_STRICT=1`` (or true/yes/on): serving refuses configs that no tuned table holds for
    the shape. Any other value than those and 0/false/no/off raises, naming the variable."""
    value = os.environ.get("MONARCHRT_STRICT", "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise ValueError(f"MONARCHRT_STRICT={value!r}: use 1/true/yes/on or 0/false/no/off")
    return value in _TRUE


def _config_for(op: str, backend: Backend, problem: Any, arch: Arch) -> tuple[Config, str]:
    """Tuned table (exact -> nearest bucket -> same architecture), else the backend default.

    Memoised per (op, backend, problem, arch, strict mode, table generation): ~30 us a call otherwise.
    """
    key = (op, backend.name, problem, arch, strict_mode(), tables.generation())
    if key not in _config_cache:
        if len(_config_cache) > _MAX_CACHED:  # many distinct shapes (batch sizes): start over rather than grow
            _config_cache.clear()
        _config_cache[key] = _lookup_config(op, backend, problem, arch)
    config, source = _config_cache[key]
    return dict(config), source


def _lookup_config(op: str, backend: Backend, problem: Any, arch: Arch) -> tuple[Config, str]:
    found = None
    # a backend whose kernels for this problem are tuned under another problem's key says which (``tuned_as``)
    tuned = getattr(backend, "tuned_as", None)
    key = (tuned(problem) if tuned else problem).key()
    if arch.is_cuda:
        gpu = tables.gpu_table_name(arch.device_name)
        found = tables.lookup(op, backend.name, key, gpu, arch.family)
    if found is not None:
        reason = backend.is_valid(found.config, problem, arch)
        if reason is None:
            return found.config, f"tuned table {found.table}.json: {found.step}"
        _log_once(op, f"table {found.table}", reason, f"ignoring the tuned config {found.config}")
    if strict_mode() and backend.search_space(problem, arch):
        raise RuntimeError(
            f"MONARCHRT_STRICT=1: no tuned {backend.name} config for {op} {key} on {arch.device_name}; "
            f"run monarchrt-tune on this GPU or unset MONARCHRT_STRICT"
        )
    config = backend.default_config(problem, arch)
    reason = backend.is_valid(config, problem, arch)
    if reason is not None:
        raise RuntimeError(f"{backend.name} default config {config} for {op} is invalid: {reason}")
    return config, _default_reason(arch)


def _default_reason(arch: Arch) -> str:
    if not arch.is_cuda:
        return "backend default"
    gpu = tables.gpu_table_name(arch.device_name)
    if gpu is None:
        return f"backend default: {arch.device_name} is a GPU we have no table for"
    return f"backend default: no entry for this problem in {gpu}.json or a same-architecture table"


def _log_fallbacks(op: str, rejected: list[tuple[str, str]], chosen: str) -> None:
    for name, reason in rejected:
        _log_once(op, f"backend {name!r}", reason, f"using {chosen!r}")


def _log_once(op: str, what: str, reason: str, action: str) -> None:
    key = (op, what, reason)
    if key not in _logged_fallbacks:
        _logged_fallbacks.add(key)
        logger.warning("%s: not using %s (%s); %s", op, what, reason, action)
