#!/usr/bin/env bash
# Builds the SIFA kernels in place (sifa/_C*.so), installing the requirements first if missing (a failed
# install, e.g. without network, is a warning: the build needs only torch, and ninja to compile in parallel).
# CUDA kernels are built when nvcc is found and a GPU is visible (FORCE_CUDA=1 builds them without a
# GPU, FORCE_CUDA=0 skips them); TORCH_CUDA_ARCH_LIST picks the GPU architectures.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch, torchvision, timm, cv2, yaml, lmdb, tqdm, tensorboard, matplotlib, ninja" 2>/dev/null; then
  "$PYTHON" -m pip install -r requirements.txt \
    || echo "make.sh: warning: pip could not install requirements.txt; building with what is installed" >&2
fi
"$PYTHON" -c "import torch" || { echo "make.sh: the build needs torch (pip install torch)" >&2; exit 1; }
command -v ninja >/dev/null \
  || echo "make.sh: warning: ninja not found; the build compiles one file at a time" >&2
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
"$PYTHON" setup.py build_ext --inplace
"$PYTHON" - <<'PY'
import os, shutil
import torch
import sifa.ops as o
assert o.backend() == "extension"
cuda = torch._C._dispatch_has_kernel_for_dispatch_key("sifa::sifa_attention", "CUDA")
print("SIFA kernels built:", o._extension._library_path(), "(CPU and CUDA)" if cuda else "(CPU only)")
if not cuda and shutil.which("nvcc") and not torch.cuda.is_available() and os.environ.get("FORCE_CUDA") != "0":
    print("No GPU visible, so no CUDA kernels; to build them for your GPUs: "
          "FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST='8.0;9.0' bash make.sh  (their compute capabilities)")
PY
