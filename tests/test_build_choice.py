"""setup.py's choice of kernels, as torchvision and mmcv choose: CUDA when a GPU is visible or
FORCE_CUDA=1, never with FORCE_CUDA=0; CPU only on a machine with nvcc and no GPU. make.sh builds
even where pip cannot install the requirements (no network)."""
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import REPO_ROOT as ROOT


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("sifa_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the helpers; setup() runs only as __main__
    return module


@pytest.mark.parametrize("force,toolkit,gpu,want", [
    ("", "/usr/local/cuda", False, False),  # nvcc, no GPU (a laptop, a login node): CPU kernels only
    ("", "/usr/local/cuda", True, True),
    ("", None, True, False),                # a GPU but no toolkit to compile for it
    ("1", "/usr/local/cuda", False, True),  # building for a GPU elsewhere
    ("0", "/usr/local/cuda", True, False),
])
def test_cuda_kernels_built_when(setup_py, monkeypatch, force, toolkit, gpu, want):
    monkeypatch.setenv("FORCE_CUDA", force)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert setup_py._want_cuda(toolkit) is want


def test_force_cuda_without_toolkit_names_the_problem(setup_py, monkeypatch):
    monkeypatch.setenv("FORCE_CUDA", "1")
    with pytest.raises(SystemExit, match="no CUDA toolkit"):
        setup_py._want_cuda(None)


@pytest.mark.slow  # a make.sh build of the kernels
def test_make_sh_builds_when_pip_cannot_install(tmp_path):
    # a stand-in python: the optional-package check fails, pip fails as without network, the build is
    # a no-op (the kernels are already built here), everything else is the real interpreter
    stub = tmp_path / "python"
    stub.write_text(f"""#!/usr/bin/env bash
case "$*" in
  *"import torch, torchvision"*) exit 1 ;;
  "-m pip install"*) echo "ERROR: Could not find a version (no network)" >&2; exit 1 ;;
  "setup.py build_ext"*) echo "setup.py build_ext ran"; exit 0 ;;
  *) exec {sys.executable} "$@" ;;
esac
""")
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "FORCE_CUDA"}  # CI exports FORCE_CUDA=1
    result = subprocess.run(["bash", "make.sh"], cwd=ROOT, env={**env, "PYTHON": str(stub)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: pip could not install requirements.txt" in result.stderr
    assert "setup.py build_ext ran" in result.stdout and "SIFA kernels built:" in result.stdout
    import sifa.ops  # noqa: F401  (loads the library built here)

    built_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("sifa::sifa_attention", "CUDA")
    if shutil.which("nvcc") and not torch.cuda.is_available() and not built_cuda:
        assert "FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=" in result.stdout  # one line on how to build them
