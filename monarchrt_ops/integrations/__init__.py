"""Integrations with model libraries (optional extras; importing this package imports none of them).

- :mod:`monarchrt_ops.integrations.diffusers`: :func:`apply_monarch_attention` for diffusers' Wan
  transformers (needs ``diffusers``).

Sequence parallelism lives in :mod:`monarchrt_ops.parallel` (torch.distributed only).
"""
