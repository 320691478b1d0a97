"""Speedup-by-shape plot (PNG) of a combined ``monarchrt-bench`` result."""

from __future__ import annotations

from pathlib import Path


def bars(result: dict) -> list[tuple[str, float, str]]:
    """(label, value, what) per measured case: speedups over the named baseline, or share of clone."""
    out = []
    for r in result.get("attention", {}).get("rows", []):
        if r.get("speedup_vs_fastest_dense"):
            out.append((f"attn {r['shape']}", r["speedup_vs_fastest_dense"], "x fastest dense SDPA"))
        if r.get("monarch_fwd_bwd_ms"):
            dense = min(v for k, v in r.items() if k.endswith("_fwd_bwd_ms") and k.startswith("sdpa") and v)
            out.append((f"attn {r['shape']} fwd+bwd", dense / r["monarch_fwd_bwd_ms"], "x fastest dense SDPA"))
    for r in result.get("hadamard", {}).get("rows", []):
        for backend in ("triton", "cuda"):
            share = r.get(f"{backend}_share_of_clone")
            if share is not None:
                out.append((f"hadamard n={r['n']} {backend}", share, "share of clone bandwidth"))
    for r in result.get("monarch_matmul", {}).get("rows", []):
        for backend in ("triton", "cuda"):
            if f"{backend}_graph_ms" in r:  # kernel time: eager ~0.1 ms calls are host-bound
                speedup = r["bmm_permute_graph_ms"] / r[f"{backend}_graph_ms"]
                out.append((f"monarch {r['shape']} {backend}", speedup, "x bmm + permutes (CUDA graphs)"))
    return out


def plot(result: dict, path: Path) -> bool:
    """Write the PNG; False (and a message) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("monarchrt-bench: matplotlib is not installed; no plot written")
        return False
    rows = bars(result)
    groups = sorted({what for _, _, what in rows})
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 2.2 + 0.35 * len(rows)), squeeze=False)
    for ax, what in zip(axes[:, 0], groups, strict=True):
        sel = [(label, v) for label, v, w in rows if w == what]
        ax.barh([label for label, _ in sel], [v for _, v in sel], color="tab:blue")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel(what)
        for i, (_, v) in enumerate(sel):
            ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    h = result.get("header", {})
    fig.suptitle(f"monarchrt-ops on {h.get('gpu', '?')} (torch {h.get('torch', '?')}, triton {h.get('triton', '?')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
