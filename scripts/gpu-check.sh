#!/usr/bin/env bash
# The device check, for the first lent GPU machine (no Rust there). Here: `make build`; carry
# target/release/groupcam and .venv/weights; on the device: `bash scripts/gpu-check.sh`.
# Results under $OUT (or ./gpu-check-out): gpu-check.log, one .out/.err/.mem per step,
# summary.tsv. Every check that fails is counted; the exit status is the count (0 = all passed).
# Budget: about 6 minutes on an H100/H200 (set QUICK=1 for a 2-minute subset).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check-out}
mkdir -p "$out"
torch_lib=${TORCH_LIB:-$(ls -d /opt/torch/.venv/lib/python3*/site-packages/torch/lib 2>/dev/null | head -n1)}
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
py=${PYTHON:-/opt/torch/.venv/bin/python}
bin=target/release/groupcam
w=.venv/weights/efficientnet-lite0.pth
log="$out/gpu-check.log"
: >"$log"
printf 'step\trc\tseconds\tpeak_gpu_mib\twarning_lines\n' >"$out/summary.tsv"
fails=0
say() { echo "$*" | tee -a "$log"; }
fail() { say "FAIL: $*"; fails=$((fails + 1)); }

# step NAME CMD...: runs CMD, samples GPU memory every 200 ms, counts stderr warning lines.
# A non-zero exit or any warning line is a failure (EXPECT_RC=n expects exit n instead).
step() {
    local name=$1; shift
    say "== $name: $*"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$out/$name.mem" 2>/dev/null &
    local smi=$! t0=$(date +%s%N)
    "$@" >"$out/$name.out" 2>"$out/$name.err"
    local rc=$?
    local ms=$((($(date +%s%N) - t0) / 1000000))
    local secs=$((ms / 1000)).$(printf '%03d' $((ms % 1000)))
    kill $smi 2>/dev/null; wait $smi 2>/dev/null
    local peak=$(sort -n "$out/$name.mem" | tail -n1)
    local warns=$(grep -ciE 'warn|deprecat' "$out/$name.err")
    tail -n 4 "$out/$name.out" | tee -a "$log"
    tail -n 3 "$out/$name.err" | tee -a "$log"
    say "   rc $rc, ${secs}s, peak GPU ${peak:-?} MiB, stderr warning lines $warns"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "${peak:-}" "$warns" >>"$out/summary.tsv"
    [ "$rc" -eq "${EXPECT_RC:-0}" ] || fail "$name exited $rc (expected ${EXPECT_RC:-0})"
    [ "$warns" -eq 0 ] || fail "$name printed $warns warning lines on stderr (first: $(grep -iE 'warn|deprecat' "$out/$name.err" | head -n1))"
    return $rc
}

# A ResNet-50 fine-tuning config of the main job's shape: 224 px, batch 256, 20 steps.
r50() { # r50 NAME EXTRA-SETS...
    local name=$1; shift
    cat >"$out/$name.yaml" <<EOF
arch: resnet50
data: {root: $out/synth, input_size: 224, workers: 16, prefetch: 4}
train: {epochs: 1, batch_size: 256, val_batch_size: 256, lr: 0.01, lr_step: 1, max_steps: 20, device: cuda, amp: fp16}
augment: {enabled: true, groups: 16}
saliency: {probe: 16}
out: $out/$name
EOF
    local sets=()
    for s in "$@"; do sets+=(--set "$s"); done
    step "$name" "$bin" finetune --quiet --config "$out/$name.yaml" "${sets[@]}"
}

img_per_s() { "$py" -c "import json,sys; h=json.load(open('$out/$1/history.json')); print('%s img/s %.1f' % ('$1', h[-1]['img_per_s']))" | tee -a "$log"; }

