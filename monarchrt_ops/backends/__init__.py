"""Backends register here; importing this module imports no GPU library."""

from ..registry import register_backend
from .reference import ReferenceAttention


register_backend("attention", ReferenceAttention())

