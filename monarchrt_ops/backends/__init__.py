"""Backends register here; importing this module imports no GPU library."""

from ..registry import register_backend
from .cuda import CudaAttention, CudaHadamard, CudaMonarchMatmul
from .reference import ReferenceAttention, ReferenceHadamard, ReferenceMonarchMatmul
from .triton import TritonAttention, TritonHadamard, TritonMonarchMatmul

register_backend("attention", ReferenceAttention())
register_backend("attention", TritonAttention())
register_backend("hadamard", ReferenceHadamard())
register_backend("hadamard", TritonHadamard())
register_backend("monarch_matmul", ReferenceMonarchMatmul())
register_backend("monarch_matmul", TritonMonarchMatmul())
register_backend("hadamard", CudaHadamard())
register_backend("attention", CudaAttention())
register_backend("monarch_matmul", CudaMonarchMatmul())
