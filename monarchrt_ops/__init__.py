"""monarchrt_ops: Monarch-structured operators for PyTorch.

Public API (see README.md): :func:`monarch_attention`, :func:`monarch_attention_with_lse`,
:func:`write_kv_cache`, :func:`monarch_attention_kv_cache`, and the layout helpers
:func:`to_tiles` / :func:`from_tiles`; :class:`MonarchKVCache` (K/V buffers that carry their tiling);
:func:`hadamard`, :func:`hadamard_`, :func:`monarch_matmul` and
:class:`MonarchLinear`. The torch ops live under ``torch.ops.monarchrt``.
Importing this package initialises no GPU and queries no device.
"""

from . import ops
from .attention import (
    make_tiling,
    monarch_attention,
    monarch_attention_kv_cache,
    monarch_attention_with_lse,
    write_kv_cache,
)
from .hadamard import hadamard, hadamard_
from .kv_cache import MonarchKVCache
from .layout import Tiling, from_tile_sequence, from_tiles, to_tile_sequence, to_tiles
from .monarch_matmul import MonarchLinear, monarch_matmul

__version__ = "0.1.0"

__all__ = [
    "MonarchKVCache",
    "MonarchLinear",
    "Tiling",
    "from_tile_sequence",
    "from_tiles",
    "hadamard",
    "hadamard_",
    "make_tiling",
    "monarch_attention",
    "monarch_attention_kv_cache",
    "monarch_attention_with_lse",
    "monarch_matmul",
    "ops",
    "to_tile_sequence",
    "to_tiles",
    "write_kv_cache",
]
