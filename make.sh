#!/usr/bin/env bash
# Builds the SIFA kernels in place (sifa/_C*.so), installing the requirements first if missing.
# CUDA kernels are built when nvcc is found (FORCE_CUDA=1 insists, FORCE_CUDA=0 skips them);
# TORCH_CUDA_ARCH_LIST picks the GPU architectures.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch, torchvision, timm, cv2, yaml, lmdb, tqdm, tensorboard, matplotlib, ninja" 2>/dev/null; then
  "$PYTHON" -m pip install -r requirements.txt
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
"$PYTHON" setup.py build_ext --inplace
"$PYTHON" -c "import sifa.ops as o; assert o.backend() == 'extension'; print('SIFA kernels built:', o._extension._library_path())"
