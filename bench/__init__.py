"""Benchmarks, installed as ``monarchrt_ops.bench``: one ``bench_<op>.py`` per op over the shared
shapes of ``monarchrt_ops.autotune.shapes``; ``monarchrt-bench`` runs them all (GPU only)."""
