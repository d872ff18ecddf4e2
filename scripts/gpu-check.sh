#!/usr/bin/env bash
# The device check, run on a lent GPU machine (no Rust there): build here with `make build`,
# carry target/release/groupcam and .venv/weights, then on the device:
#   bash scripts/gpu-check.sh            (results under $OUT, or ./gpu-check-out)
# It checks that libtorch_cuda is linked and a GPU is used, compares CUDA and CPU maps, and runs
# the benchmarks on the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check-out}
mkdir -p "$out"
torch_lib=${TORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}
[ -d "$torch_lib" ] || torch_lib=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/torch/lib | head -n1)
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
py=${PYTHON:-/opt/torch/.venv/bin/python}
bin=target/release/groupcam
w=.venv/weights/efficientnet-lite0.pth
log="$out/gpu-check.log"
: >"$log"
step() { echo "== $*" | tee -a "$log"; "$@" 2>&1 | tee -a "$log"; }

readelf -d "$bin" | grep -E 'NEEDED|RUNPATH' | tee -a "$log"
readelf -d "$bin" | grep -q libtorch_cuda || echo "FAIL: libtorch_cuda is not linked" | tee -a "$log"
step "$bin" doctor
step nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
step "$bin" --device cuda predict --arch efficientnet-lite0 --weights "$w" --image tests/data/coffee.png --topk 3
step "$bin" --device cuda explain --arch efficientnet-lite0 --weights "$w" --image tests/data/coffee.png tests/data/chelsea.png --out "$out/cuda"
step "$bin" --device cpu explain --arch efficientnet-lite0 --weights "$w" --image tests/data/coffee.png tests/data/chelsea.png --out "$out/cpu"
step "$py" -c "
import numpy as np
for s in ['coffee', 'chelsea']:
    a, b = np.load('$out/cuda/%s.npy' % s), np.load('$out/cpu/%s.npy' % s)
    print(s, 'max |cuda - cpu| =', float(abs(a - b).max()), 'peak cuda', divmod(int(a.argmax()), 224), 'cpu', divmod(int(b.argmax()), 224))
"
step "$bin" --device cuda bench explain --reps 10
step "$bin" --device cuda bench train --batch 64
# The fine-tuning loop on CUDA: fp16 autocast with loss scaling, augmentation, probe maps.
step "$bin" synth --out "$out/synth"
step "$bin" finetune --quiet --config configs/demo.yaml --set data.root="$out/synth" --set train.device=cuda --out "$out/run"
cp "$out/run/report.md" "$out/finetune-report.md"; rm -rf "$out/synth" "$out/run"
step "$bin" --device cuda bench augment
step "$bin" --device cuda bench methods --weights "$w" --image tests/data/coffee.png
# Issue 5's GPU goal: batched insertion/deletion >= 10x one forward per step.
step "$bin" --device cuda bench insdel --weights "$w" --image tests/data/coffee.png --reps 5
step "$bin" --device cuda sanity --arch efficientnet-lite0 --weights "$w" --images tests/data/chelsea.png tests/data/coffee.png --methods groupcam,gradcam --json "$out/sanity.json" --figure "$out/sanity.png"
rm -rf "$out/cuda" "$out/cpu"
echo "done; log in $log"
