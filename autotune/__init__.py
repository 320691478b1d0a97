"""Config-table I/O and the Optuna tuner, installed as `monarchrt_ops.autotune`."""
