"""Triton kernels of monarchrt_ops, installed as `monarchrt_ops.triton_kernels`."""
