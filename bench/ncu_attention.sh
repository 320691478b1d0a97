#!/usr/bin/env bash
# Per-instruction warp-stall samples (ncu source counters) of one launch of an attention kernel at the
# Self-Forcing 21-frame shape (30x52, 12 heads, d = 128), bf16: KERNEL=cluster (default) the fused CUDA
# forward, KERNEL=stage_r the warpgroup-MMA stage R (csrc/attention/stage_r.cuh), KERNEL=stage_r_triton
# the Triton stage R, KERNEL=stage_r_bwd_kv stage R's key-row backward on warpgroup MMA
# (csrc/attention/stage_r_bwd.cuh; random stage-L gradients, the real lse_R), KERNEL=stage_l_bwd the last
# pass's stage-L backward on warpgroup MMA (csrc/attention/stage_l_bwd.cuh, in a whole backward). Run on the GPU machine after bench/device_run.sh has installed the package
# (SKIP_BENCH=1 SKIP_TESTS=1 is enough). Writes $OUT/ncu-<kernel>-details.txt (sections),
# $OUT/ncu-<kernel>-sass.csv.gz (every SASS line with its samples) and $OUT/ncu-<kernel>-sass-top.txt (the
# instructions with the most samples, in address order, with neighbours).
set -uo pipefail
OUT=${OUT:-/tmp/monarchrt-out}
mkdir -p "$OUT"
FRAMES=${FRAMES:-21}
KERNEL=${KERNEL:-cluster}
case "$KERNEL" in
  cluster) REGEX=monarch_fwd_cluster SKIP=0 ;;  # one launch
  stage_r) REGEX=stage_r_kernel SKIP=1 ;;  # the second of two launches
  stage_r_triton) REGEX=_stage_r_fwd SKIP=1 ;;
  stage_r_bwd_kv) REGEX=stage_r_bwd_kv_kernel SKIP=1 ;;
  stage_l_bwd) REGEX=stage_l_bwd_kernel SKIP=1 ;;
  *) echo "KERNEL must be cluster, stage_r, stage_r_triton, stage_r_bwd_kv or stage_l_bwd" >&2; exit 2 ;;
esac
cat > /tmp/one_launch.py <<PY
import torch, monarchrt_ops as m
from monarchrt_ops.backends import cuda
from monarchrt_ops.triton_kernels import monarch_attention as kernels
g = torch.Generator(device="cuda").manual_seed(0)
if "$KERNEL" == "cluster":
    q, k, v = (torch.randn(1, $FRAMES * 30 * 52, 12, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    m.monarch_attention(q, k, v, (30, 52), backend="cuda")
else:  # stage R alone, tile-order inputs, the Triton backend's default config
    q, k, v = (torch.randn(1, $FRAMES, 30, 52, 12, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    from monarchrt_ops.backends.triton import TritonAttention
    from monarchrt_ops.arch import arch_of
    from monarchrt_ops.problem import AttentionProblem
    p = AttentionProblem.from_tiles(q, k, 0, 1)
    config = TritonAttention().default_config(p, arch_of("cuda"))
    launch = kernels._stage_r if "$KERNEL" == "stage_r_triton" else cuda.stage_r_wgmma
    sc = kernels._Scratch(q, $FRAMES, with_lse_r=True)
    common = (12, $FRAMES, $FRAMES, 30, 52, 0)
    bwd = "$KERNEL" == "stage_r_bwd_kv"
    if "$KERNEL" == "stage_l_bwd":  # a whole backward, twice (the second's stage-L kernel is profiled)
        kw = dict(sm_scale=128**-0.5, causal_block_tiles=0, num_iters=1, config=config)
        z, lse = kernels.monarch_attention_fwd(q, k, v, **kw)
        for _ in range(2):
            kernels.monarch_attention_bwd(torch.randn_like(z), torch.zeros_like(lse), q, k, v, z, lse, **kw,
                                          stage_l_bwd=cuda.stage_l_bwd_wgmma)
    for _ in range(0 if "$KERNEL" == "stage_l_bwd" else 1 if bwd else 2):  # the first compiles (Triton) and sets the shared-memory attribute
        launch(q, k, v, sc, None, None, 128**-0.5, common, config, write_lse=bwd)
    if bwd:  # the key-row backward of that stage R, twice (the second is profiled)
        grads = (torch.randn_like(sc.a_l), torch.randn_like(sc.y), torch.randn_like(sc.c_l), torch.randn_like(sc.c_l))
        dk, dv = (torch.empty_like(k) for _ in range(2))
        for _ in range(2):
            cuda.stage_r_dkdv_wgmma(q, k, v, sc, None, None, grads, None, dv, 128**-0.5, common, config,
                                    accumulate=False, dk_out=dk)
torch.cuda.synchronize()
PY
ncu --section SourceCounters --section WarpStateStats --section LaunchStats --section Occupancy \
  --section SpeedOfLight -k "regex:$REGEX" -s "$SKIP" -c 1 -f -o /tmp/rep python3 /tmp/one_launch.py 2>&1 | tail -3
ncu -i /tmp/rep.ncu-rep --page details > "$OUT/ncu-$KERNEL-details.txt" 2>&1
ncu -i /tmp/rep.ncu-rep --page source --csv --print-source sass > /tmp/sass.csv 2>&1
gzip -c /tmp/sass.csv > "$OUT/ncu-$KERNEL-sass.csv.gz"
python3 - "$OUT/ncu-$KERNEL-sass-top.txt" <<'PY'
import csv, sys
rows = list(csv.reader(open("/tmp/sass.csv")))
head_i = next(i for i, r in enumerate(rows) if any("Source" == c for c in r))
head, body = rows[head_i], rows[head_i + 1:]
col = {c: i for i, c in enumerate(head)}
src = col["Source"]
samp = next(i for i, c in enumerate(head) if "Sampling (All" in c)
reasons = [i for i, c in enumerate(head) if c.startswith("stall_") or "Stall" in c and i != samp]
def num(x):
    try: return float(x.replace(",", ""))
    except ValueError: return 0.0
total = sum(num(r[samp]) for r in body if len(r) > samp)
with open(sys.argv[1], "w") as f:
    print("columns:", head, file=f)
    print(f"total samples {total:.0f} over {len(body)} SASS lines", file=f)
    top = sorted(range(len(body)), key=lambda i: -num(body[i][samp]) if len(body[i]) > samp else 0)[:45]
    keep = sorted({j for i in top for j in range(max(0, i - 2), min(len(body), i + 2))})
    for j in keep:
        r = body[j]
        s = num(r[samp]) if len(r) > samp else 0
        why = sorted(((num(r[i]), head[i]) for i in reasons if i < len(r)), reverse=True)[:2]
        print(f"{j:5d} {s:8.0f} {100*s/max(total,1):5.1f}%  {r[src][:70]:70s} {why if s else ''}", file=f)
PY
head -c 3000 "$OUT/ncu-$KERNEL-sass-top.txt"
