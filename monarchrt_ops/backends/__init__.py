"""Backends register here; importing this module imports no GPU library."""

from ..registry import register_backend
from .reference import ReferenceAttention
from .triton import TritonAttention

register_backend("attention", ReferenceAttention())
register_backend("attention", TritonAttention())
