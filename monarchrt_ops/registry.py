"""Backend registry: which implementation runs an op on a device, with which config, and why.

Every backend of an op answers five questions (SPEC section 3):
``supports(problem, arch) -> None | reason``, ``default_config(problem, arch)``,
``search_space(problem, arch)``, ``is_valid(config, problem, arch) -> None | reason`` (the single
statement of a config's constraints, used by the tuner and at run time) and ``launch``.

Selection: an explicit ``backend=`` runs that backend or raises; automatic selection walks the
architecture's preference order and logs each fallback once, with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from .arch import Arch

logger = logging.getLogger("monarchrt_ops")

Config = dict[str, Any]


class Backend(Protocol):
    name: str

    def supports(self, problem: Any, arch: Arch) -> str | None: ...

    def default_config(self, problem: Any, arch: Arch) -> Config: ...

    def search_space(self, problem: Any, arch: Arch) -> dict[str, list]: ...

    def is_valid(self, config: Config, problem: Any, arch: Arch) -> str | None: ...


# Automatic preference per device kind: fastest first; 'reference' always last and always able.
_PREFERENCE = {"cuda": ("cuda", "triton", "reference"), "cpu": ("reference",)}

_backends: dict[str, dict[str, Backend]] = {}
_logged_fallbacks: set[tuple[str, str, str]] = set()


def register_backend(op: str, backend: Backend) -> None:
    """Add (or replace) the backend ``backend.name`` for ``op``."""
    _backends.setdefault(op, {})[backend.name] = backend


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
    """The outcome of :func:`select`: what runs, with which config, and what was rejected."""

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
    if backend:
        chosen = get_backend(op, backend)
        reason = chosen.supports(problem, arch)
        if reason is not None:
            raise ValueError(f"backend={backend!r} cannot run {op} here: {reason}")
        config, source = _config_for(op, chosen, problem, arch)
        return Selection(op, chosen, config, source, explicit=True)

    rejected: list[tuple[str, str]] = []
    kind = "cuda" if arch.is_cuda else "cpu"
    order = [n for n in _PREFERENCE.get(kind, ("reference",)) if n in _backends.get(op, {})]
    for name in order:
        candidate = _backends[op][name]
        reason = candidate.supports(problem, arch)
        if reason is None:
            _log_fallbacks(op, rejected, name)
            config, source = _config_for(op, candidate, problem, arch)
            return Selection(op, candidate, config, source, rejected)
        rejected.append((name, reason))
    raise ValueError(f"no backend of {op} can run this call: {rejected}")


def _config_for(op: str, backend: Backend, problem: Any, arch: Arch) -> tuple[Config, str]:
    config = backend.default_config(problem, arch)
    reason = backend.is_valid(config, problem, arch)
    if reason is not None:
        raise RuntimeError(f"{backend.name} default config {config} for {op} is invalid: {reason}")
    return config, "backend default"


def _log_fallbacks(op: str, rejected: list[tuple[str, str]], chosen: str) -> None:
    for name, reason in rejected:
        key = (op, name, reason)
        if key not in _logged_fallbacks:
            _logged_fallbacks.add(key)
            logger.warning("%s: not using backend %r (%s); using %r", op, name, reason, chosen)
