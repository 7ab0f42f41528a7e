#!/usr/bin/env bash
# GPU check: the pipeline's GPU paths on the GPUs of this machine, with per-stage throughput and peak GPU
# memory, in under 8 minutes on one modern GPU.
#
#   1. the tiny end-to-end configuration (tests/config/tiny.yaml) on CUDA with bf16 autocast; with >= 2 GPUs
#      the training rules get resources gpu=N and run under torchrun (DDP, NCCL);
#   2. k-means on the GPU (ssrl.kmeans.kmeans, device cuda): 1.09 M x 512 synthetic points, K = 8000;
#   3. batched against one-at-a-time extraction (bench/bench_extract.py, paper-size ECAPA).
#
# Usage (from the repository root, with the project's environment active):
#   bench/gpu_check.sh [--out DIR]          # on a CUDA machine
#   bench/gpu_check.sh --cpu [--out DIR]    # CPU fallback at tiny size (tests/test_bench.py runs it):
#                                           # stage 1 as a dry run, stages 2-3 on the CPU at toy sizes
# Results: DIR (default results/gpu_check) holds each stage's log and JSON; a summary is printed.
set -euo pipefail

MODE=cuda
OUT=results/gpu_check
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) MODE=cpu; shift ;;
        --out) OUT="$2"; shift 2 ;;
        *) echo "gpu_check.sh: unknown argument $1 (use --cpu, --out DIR)" >&2; exit 2 ;;
    esac
done
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

if [ "$MODE" = cuda ]; then
    GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
    if [ "$GPUS" -lt 1 ]; then
        echo "gpu_check.sh: torch sees no CUDA device; run with --cpu for the CPU fallback" >&2
        exit 1
    fi
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sed 's/^/GPU: /'
else
    GPUS=0
fi
echo "gpu_check: mode $MODE, $GPUS GPU(s), output $OUT"

# Peak GPU memory used on any GPU while a command runs (nvidia-smi sampled every 200 ms), in MiB.
peak_file="$OUT/.peak"
with_peak() {
    if [ "$MODE" != cuda ]; then echo "n/a" > "$peak_file"; "$@"; return; fi
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/.smi" &
    local smi=$!
    local rc=0
    "$@" || rc=$?
    kill "$smi" 2>/dev/null || true
    wait "$smi" 2>/dev/null || true
    sort -n "$OUT/.smi" | tail -1 > "$peak_file"
    return $rc
}

# --------------------------------------------------------------------------- 1. tiny end-to-end
STAGE1="$OUT/tiny"
mkdir -p "$STAGE1"
cat > "$STAGE1/gpu.yaml" <<EOF
train:
  device: $([ "$MODE" = cuda ] && echo cuda || echo cpu)
  bf16: true
  deterministic: false
extract:
  device: $([ "$MODE" = cuda ] && echo cuda || echo cpu)
kmeans:
  device: $([ "$MODE" = cuda ] && echo cuda || echo cpu)
EOF
RES=()
for rule in dino_train ssrl_train iterative_train wavlm_step1 wavlm_step2 wavlm_ft; do
    RES+=("$rule:gpu=$GPUS")
done
SMK=("$PY" -m snakemake -s "$REPO/Snakefile" -d "$STAGE1" --configfile "$REPO/tests/config/tiny.yaml"
     "$STAGE1/gpu.yaml" --cores "$(nproc)" --set-resources "${RES[@]}")
[ "$MODE" = cuda ] || SMK+=(--dry-run)
t0=$(date +%s.%N)
with_peak "${SMK[@]}" > "$STAGE1/snakemake.log" 2>&1 || { tail -40 "$STAGE1/snakemake.log"; exit 1; }
t1=$(date +%s.%N)
STAGE1_S=$(awk "BEGIN { print $t1 - $t0 }")
STAGE1_PEAK=$(cat "$peak_file")
STAGE1_JOBS=$(grep -cE "^(localrule|rule) " "$STAGE1/snakemake.log" || true)