say "== link"
readelf -d "$bin" | grep -E 'NEEDED|RUNPATH' | tee -a "$log"
readelf -d "$bin" | grep -q libtorch_cuda || fail "libtorch_cuda is not linked"
step doctor "$bin" doctor && { grep -q "cuda:0 kernel check: ok" "$out/doctor.out" || fail "doctor: no CUDA kernel ran"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$log"

# 1. CPU vs CUDA maps and masks, TF32 off (NVIDIA_TF32_OVERRIDE=0 turns it off in cuBLAS and cuDNN).
export NVIDIA_TF32_OVERRIDE=0
for d in cpu cuda; do
    step "explain-$d" "$bin" --device $d explain --arch efficientnet-lite0 --weights "$w" \
        --image tests/data/coffee.png tests/data/chelsea.png --out "$out/explain-$d"
    step "augment-$d" "$bin" --device $d augment --arch efficientnet-lite0 --weights "$w" \
        --image tests/data/coffee.png tests/data/chelsea.png --label 967 281 --out "$out/augment-$d"
done
"$py" - "$out" >>"$log" 2>&1 <<'EOF' || fail "CPU and CUDA maps or masks differ beyond tolerance (see the log)"
import sys, glob, os
import numpy as np
from PIL import Image
out = sys.argv[1]; bad = 0
for s in ['coffee', 'chelsea']:
    a, b = np.load(f'{out}/explain-cuda/{s}.npy'), np.load(f'{out}/explain-cpu/{s}.npy')
    d = float(abs(a - b).max()); print(f'map {s}: max |cuda - cpu| = {d:.2e}'); bad += d > 1e-3
for m in sorted(glob.glob(f'{out}/augment-cpu/*mask*.png')):
    a = np.asarray(Image.open(m)) > 127; b = np.asarray(Image.open(m.replace('augment-cpu', 'augment-cuda'))) > 127
    f = float((a != b).mean()); print(f'mask {os.path.basename(m)}: {100 * f:.3f}% of pixels differ'); bad += f > 0.005
sys.exit(bad)
EOF
unset NVIDIA_TF32_OVERRIDE

# 2. The main job's shape on synthetic data (6 classes x 860 images of 256 px: 20 batches of 256).
step synth "$bin" synth --out "$out/synth" --size 256 --train 860 --val 22
r50 r50-f32 augment.precision=f32 && img_per_s r50-f32
r50 r50-f16 augment.precision=f16 && img_per_s r50-f16
r50 r50-bf16 train.amp=bf16 augment.precision=f32 && img_per_s r50-bf16
r50 r50-plain augment.enabled=false && img_per_s r50-plain
# Issue 13: cached maps (a refresh pass on CUDA, then masks from the cache at the plain step's
# pace); the batches come page-locked and are normalised on the GPU in every run above.
r50 r50-cached augment.refresh=1 augment.cache_size=56 && img_per_s r50-cached &&
    { grep -q "saliency cache: .* maps of 56 x 56 px" "$out/r50-cached.out" || fail "r50-cached: no refresh pass"; }
# Resume on CUDA: one more epoch from the f32 run's checkpoint.
step resume "$bin" finetune --quiet --config "$out/r50-f32.yaml" --set train.epochs=2 --set train.max_steps=5 \
    --resume "$out/r50-f32/checkpoints/last.safetensors" && { grep -q "resumed from" "$out/resume.out" || fail "resume: no 'resumed from'"; }
# Loss-scale recovery: start at 2^40 so that the first steps overflow in fp16; the run must halve
# the scale until the steps are clean and finish with a finite loss.
r50 r50-overflow augment.enabled=false train.initial_loss_scale=1099511627776 saliency.probe=0 &&
    { grep -q "fp16 overflow" "$out/r50-overflow.out" || fail "overflow: no overflow was reported at scale 2^40"; }
# Issue 11: data-parallel over NCCL at world size 1 (--nproc spawns the rank with torchrun's
# variables; the NCCL group, the broadcasts, the bucketed all-reduce and the final bitwise check run).
grep -q "nccl (cuda)" "$out/doctor.out" || fail "doctor: this build has no NCCL (nvidia-cuda-cccl missing at build time?)"
step dist-nccl "$bin" finetune --quiet --nproc 1 --config "$out/r50-plain.yaml" --set train.max_steps=5 \
    --set saliency.probe=0 --out "$out/r50-nccl" &&
    { grep -q "data-parallel: 1 ranks" "$out/dist-nccl.out" || fail "dist-nccl: not a data-parallel run"; }

if [ -z "${QUICK:-}" ]; then
    # 3. Benchmarks: the trainer's step with AMP, the loader's workers, explain.
    step bench-train-amp "$bin" --device cuda bench train --amp --batch 256 --workers 1 --images 32
    # The loader on ImageNet-like JPEGs with 8 and 16 workers (16 cores there; the device's
    # venv may lack torchvision, so its side is measured here on the CPU, BENCHMARKS.md).
    step bench-loader "$bin" bench loader --workers 8,16 --images 2048 --reps 3 --no-torchvision
    step bench-explain "$bin" --device cuda bench explain --reps 10
    step bench-augment "$bin" --device cuda bench augment
fi
rm -rf "$out/synth" "$out"/r50-*/checkpoints
say "done: $fails failure(s); log in $log, per-step figures in $out/summary.tsv"
exit $fails