# --------------------------------------------------------------------------- 2. k-means on the GPU
if [ "$MODE" = cuda ]; then KM_N=1090000; KM_K=8000; KM_DIM=512; KM_ITER=20; else KM_N=3000; KM_K=30; KM_DIM=32; KM_ITER=20; fi
with_peak "$PY" - "$MODE" "$KM_N" "$KM_K" "$KM_DIM" "$KM_ITER" "$OUT/kmeans.json" "$REPO" <<'EOF' 2> "$OUT/kmeans.log"
import json, sys, time
mode, n, k, dim, max_iter, out, repo = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6], sys.argv[7]
sys.path.insert(0, f"{repo}/bench")
from bench_kmeans import synthetic
from ssrl.kmeans import kmeans

x, _ = synthetic(n, dim)
t0 = time.perf_counter()
res = kmeans(x, k, seed=0, max_iter=max_iter, device="cuda" if mode == "cuda" else "cpu")
seconds = time.perf_counter() - t0
peak = None
if mode == "cuda":
    import torch
    peak = torch.cuda.max_memory_allocated() / 2**30
r = {"n": n, "k": k, "dim": dim, "n_iter": res.n_iter, "seconds": seconds, "s_per_iter": seconds / res.n_iter,
     "points_per_s": n * res.n_iter / seconds, "device": res.device, "torch_peak_gb": peak, "inertia": res.inertia}
json.dump(r, open(out, "w"))
EOF
KM_PEAK=$(cat "$peak_file")

# --------------------------------------------------------------------------- 3. batched vs single extraction
if [ "$MODE" = cuda ]; then
    EX=(--device cuda --channels 1024 --emb-dim 512 --n-utts 300 --workers 4 --threads 4)
else
    EX=(--device cpu --channels 16 --emb-dim 16 --n-utts 5 --median-s 1.0 --min-s 0.5 --max-s 2.0
        --max-batch-seconds 4)
fi
with_peak "$PY" "$REPO/bench/bench_extract.py" "${EX[@]}" --json "$OUT/extract.json" > "$OUT/extract.log" 2>&1 \
    || { tail -20 "$OUT/extract.log"; exit 1; }
EX_PEAK=$(cat "$peak_file")

# --------------------------------------------------------------------------- summary
"$PY" - "$OUT" "$MODE" "$GPUS" "$STAGE1_S" "$STAGE1_JOBS" "$STAGE1_PEAK" "$KM_PEAK" "$EX_PEAK" <<'EOF'
import json, sys
out, mode, gpus, s1, jobs, p1, pk, pe = sys.argv[1:]
km = json.load(open(f"{out}/kmeans.json"))
ex = json.load(open(f"{out}/extract.json"))
what = "ran" if mode == "cuda" else "dry run (CPU mode)"
summary = {
    "mode": mode, "gpus": int(gpus),
    "tiny_end_to_end": {"what": what, "seconds": float(s1), "jobs": int(jobs), "peak_gpu_mib": p1},
    "kmeans": {**km, "peak_gpu_mib": pk},
    "extract": {"single_utts_per_s": ex["single"]["utts_per_s"], "batched_utts_per_s": ex["batched"]["utts_per_s"],
                "agree": ex["agree"], "peak_gpu_mib": pe},
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print(f"1. tiny end-to-end ({what}, bf16, {gpus} GPU(s){', DDP' if int(gpus) > 1 else ''}): {float(s1):.0f} s, "
      f"{jobs} jobs, peak GPU memory {p1} MiB")
print(f"2. k-means {km['n']:,} x {km['dim']}, K = {km['k']} on {km['device']}: {km['s_per_iter']:.3f} s/iter "
      f"x {km['n_iter']}, {km['points_per_s']:.3g} point-iterations/s, peak GPU memory {pk} MiB "
      f"(torch {km['torch_peak_gb']} GB)")
print(f"3. extraction: single {ex['single']['utts_per_s']:.1f} utts/s, batched {ex['batched']['utts_per_s']:.1f} "
      f"utts/s ({ex['batched']['utts_per_s'] / ex['single']['utts_per_s']:.2f}x), agree {ex['agree']}, "
      f"peak GPU memory {pe} MiB")
EOF
rm -f "$peak_file" "$OUT/.smi"
